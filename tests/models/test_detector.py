"""The detector: River's property checks, seeding, checkpoints, the shipped prior."""

from __future__ import annotations

import copy
import os
import pickle
import random

import pytest
from river.checks import common

from corestate.errors import PermanentError
from corestate.models.detector import (CHECKPOINT_MAGIC, ChangeAnomalyDetector, CheckpointRefused,
                                       Detector, RangeScaler)
from corestate.repository.crypto import Key
from corestate.models.features import FEATURE_NAMES, FEATURES


def quiet(rng: random.Random) -> dict[str, float]:
    """A window of ordinary work: a few writes of text-like data."""
    x = dict.fromkeys(FEATURE_NAMES, 0.0)
    x.update(write_rate=rng.uniform(0.3, 1.5), create_rate=rng.uniform(0, 0.7),
             rename_rate=rng.uniform(0, 0.5), entropy=rng.uniform(4.0, 7.9),
             compress_ratio=rng.uniform(0.2, 1.0), dedup_miss=rng.uniform(0, 1),
             similarity_loss=rng.uniform(0, 0.4), dir_share=rng.uniform(0, 0.3))
    return x


def attack(rng: random.Random) -> dict[str, float]:
    x = quiet(rng)
    x.update(type_change_share=1.0, mismatch_share=1.0, opaque_share=1.0, entropy=8.0,
             compress_ratio=1.0, entropy_gain=rng.uniform(3, 4), dedup_miss=1.0,
             similarity_loss=1.0)
    return x


def dataset(n: int = 300, seed: int = 0) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    return [(attack(rng), True) if i % 50 == 49 else (quiet(rng), False) for i in range(n)]


def small() -> ChangeAnomalyDetector:
    return ChangeAnomalyDetector(**next(ChangeAnomalyDetector._unit_test_params()))


GENERAL_CHECKS = ["check_repr", "check_str", "check_tags", "check_clone_same_class",
                  "check_clone_is_idempotent", "check_init_has_default_params_for_tests",
                  "check_init_default_params_are_not_mutable", "check_doc",
                  "check_clone_changes_memory_addresses", "check_pickling_supports_roundtrip",
                  "check_repr_roundtrips_clone", "check_clone_with_new_params_applies",
                  "check_get_params_matches_signature"]
DATASET_CHECKS = ["check_learn_one", "check_pickling", "check_shuffle_features_no_impact",
                  "check_emerging_features", "check_disappearing_features",
                  "check_predict_one_pure", "check_predict_one_before_any_learn",
                  "check_no_state_aliasing_with_input", "check_clone_is_independent",
                  "check_seeding_is_idempotent", "check_bounded_memory_growth"]


@pytest.mark.parametrize("check", GENERAL_CHECKS)
def test_river_general_checks(check):
    getattr(common, check)(small())


@pytest.mark.parametrize("check", DATASET_CHECKS)
def test_river_dataset_checks(check):
    # River's own datasets need sklearn; these are the same checks on window features
    getattr(common, check)(small(), dataset=dataset())


def test_same_seed_gives_the_same_scores_and_another_seed_does_not():
    def scores(seed: int) -> list[float]:
        det = ChangeAnomalyDetector(n_trees=5, height=6, window_size=30, seed=seed)
        out = []
        for x, _ in dataset(200):
            out.append(det.score_one(x))
            det.learn_one(x)
        return out

    assert scores(3) == scores(3)
    assert scores(3) != scores(4)


def test_scoring_learning_and_explaining_do_not_mutate_the_input():
    det = Detector(small(), threshold=0.5)
    for x, _ in dataset(100):
        before = copy.deepcopy(x)
        det.judge(x)
        det.learn(x)
        det.model.explain_one(x)
        assert x == before


def test_anomalies_score_above_normal_windows():
    det = small()
    scored = []
    for x, label in dataset(600):
        scored.append((det.score_one(x), label))
        det.learn_one(x)
    late = scored[100:]
    worst_normal = max(s for s, label in late if not label)
    assert min(s for s, label in late if label) > worst_normal


def test_range_scaler_maps_documented_ranges_and_clips():
    x = {f.name: f.high for f in FEATURES} | {"entropy": 4.0, "write_rate": 99.0}
    out = RangeScaler().transform_one(x)
    assert out["entropy"] == 0.5 and out["write_rate"] == 1.0 and out["opaque_share"] == 1.0


def test_reasons_name_the_features_furthest_above_normal():
    det = Detector(small(), threshold=0.0)
    for x, label in dataset(300):
        if not label:
            det.learn(x)
    v = det.judge(attack(random.Random(1)))
    names = [n for n, _ in v.reasons]
    assert len(names) == 3 and "opaque_share" in names
    assert all(z > 5 for _, z in v.reasons)
    assert "σ" in v.reason_text() and names[0] in v.reason_text()


