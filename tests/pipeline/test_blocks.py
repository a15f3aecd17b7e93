"""Block-level tracking of big files, and reads through reflink clones."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.kernel.blockmap import BlockMapStore
from corestate.pipeline import capture
from corestate.pipeline.backup import BackupOptions, backup
from corestate.restore import restore
from corestate.repository.repository import Repository

GIB = 1 << 30


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_ten_small_writes_to_a_1_gib_file_move_little_data(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "disk.img"
    rng = random.Random(11)
    with open(big, "wb") as f:
        for _ in range(GIB // (64 << 20)):
            f.write(rng.randbytes(64 << 20))
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), "pw")
    store = BlockMapStore(str(tmp_path / "state"))
    opts = BackupOptions(paths=[str(src)], block_store=store)
    first = backup(repo, opts)
    assert first.data_added >= GIB
    with open(big, "r+b") as f:  # ten scattered 4 KiB writes
        for i in range(10):
            f.seek(rng.randrange(0, GIB - 4096))
            f.write(rng.randbytes(4096))
    second = backup(repo, BackupOptions(paths=[str(src)], block_store=store))
    assert second.files_changed == 1
    assert second.data_added < 20 << 20, f"moved {second.data_added} bytes for 40 KiB written"
    out = tmp_path / "out"
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), "pw")
    result = restore(repo, repo.find_snapshot("latest"), str(out))
    assert not result.errors
    assert _sha(out / str(big).lstrip("/")) == _sha(big)


def test_without_a_block_map_big_files_are_still_blocks(tmp_path):
    """Fixed blocks make the second version share unchanged blocks even when the map
    is gone (only hashing then touches every block)."""
    src = tmp_path / "src"
    src.mkdir()
    big = src / "db"
    big.write_bytes(random.Random(1).randbytes(8 << 20))
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), "pw")
    opts = BackupOptions(paths=[str(src)], block_threshold=1 << 20, block_size=1 << 20)
    backup(repo, opts)
    with open(big, "r+b") as f:
        f.seek(3 << 20)
        f.write(b"x" * 100)
    second = backup(repo, opts)
    assert second.data_added == 1 << 20  # exactly the one block


@pytest.fixture
def xfs(tmp_path):
    """A loop-mounted XFS image: a filesystem with reflinks."""
    assert shutil.which("mkfs.xfs"), "mkfs.xfs is missing: run deploy/install.sh --dev"
    img = tmp_path / "xfs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(512 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_reads_go_through_a_clone_on_xfs(xfs, tmp_path):
    f = xfs / "live.db"
    f.write_bytes(b"A" * (3 << 20))
    seen = []

    def consume(fd, st):
        # a writer changes the live file while we read: the clone must not see it
        with open(f, "r+b") as w:
            w.write(b"B" * (1 << 20))
        seen.append(os.pread(fd, 3 << 20, 0))

    outcome = capture.read_consistently(os.fsencode(f), consume)
    assert outcome.cloned and outcome.consistent and outcome.attempts == 1
    assert seen[0] == b"A" * (3 << 20)
    # the same on ext4 (tmp_path): no clone, so the change is seen and read again
    g = tmp_path / "live.db"
    g.write_bytes(b"A" * (3 << 20))
    seen.clear()
    writes = [0]

    def consume_live(fd, st):
        if not writes[0]:
            writes[0] = 1
            with open(g, "r+b") as w:
                w.write(b"B" * (1 << 20))
        seen.append(os.pread(fd, 3 << 20, 0))

    outcome = capture.read_consistently(os.fsencode(g), consume_live)
    assert not outcome.cloned and outcome.attempts == 2
    assert seen[-1][:1] == b"B"


def test_a_big_file_renamed_over_another_of_the_same_size_and_mtime(tmp_path):
    """Two images of one size and mtime (copied with -p, unpacked from one archive): the
    map found for the file now at a path is of another file than the one the parent
    snapshot has there, so the parent's blob ids must not be reused."""
    src = tmp_path / "src"
    src.mkdir()
    a, b = src / "a.img", src / "b.img"
    a.write_bytes(os.urandom(5 * 4096))
    b.write_bytes(os.urandom(5 * 4096))
    for f in (a, b):
        os.utime(f, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), "pw")
    store = BlockMapStore(str(tmp_path / "state"))

    def opts() -> BackupOptions:
        return BackupOptions(paths=[str(src)], block_threshold=1, block_size=4096,
                             block_store=store)

    backup(repo, opts())
    expected = b.read_bytes()
    os.rename(b, a)
    backup(repo, opts())
    out = tmp_path / "out"
    assert not restore(repo, repo.find_snapshot("latest"), str(out)).errors
    assert (out / str(a).lstrip("/")).read_bytes() == expected
