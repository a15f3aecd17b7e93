"""The shipped prior against the workload simulator, with a real watcher and a simulated
clock (``benchmarks/train_prior.py``'s recorder): every attack style is caught within a
few files, and normal work raises no alert. The default form is short; the slow form
runs a quarter of a simulated day and more files per attack."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from ransomware_sim import ATTACK_STYLES  # noqa: E402
from train_prior import Recorder, live  # noqa: E402

from corestate.models.detector import Detector  # noqa: E402


def prior() -> Detector:
    return Detector.prior()


def attack_windows(tmp_path: Path, style: str, seed: int, normal: int, files: int):
    rec = Recorder(tmp_path / style, seed)
    rec.normal(rec.ws.day_plan(0.1)[:normal])
    rec.t += 30
    rec.attack(style, files, seed)
    return rec.close()


def check_styles(tmp_path: Path, normal: int, files: int) -> None:
    for i, style in enumerate(ATTACK_STYLES):
        windows = attack_windows(tmp_path, style, 900 + i, normal, files)
        det = prior()
        _, alerts, at = live(det, windows)
        normal_alerts = [w for w, a in zip(windows, alerts) if a and not w.label]
        assert not normal_alerts, f"{style}: false alarm in the normal work before it"
        hits = [n for w, a, n in zip(windows, alerts, at) if a and w.label]
        assert hits, f"{style}: not detected"
        assert hits[0] <= 3, f"{style}: {hits[0]} files before the alert"


def test_every_attack_style_is_caught_within_three_files(tmp_path):
    check_styles(tmp_path, normal=6, files=4)


def test_normal_work_keeps_the_detector_quiet_and_learning(tmp_path):
    rec = Recorder(tmp_path / "day", 950)
    rec.normal(rec.ws.day_plan(0.05))
    windows = rec.close()
    det = prior()
    before = det.learned
    _, alerts, _ = live(det, windows)
    assert sum(alerts) == 0
    assert det.learned == before + len(windows)
    assert pickle.loads(pickle.dumps(det)).learned == det.learned


@pytest.mark.slow
def test_quarter_day_and_longer_attacks(tmp_path):
    rec = Recorder(tmp_path / "day", 960)
    rec.normal(rec.ws.day_plan(0.25))
    _, alerts, _ = live(prior(), rec.close())
    assert sum(alerts) <= 1  # ≤ 1 false alarm per simulated day, so ≤ 1 here
    check_styles(tmp_path / "attacks", normal=30, files=12)