def test_calibration_puts_the_threshold_above_the_normal_quantile():
    det = Detector(small())
    det.calibrate([i / 1000 for i in range(1000)], quantile=0.99, margin=0.01, suspect_quantile=0.9)
    assert det.threshold == pytest.approx(0.989 + 0.01)
    assert det.suspect_threshold == pytest.approx(0.899)
    with pytest.raises(ValueError):
        det.calibrate([])


def test_checkpoint_round_trip_keeps_what_was_learned(tmp_path):
    fresh = Detector.prior()
    det = Detector.prior()
    rng = random.Random(5)
    # a host whose ordinary work is heavy bulk writing, unlike the simulated prior
    habit = [quiet(rng) | {"write_rate": 4.0, "create_rate": 4.0, "dir_share": 1.0}
             for _ in range(det.model.window_size + 50)]
    probe = habit[-1]
    for x in habit:
        det.learn(x)
    assert det.judge(probe).score < fresh.judge(probe).score  # it learned the habit
    path = tmp_path / "state" / "detector.pkl"
    det.save(path)
    restarted = Detector.load_or_prior(path)
    assert restarted.learned == det.learned > fresh.learned
    assert restarted.threshold == det.threshold
    for x in habit[-20:] + [attack(rng)]:
        assert restarted.judge(x).score == det.judge(x).score
    assert Detector.load_or_prior(tmp_path / "absent.pkl").learned == fresh.learned


def _framed(payload: bytes) -> bytes:
    return CHECKPOINT_MAGIC + b"U" + payload


class _RunsCode:
    """Unpickling this calls os.system: what a replaced checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_is_not_ours_is_refused(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointRefused, match="not a detector checkpoint of this version"):
        Detector.load(bad)
    bad.write_bytes(_framed(b"not a pickle"))
    with pytest.raises(CheckpointRefused, match="not a detector checkpoint"):
        Detector.load(bad)
    bad.write_bytes(_framed(pickle.dumps({"format": 2, "features": ("other",),
                                          "detector": None})))
    with pytest.raises(CheckpointRefused, match="other features"):
        Detector.load(bad)
    assert issubclass(CheckpointRefused, PermanentError)


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps({"format": 2, "features": FEATURE_NAMES, "detector": _RunsCode(str(marker))})
    for data in (evil, _framed(evil)):  # the old format (a bare pickle) and the new frame
        path = tmp_path / "detector.pkl"
        path.write_bytes(data)
        with pytest.raises(CheckpointRefused):
            Detector.load(path)
        # as a sentinel starts: refused, set aside, the prior instead
        det = Detector.load_or_prior(path)
        assert det.learned == Detector.prior().learned
        assert not path.exists() and (tmp_path / "detector.pkl.refused").read_bytes() == data
    assert not marker.exists(), "the checkpoint's code ran"
    with pytest.raises(CheckpointRefused, match=r"posix\.system|os\.system"):
        Detector.loads(_framed(evil), "x")


def test_with_a_key_only_a_checkpoint_signed_with_it_loads(tmp_path):
    key, other = Key.random().derive("detector checkpoint"), Key.random().derive("x")
    det = Detector.prior()
    det.learn(quiet(random.Random(1)))
    path = tmp_path / "detector.pkl"
    det.save(path, key)
    assert Detector.load(path, key).learned == det.learned == Detector.prior().learned + 1
    assert Detector.load(path).learned == det.learned  # no key: read, unverified
    with pytest.raises(CheckpointRefused, match="signature does not match"):
        Detector.load(path, other)
    data = bytearray(path.read_bytes())
    data[-40] ^= 1  # a bit flipped inside the pickle
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointRefused, match="signature does not match"):
        Detector.load(path, key)
    det.save(path)  # unsigned, as someone without the key would write it
    with pytest.raises(CheckpointRefused, match="not signed"):
        Detector.load(path, key)
    assert Detector.load_or_prior(path, key).learned == Detector.prior().learned


def test_the_shipped_prior_alerts_on_attacks_and_not_on_ordinary_work():
    det = Detector.prior()
    assert det.learned >= 500 and 0 < det.suspect_threshold <= det.threshold <= 1.0
    rng = random.Random(11)
    assert all(det.judge(attack(rng)).alert for _ in range(20))
    ordinary = dict.fromkeys(FEATURE_NAMES, 0.0) | {
        "write_rate": 0.4, "entropy": 4.6, "compress_ratio": 0.35, "dedup_miss": 0.5,
        "similarity_loss": 0.05, "dir_share": 0.1}
    assert not det.judge(ordinary).alert
