"""Reflink clones for consistent reads: the ext4 fallback, and real clones on a
loop-mounted XFS image."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from corestate.kernel import reflink
from corestate.kernel.reflink import CLONE_PREFIX, clone_for_read


@contextmanager
def _cloned(path: Path, directory: Path | None = None) -> Iterator[int | None]:
    """clone_for_read of ``path``, opened here (the caller's part: see capture)."""
    src = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        with clone_for_read(src, os.fsencode(directory or path.parent)) as fd:
            yield fd
    finally:
        os.close(src)


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    reflink.reset_cache()
    yield
    reflink.reset_cache()


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}"


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A freshly made XFS filesystem with reflinks, mounted from a sparse image."""
    if shutil.which("mkfs.xfs") is None:
        pytest.fail("mkfs.xfs is missing: run deploy/install.sh --dev (installs xfsprogs)")
    base = tmp_path_factory.mktemp("xfs")
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(512 << 20)
    _run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    _run("mount", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        image.unlink()


def _pread_all(fd: int) -> bytes:
    out, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        out.append(chunk)
        offset += len(chunk)
    return b"".join(out)


def _overwrite(path: Path, data: bytes) -> None:
    """Rewrite in place (same inode), as an application writing its file would."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


# --- fallback: ext4 (tmp_path) has no reflinks -------------------------------------


def test_ext4_yields_none_and_probes_once_per_filesystem(tmp_path, monkeypatch):
    calls: list[int] = []
    real_ioctl = fcntl.ioctl

    def counting_ioctl(fd, request, arg=0, mutate_flag=True):
        calls.append(request)
        return real_ioctl(fd, request, arg)

    monkeypatch.setattr(reflink.fcntl, "ioctl", counting_ioctl)
    for i in range(3):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"data %d" % i)
        with _cloned(path) as fd:
            assert fd is None, "ext4 cannot clone: the caller must fall back"
    assert calls == [reflink.FICLONE], "one failed FICLONE per filesystem, then cached"
    assert reflink.reflinks_known(os.stat(tmp_path).st_dev) is False
    assert sorted(os.listdir(tmp_path)) == ["f0", "f1", "f2"], "no clone files left behind"


def test_non_regular_file_yields_none(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with _cloned(fifo) as fd:
        assert fd is None


# --- real reflinks: XFS on a loop device -------------------------------------------


def test_xfs_clone_is_made_and_keeps_the_old_content(xfs):
    path = xfs / "db.bin"
    old, new = os.urandom(3 << 20) + b"tail", os.urandom(1 << 20)
    path.write_bytes(old)
    with _cloned(path) as fd:
        assert fd is not None, "XFS with reflink=1 must give a clone, not the fallback"
        _overwrite(path, new)
        assert path.read_bytes() == new
        assert _pread_all(fd) == old, "the clone must be a point-in-time copy"
        st = os.fstat(fd)
        assert st.st_nlink == 0, "the clone must be unlinked"
        assert st.st_ino != os.stat(path).st_ino
        assert os.listdir(xfs) == ["db.bin"]
    with pytest.raises(OSError):
        os.fstat(fd)  # closed on exit
    assert reflink.reflinks_known(os.stat(path).st_dev) is True
    path.unlink()


def test_xfs_named_temp_when_no_o_tmpfile(xfs, monkeypatch):
    monkeypatch.setattr(reflink, "_O_TMPFILE", 0)
    sub = xfs / "named"
    sub.mkdir()
    path = sub / "file"
    path.write_bytes(b"version one")
    with _cloned(path) as fd:
        assert fd is not None
        assert os.fstat(fd).st_nlink == 0
        assert not [n for n in os.listdir(sub) if n.encode().startswith(CLONE_PREFIX)]
        _overwrite(path, b"version two, longer")
        assert _pread_all(fd) == b"version one"
    assert os.listdir(sub) == ["file"]


def test_xfs_clone_directory_on_another_filesystem_falls_back(xfs, tmp_path):
    """The clone file goes in the source's directory; if that path leads to another
    filesystem by then (replaced by a symlink), no clone, and nothing condemned."""
    path = xfs / "elsewhere"
    path.write_bytes(b"data")
    with _cloned(path, directory=tmp_path) as fd:
        assert fd is None
    assert reflink.reflinks_known(os.stat(path).st_dev) is not False
    assert os.listdir(tmp_path) == []
    with _cloned(path) as fd:
        assert fd is not None and _pread_all(fd) == b"data"
    path.unlink()


def test_xfs_read_only_mount_falls_back(xfs):
    path = xfs / "ro-file"
    path.write_bytes(b"frozen")
    _run("mount", "-o", "remount,ro", str(xfs))
    try:
        with _cloned(path) as fd:
            assert fd is None, "no clone can be written on a read-only mount"
        # A read-only mount is not "no reflinks": do not condemn the filesystem.
        assert reflink.reflinks_known(os.stat(path).st_dev) is not False
    finally:
        _run("mount", "-o", "remount,rw", str(xfs))
    with _cloned(path) as fd:
        assert fd is not None and _pread_all(fd) == b"frozen"
    path.unlink()
