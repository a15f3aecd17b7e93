"""Fuzzing the detector checkpoint loader (issue 9, section 4).

A detector checkpoint sits in a state directory that the user, or ransomware running
as the user, can write. :meth:`Detector.loads` returns a detector or raises
:class:`~corestate.models.detector.CheckpointRefused` (a ``CoreStateError``) whatever
the bytes; its pickle is read by an unpickler that resolves only a detector's own
classes, so no input runs code.

``TARGETS`` and ``SEEDS`` follow the convention of ``benchmarks/fuzz.py``:

- ``loads_unsigned``: the bytes as a checkpoint read without a key (the agent's case).
- ``loads_signed``: the bytes as a checkpoint read with a key (``protect``'s case).
- ``loads_framed``: the bytes as the pickle inside a well-formed unsigned frame, so the
  unpickler itself is reached (random bytes rarely carry the header).
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings

from corestate.errors import CoreStateError
from corestate.models.detector import (CHECKPOINT_MAGIC, ChangeAnomalyDetector, CheckpointRefused,
                                       Detector)
from corestate.models.features import FEATURE_NAMES
from tests.fuzz.harness import mutated

KEY = bytes(range(32))


def loads_unsigned(data: bytes) -> None:
    assert isinstance(Detector.loads(data, "fuzz"), Detector)


def loads_signed(data: bytes) -> None:
    assert isinstance(Detector.loads(data, "fuzz", KEY), Detector)


def loads_framed(data: bytes) -> None:
    loads_unsigned(CHECKPOINT_MAGIC + b"U" + data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "loads_unsigned": loads_unsigned,
    "loads_signed": loads_signed,
    "loads_framed": loads_framed,
}


def _small() -> Detector:
    det = Detector(ChangeAnomalyDetector(n_trees=2, height=3, window_size=4, seed=3), 0.9)
    for i in range(6):
        det.learn(dict.fromkeys(FEATURE_NAMES, 0.1 * i))
    return det


_UNSIGNED = _small().dumps()
_SIGNED = _small().dumps(KEY)
SEEDS: dict[str, list[bytes]] = {
    "loads_unsigned": [_UNSIGNED, _SIGNED],
    "loads_signed": [_SIGNED],
    "loads_framed": [_UNSIGNED[len(CHECKPOINT_MAGIC) + 1:]],
}

_SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check(target: str, data: bytes) -> None:
    try:
        TARGETS[target](data)
    except CoreStateError as exc:
        assert isinstance(exc, CheckpointRefused) and str(exc) and "\n" not in str(exc)


def test_a_multi_line_unpickling_error_is_one_line() -> None:
    check("loads_framed", b"P")  # pickle's own message for a persistent id has two lines


def test_seeds_load() -> None:
    for name, seeds in SEEDS.items():
        for seed in seeds:
            TARGETS[name](seed)


@_SETTINGS
@given(data=mutated(SEEDS["loads_unsigned"]))
def test_mutated_unsigned(data: bytes) -> None:
    check("loads_unsigned", data)


@_SETTINGS
@given(data=mutated(SEEDS["loads_signed"]))
def test_mutated_signed(data: bytes) -> None:
    check("loads_signed", data)
    if data != _SIGNED:
        try:
            loads_signed(data)
        except CheckpointRefused:
            pass
        else:  # only the signed seed itself carries a valid signature
            raise AssertionError("a changed signed checkpoint loaded")


@_SETTINGS
@given(data=mutated(SEEDS["loads_framed"]))
def test_mutated_pickle(data: bytes) -> None:
    check("loads_framed", data)
