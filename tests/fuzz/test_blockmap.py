"""Fuzzing the block map decoder (issue 9, section 4).

Block maps live in the host's state directory; a broken disk or a careless hand can
leave any bytes there. :meth:`BlockMap.from_bytes` returns a map or raises
:class:`~corestate.errors.IntegrityError` with a clear message, and
:meth:`BlockMapStore.load` treats anything it cannot use as absent (None), never raises.

``TARGETS`` and ``SEEDS`` follow the convention of ``benchmarks/fuzz.py`` (the long
runs): each target decodes the bytes and must return or raise a ``CoreStateError``.

- ``from_bytes``: the bytes as a block map file.
- ``from_bytes_checksummed``: the bytes with a valid checksum appended, so that the
  header and digests are parsed (random bytes almost never pass the checksum).
- ``store_load``: the bytes as the file a :class:`BlockMapStore` loads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corestate.errors import CoreStateError, IntegrityError
from corestate.kernel.blockmap import BlockMap, BlockMapStore


def from_bytes(data: bytes) -> None:
    BlockMap.from_bytes(data)


def _checksummed(data: bytes) -> bytes:
    return data + xxhash.xxh3_64_intdigest(data).to_bytes(8, "little")


def from_bytes_checksummed(data: bytes) -> None:
    BlockMap.from_bytes(_checksummed(data))


_STORE_DIR = tempfile.mkdtemp(prefix="corestate-fuzz-blockmap-")
_STORE = BlockMapStore(_STORE_DIR)


def store_load(data: bytes) -> None:
    with open(os.path.join(_STORE_DIR, "1-2.bmap"), "wb") as f:
        f.write(data)
    found = _STORE.load(1, 2)
    assert found is None or (found.dev, found.ino) == (1, 2)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "from_bytes": from_bytes,
    "from_bytes_checksummed": from_bytes_checksummed,
    "store_load": store_load,
}

_MAPS = [
    BlockMap(4, 0, [], 1, 2, 0),
    BlockMap(4, 6, [1, 2], 1, 2, 3),
    BlockMap(1 << 20, (5 << 20) + 7, [i * 0x9E3779B97F4A7C15 % (1 << 64) for i in range(6)],
             1, 2, -1_000_000_000),
    BlockMap(4096, 4096 * 40, list(range(40)), 2**64 - 1, 2**64 - 1, 2**63 - 1),
]
_VALID = [m.to_bytes() for m in _MAPS]

SEEDS: dict[str, list[bytes]] = {
    "from_bytes": _VALID,
    "from_bytes_checksummed": [v[:-8] for v in _VALID],
    "store_load": _VALID,
}


# -- short runs in the test suite -------------------------------------------------------

def check(target: str, data: bytes) -> None:
    try:
        TARGETS[target](data)
    except CoreStateError as exc:
        assert str(exc) and "\n" not in str(exc)


def test_seeds_decode() -> None:
    for name, seeds in SEEDS.items():
        for seed in seeds:
            TARGETS[name](seed)
    assert [BlockMap.from_bytes(v) for v in _VALID] == _MAPS


def _mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["set", "insert", "cut", "word"]))
            if op == "set" and pos < len(data):
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
            elif op == "cut":
                del data[pos:pos + draw(st.integers(1, 16))]
            else:  # a whole header word: counts and sizes at their extremes
                word = draw(st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1]))
                data[pos:pos + 8] = word.to_bytes(8, "little")
        return bytes(data)
    return build()


_SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(data=st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    for name in TARGETS:
        check(name, data)


@_SETTINGS
@given(data=_mutated(SEEDS["from_bytes_checksummed"]))
def test_mutated_body_with_a_valid_checksum(data: bytes) -> None:
    check("from_bytes_checksummed", data)
    check("store_load", _checksummed(data))


@_SETTINGS
@given(data=_mutated(SEEDS["from_bytes"]))
def test_mutated_file(data: bytes) -> None:
    check("from_bytes", data)
    check("store_load", data)


def test_damage_is_named() -> None:
    good = _VALID[1]
    for data, reason in [
        (b"", "not a block map"), (b"XXXX" + good[4:], "not a block map"),
        (good[:-1] + bytes([good[-1] ^ 1]), "checksum mismatch"),
        (_checksummed(good[:4] + b"\x02" + good[5:-8]), "version 2 is not supported"),
        (_checksummed(good[:-16]), "does not match its contents"),
    ]:
        try:
            BlockMap.from_bytes(data)
        except IntegrityError as exc:
            assert reason in str(exc), (reason, str(exc))
        else:
            raise AssertionError(f"accepted: {data!r}")
