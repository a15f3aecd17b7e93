"""Block maps: which blocks of a big file changed since it was last protected."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest
import xxhash

from corestate.errors import IntegrityError
from corestate.kernel import blockmap
from corestate.kernel.blockmap import BlockMap, BlockMapStore, read_blocks, scan

MiB = 1 << 20
KiB = 1 << 10


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "disk.img"
    rng = random.Random(20240601)
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(rng.randbytes(MiB))
    return path


def _scan_path(path: Path, block_size: int, previous: BlockMap | None = None, **kw):
    fd = os.open(path, os.O_RDONLY)
    try:
        return scan(fd, block_size, previous, **kw)
    finally:
        os.close(fd)


def _grow(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_scan_digests_every_block(big_file):
    m, changed = _scan_path(big_file, MiB)
    data = big_file.read_bytes()
    assert m.size == 64 * MiB and m.block_size == MiB
    assert m.digests == [xxhash.xxh3_64_intdigest(data[i:i + MiB]) for i in range(0, len(data), MiB)]
    assert changed == list(range(64)), "no previous map: every block is changed"
    st = os.stat(big_file)
    assert (m.dev, m.ino, m.mtime_ns) == (st.st_dev, st.st_ino, st.st_mtime_ns)
    assert m.matches(st)


def test_scattered_writes_report_exactly_the_touched_blocks(big_file, tmp_path):
    path = tmp_path / "copy.img"
    path.write_bytes(big_file.read_bytes())
    before, _ = _scan_path(path, MiB)
    rng = random.Random(7)
    # Ten 4 KiB writes, one of them across the boundary of blocks 40 and 41.
    offsets = [41 * MiB - 2 * KiB] + [rng.randrange(0, 64 * MiB - 4 * KiB) for _ in range(9)]
    touched = set()
    fd = os.open(path, os.O_RDWR)
    try:
        for off in offsets:
            os.pwrite(fd, os.urandom(4 * KiB), off)
            touched |= {off // MiB, (off + 4 * KiB - 1) // MiB}
        after, changed = scan(fd, MiB, before)
        assert changed == sorted(touched)
        assert len(touched) >= 10  # the straddling write touched two blocks
        assert all(after.digests[i] == before.digests[i] for i in range(64) if i not in touched)
        blocks = dict(read_blocks(fd, MiB, changed))
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert sorted(blocks) == changed
    assert all(blocks[i] == data[i * MiB:(i + 1) * MiB] for i in changed)
    assert not before.matches(os.stat(path))


def test_growth_reports_the_old_tail_and_new_blocks(tmp_path):
    path, bs = tmp_path / "grow", 4 * KiB
    path.write_bytes(os.urandom(2 * bs + bs // 2))  # blocks 0, 1 and half of 2
    old, _ = _scan_path(path, bs)
    _grow(path, os.urandom(bs + bs // 2 + 100))
    new, changed = _scan_path(path, bs, old)
    assert changed == [2, 3, 4]
    assert new.size == 4 * bs + 100 and len(new.digests) == 5
    assert new.digests[:2] == old.digests[:2]


def test_growth_from_a_block_boundary_keeps_old_blocks(tmp_path):
    path, bs = tmp_path / "grow", 4 * KiB
    path.write_bytes(os.urandom(3 * bs))
    old, _ = _scan_path(path, bs)
    _grow(path, b"x")
    assert _scan_path(path, bs, old)[1] == [3]


def test_truncation(tmp_path):
    path, bs = tmp_path / "shrink", 4 * KiB
    path.write_bytes(os.urandom(5 * bs + 10))
    old, _ = _scan_path(path, bs)
    os.truncate(path, bs + bs // 2)  # block 1 is now short
    mid, changed = _scan_path(path, bs, old)
    assert changed == [1] and mid.size == bs + bs // 2 and len(mid.digests) == 2
    os.truncate(path, bs)  # on a boundary: nothing left changed, the map just ends
    end, changed = _scan_path(path, bs, mid)
    assert changed == [] and end.size == bs and end.digests == old.digests[:1]
    os.truncate(path, 0)
    empty, changed = _scan_path(path, bs, end)
    assert changed == [] and empty.size == 0 and empty.digests == []
    assert BlockMap.from_bytes(empty.to_bytes()) == empty


def test_block_size_change_means_everything_changed(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(64 * KiB))
    old, _ = _scan_path(path, 4 * KiB)
    new, changed = _scan_path(path, 16 * KiB, old)
    assert changed == [0, 1, 2, 3] and new.block_size == 16 * KiB


@pytest.mark.parametrize("read_size", [1, 4 * KiB + 1, 3 * 4 * KiB, MiB])
def test_read_size_does_not_change_the_result(tmp_path, read_size):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(10 * 4 * KiB + 123))
    reference, _ = _scan_path(path, 4 * KiB)
    assert _scan_path(path, 4 * KiB, read_size=read_size)[0] == reference


def test_scanning_memory_stays_bounded(big_file):
    tracemalloc.start()
    try:
        m, _ = _scan_path(big_file, MiB, read_size=2 * MiB)
        small_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        _scan_path(big_file, MiB)
        default_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(m.digests) == 64
    assert small_peak < 3 * MiB, f"peak {small_peak} bytes for 2 MiB reads of a 64 MiB file"
    assert default_peak < blockmap.DEFAULT_READ_SIZE + 2 * MiB, f"peak {default_peak} bytes"


def test_read_blocks_past_the_end_are_skipped(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10 + b"b" * 5)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert list(read_blocks(fd, 10, [1, 0, 7])) == [(1, b"b" * 5), (0, b"a" * 10)]
    finally:
        os.close(fd)


# --- serialisation and the store ---------------------------------------------------


def _sample(dev: int = 2049, ino: int = 77) -> BlockMap:
    return BlockMap(block_size=MiB, size=3 * MiB - 1, digests=[2**64 - 1, 0, 12345],
                    dev=dev, ino=ino, mtime_ns=-5)


def test_round_trip_and_every_flipped_byte_is_detected():
    raw = _sample().to_bytes()
    assert BlockMap.from_bytes(raw) == _sample()
    assert len(raw) == 56 + 3 * 8 + 8
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 0x10
        with pytest.raises(IntegrityError):
            BlockMap.from_bytes(bytes(damaged))
    for cut in (0, 10, len(raw) - 1):
        with pytest.raises(IntegrityError):
            BlockMap.from_bytes(raw[:cut])


def test_store_save_load_delete_and_damage(tmp_path):
    store = BlockMapStore(str(tmp_path / "maps"))
    assert store.load(2049, 77) is None
    store.save(_sample())
    assert store.load(2049, 77) == _sample()
    assert store.load(2049, 78) is None
    (path,) = (tmp_path / "maps").iterdir()
    raw = bytearray(path.read_bytes())
    raw[60] ^= 1
    path.write_bytes(bytes(raw))
    assert store.load(2049, 77) is None, "a damaged map is treated as absent"
    path.write_bytes(b"")
    assert store.load(2049, 77) is None
    store.save(_sample())
    assert store.load(2049, 77) == _sample()
    store.delete(2049, 77)
    store.delete(2049, 77)  # deleting twice is fine
    assert store.load(2049, 77) is None and os.listdir(tmp_path / "maps") == []


def test_unusable_map_file_is_absent(tmp_path):
    """Whatever is at a map's path (a directory, a file it may not read, a file far
    longer than its header says), the map is absent: the next scan costs time only."""
    store = BlockMapStore(str(tmp_path / "maps"))
    store.save(_sample())
    (path,) = (tmp_path / "maps").iterdir()
    with open(path, "r+b") as f:  # 64 MiB of trailing garbage (sparse)
        f.truncate(64 << 20)
    tracemalloc.start()
    try:
        assert store.load(2049, 77) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated to find the file is too long"
    path.unlink()
    path.mkdir()
    assert store.load(2049, 77) is None
    path.rmdir()
    store.save(_sample())
    os.chmod(path, 0)
    try:
        assert store.load(2049, 77) is None or os.geteuid() == 0  # root reads anyway
    finally:
        os.chmod(path, 0o600)


def test_misfiled_map_is_absent(tmp_path):
    store = BlockMapStore(str(tmp_path))
    store.save(_sample(ino=1))
    os.rename(tmp_path / os.listdir(tmp_path)[0], tmp_path / "801-2.bmap")
    assert store.load(0x801, 2) is None, "a map for another inode must not be trusted"


def test_map_survives_a_rename_of_the_file(tmp_path):
    store = BlockMapStore(str(tmp_path / "maps"))
    path = tmp_path / "vm.img"
    path.write_bytes(os.urandom(40 * KiB))
    m, _ = _scan_path(path, 4 * KiB)
    store.save(m)
    moved = tmp_path / "renamed" / "vm-old.img"
    moved.parent.mkdir()
    os.rename(path, moved)
    st = os.stat(moved)
    found = store.load(st.st_dev, st.st_ino)
    assert found == m and found.matches(st)
    with open(moved, "r+b") as f:
        f.seek(9 * KiB)
        f.write(b"!")
    assert _scan_path(moved, 4 * KiB, found)[1] == [2]
    assert all("vm" not in name for name in os.listdir(tmp_path / "maps"))


def test_failed_save_keeps_the_old_map_and_leaves_no_temp(tmp_path, monkeypatch):
    store = BlockMapStore(str(tmp_path))
    store.save(_sample())
    newer = BlockMap(MiB, 1, [9], 2049, 77, 1)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(blockmap.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        store.save(newer)
    monkeypatch.undo()
    assert store.load(2049, 77) == _sample()
    assert len(os.listdir(tmp_path)) == 1
    store.save(newer)
    assert store.load(2049, 77) == newer and len(os.listdir(tmp_path)) == 1


def test_prune_keeps_only_the_given_keys(tmp_path):
    store = BlockMapStore(str(tmp_path))
    for ino in (1, 2, 3):
        store.save(_sample(ino=ino))
    (tmp_path / "README").write_text("not a map")
    fresh_tmp, stale_tmp = tmp_path / ".tmp-fresh.bmap", tmp_path / ".tmp-stale.bmap"
    fresh_tmp.write_bytes(b"")
    stale_tmp.write_bytes(b"")
    os.utime(stale_tmp, (0, 0))
    assert store.keys() == {(2049, 1), (2049, 2), (2049, 3)}
    assert store.prune({(2049, 2)}) == 3  # maps 1 and 3, and the stale temp file
    assert store.keys() == {(2049, 2)} and store.load(2049, 2) == _sample(ino=2)
    assert sorted(os.listdir(tmp_path)) == [".tmp-fresh.bmap", "801-2.bmap", "README"]
    assert BlockMapStore(str(tmp_path / "absent")).prune(set()) == 0
