"""Sparse files come back sparse whatever the holes' positions: a hole that shares a
chunk with data (at the start, in the middle or at the end of a file) is not written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_corestate

MIB = 1024 * 1024
BLOCK = 4096

# name -> (size, [(offset, length) of data]); everything else is a hole
LAYOUTS = {
    "hole-in-the-middle": (64 * MIB, [(0, BLOCK), (64 * MIB - BLOCK, BLOCK)]),
    "hole-at-start": (24 * MIB, [(24 * MIB - 3 * BLOCK, 3 * BLOCK)]),
    "hole-at-end": (24 * MIB, [(0, 5 * BLOCK)]),
    "many-holes": (32 * MIB, [(i * 3 * MIB + 777, 1000) for i in range(10)]),
    "unaligned-data": (20 * MIB, [(5 * MIB + 1, 10), (15 * MIB - 5, 10)]),
}


def _write(path: Path, size: int, extents: list[tuple[int, int]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            f.write(os.urandom(length))


def test_holes_come_back_as_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, (size, extents) in LAYOUTS.items():
        _write(src / name, size, extents)
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    run_corestate("backup", "--repo", str(repo), str(src))
    out = tmp_path / "out"
    run_corestate("restore", "latest", "--repo", str(repo), "--target", str(out))
    for name, (size, extents) in LAYOUTS.items():
        restored = Path(str(out) + str(src)) / name
        assert restored.read_bytes() == (src / name).read_bytes(), name
        st = restored.stat()
        assert st.st_size == size
        # each data extent touches at most two blocks; allow one extra block per extent
        # for file system bookkeeping (ext4, xfs and tmpfs all fit in this)
        allowed = sum(3 * BLOCK + length for _, length in extents)
        assert st.st_blocks * 512 <= allowed, (
            f"{name}: {st.st_blocks * 512} bytes allocated for {allowed} of data: holes were written")


@pytest.mark.parametrize("offset", [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 5])
def test_data_runs_skip_only_whole_zero_blocks(offset: int) -> None:
    from corestate.restore.writer import HOLE_BLOCK, data_runs

    data = bytearray(os.urandom(10 * HOLE_BLOCK))
    data[2 * HOLE_BLOCK:7 * HOLE_BLOCK] = bytes(5 * HOLE_BLOCK)
    runs = list(data_runs(bytes(data), offset))
    # what is written, with zeros elsewhere, is the blob
    rebuilt = bytearray(len(data))
    for start, end in runs:
        rebuilt[start:end] = data[start:end]
        assert start < end
    assert rebuilt == data
    skipped = len(data) - sum(end - start for start, end in runs)
    # the skipped bytes are whole file blocks (4 of the 5 when the blob is not aligned)
    assert skipped >= (5 if offset % HOLE_BLOCK == 0 else 4) * HOLE_BLOCK
    for start, end in zip([0] + [e for _, e in runs], [s for s, _ in runs] + [len(data)]):
        if end > start and 0 < start and end < len(data):  # an inner gap
            assert (offset + start) % HOLE_BLOCK == 0 and (offset + end) % HOLE_BLOCK == 0
