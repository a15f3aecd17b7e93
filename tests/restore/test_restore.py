"""Restore, with the real restic as the oracle: restic 0.14 backs up a tree holding every
kind of node, we restore that repository, and the result must match the source (and
restic's own restore) byte for byte and bit for bit."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.restore import RestoreResult, restore
from corestate.repository.repository import Repository
from corestate.repository.walk import find_node, walk

PASSWORD = "restore-test"
RESTIC = shutil.which("restic")
SPARSE_SIZE = 100 * 1024 * 1024

pytestmark = [
    pytest.mark.restic,
    pytest.mark.skipif(RESTIC is None, reason="restic is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes needs root"),
]


@dataclass
class Backup:
    src: Path  # absolute path that was backed up
    repo: Path
    xattrs: bool  # whether the file system kept the user.* attributes we set


def run_restic(repo: Path, *args: str) -> str:
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD,
               RESTIC_CACHE_DIR=str(repo.parent / "restic-cache"))
    done = subprocess.run([str(RESTIC), "-r", str(repo), "-q", *args], env=env,
                          capture_output=True, check=True)
    return done.stdout.decode()


def make_source(src: Path) -> bool:
    """Every kind of node restic records; returns whether xattrs are supported."""
    rnd = os.urandom
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "docs").mkdir()
    (src / "emptydir").mkdir()
    (src / "small.txt").write_bytes(b"hello restore\n")
    (src / "medium.bin").write_bytes(rnd(100_000))
    (src / "big.bin").write_bytes(rnd(5 * 1024 * 1024))  # several chunks
    (src / "empty.txt").write_bytes(b"")
    (src / "a" / "notes.txt").write_bytes(b"notes")
    (src / "a" / "b" / "other.md").write_bytes(b"# other")
    (src / "a" / "b" / "c" / "deep.txt").write_bytes(rnd(3000))
    (src / "docs" / "x.txt").write_bytes(b"x")
    (src / "docs" / "y.bin").write_bytes(rnd(70_000))
    os.symlink("small.txt", src / "link")
    os.symlink("does/not/exist", src / "dangling")
    (src / "hard1").write_bytes(rnd(20_000))
    os.link(src / "hard1", src / "a" / "hard2")
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    with open(bytes(src) + b"/caf\xe9", "wb") as f:
        f.write(b"latin-1 name")
    (src / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "setuid", 0o4755)
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    os.chmod(src / "a" / "b", 0o2750)
    with open(src / "sparse", "wb") as f:
        f.truncate(SPARSE_SIZE)
        for offset in (0, 40 * 1024 * 1024, SPARSE_SIZE - 3):
            f.seek(offset)
            f.write(b"abc")
    try:
        os.setxattr(src / "small.txt", "user.note", b"\x00binary\xff")
        os.setxattr(src / "docs", "user.dir", b"on a directory")
        xattrs = True
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        xattrs = False
    # Odd times with nanoseconds; directories last, as creating children moves them.
    stamp = 1_234_567_890_123_456_789
    for i, path in enumerate(sorted(p for p in _all_paths(src) if not p.is_dir() or p.is_symlink())):
        os.utime(path, ns=(stamp + i * 7_777_777_777, stamp + i * 1_000_000_001), follow_symlinks=False)
    for i, path in enumerate(sorted((p for p in _all_paths(src) if p.is_dir() and not p.is_symlink()),
                                    key=lambda p: -len(p.parts))):
        os.utime(path, ns=(stamp, stamp - i * 3_333_333_333))
    return xattrs


def _all_paths(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            yield Path(dirpath) / name


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> Backup:
    base = tmp_path_factory.mktemp("restic-backup")
    src = base / "src"
    src.mkdir()
    xattrs = make_source(src)
    repo = base / "repo"
    run_restic(repo, "init")
    run_restic(repo, "backup", str(src))
    return Backup(src, repo, xattrs)


def open_repo(path: Path) -> Repository:
    repo = Repository.open(LocalBackend(str(path)), PASSWORD)
    repo.load_index()
    return repo


@dataclass(frozen=True)
class Entry:
    kind: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    rdev: int
    link: bytes
    sha256: str
    size: int


def scan(root: bytes) -> dict[bytes, Entry]:
    """Every entry below ``root`` by relative bytes path, metadata read before content
    (reading a file must not be able to change what is compared)."""
    stats: dict[bytes, os.stat_result] = {}

    def visit(path: bytes) -> None:
        for name in sorted(os.listdir(path)):
            full = path + b"/" + name
            stats[full] = os.lstat(full)
            if stat.S_ISDIR(stats[full].st_mode):
                visit(full)

    visit(root)
    out = {}
    for full, st in stats.items():
        digest = ""
        if stat.S_ISREG(st.st_mode):
            with open(full, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        out[full[len(root):]] = Entry(
            stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            st.st_mtime_ns, st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0,
            os.readlink(full) if stat.S_ISLNK(st.st_mode) else b"", digest,
            st.st_size if stat.S_ISREG(st.st_mode) else 0)
    return out


def test_restore_matches_source_and_restic(backup: Backup, tmp_path: Path) -> None:
    repo = open_repo(backup.repo)
    snap = repo.find_snapshot("latest")
    target = tmp_path / "ours"
    calls: list[tuple[int, int]] = []
    result = restore(repo, snap, str(target), progress=lambda f, b: calls.append((f, b)), workers=3)

    assert result.errors == []
    restored_src = bytes(target) + bytes(backup.src)  # restic nests the absolute path
    source = scan(bytes(backup.src))
    ours = scan(restored_src)
    assert set(ours) == set(source)
    assert b"/caf\xe9" in ours  # the non-UTF-8 name came back as the same bytes
    for path, entry in source.items():
        assert ours[path] == entry, path

    # The same bits as restic's own restore, down to the ancestors of the backed-up path.
    run_restic(backup.repo, "restore", "latest", "--target", str(tmp_path / "restic"))
    assert scan(bytes(target)) == scan(bytes(tmp_path / "restic"))

    st = {name: os.lstat(restored_src + name) for name in
          (b"/hard1", b"/a/hard2", b"/fifo", b"/null", b"/setuid", b"/sparse", b"/sticky", b"/a/b")}
    assert st[b"/hard1"].st_ino == st[b"/a/hard2"].st_ino
    assert st[b"/hard1"].st_nlink == 2
    assert stat.S_ISFIFO(st[b"/fifo"].st_mode)
    assert stat.S_ISCHR(st[b"/null"].st_mode) and st[b"/null"].st_rdev == os.makedev(1, 3)
    assert st[b"/setuid"].st_mode & stat.S_ISUID
    assert st[b"/sticky"].st_mode & stat.S_ISVTX
    assert st[b"/a/b"].st_mode & stat.S_ISGID
    assert os.readlink(restored_src + b"/dangling") == b"does/not/exist"
    # Sparse: zero blobs are skipped, so almost nothing is allocated (restic 0.14 itself
    # writes all 100 MiB).
    assert st[b"/sparse"].st_size == SPARSE_SIZE
    assert st[b"/sparse"].st_blocks * 512 < SPARSE_SIZE // 10
    # mtimes exactly as restic stored them, nanoseconds included.
    node = find_node(repo, snap.tree, bytes(backup.src) + b"/a/b/c/deep.txt")
    assert node is not None and node.mtime % 1_000_000_000 != 0
    assert os.lstat(restored_src + b"/a/b/c/deep.txt").st_mtime_ns == node.mtime
    if backup.xattrs:
        assert os.getxattr(restored_src + b"/small.txt", "user.note") == b"\x00binary\xff"
        assert os.getxattr(restored_src + b"/docs", "user.dir") == b"on a directory"

    regular = [e for p, e in source.items() if e.kind == stat.S_IFREG]
    assert result.files == sum(1 for e in source.values() if e.kind != stat.S_IFDIR)
    ancestors = len(backup.src.parts) - 1  # /tmp, ..., src itself; "/" has no node
    assert result.dirs == sum(1 for e in source.values() if e.kind == stat.S_IFDIR) + ancestors
    assert result.bytes_written == sum(e.size for e in regular) - st[b"/hard1"].st_size
    assert calls and calls[-1] == (result.files, result.bytes_written)


def test_restore_overwrites_existing_files(backup: Backup, tmp_path: Path) -> None:
    repo = open_repo(backup.repo)
    target = tmp_path / "t"
    dest = Path(str(target) + str(backup.src))
    (dest / "a").mkdir(parents=True)
    (dest / "small.txt").write_bytes(b"stale and much longer than the real content" * 100)
    os.symlink("/etc/passwd", dest / "medium.bin")  # must be replaced, not followed
    result = restore(repo, repo.find_snapshot("latest"), str(target))
    assert result.errors == []
    assert (dest / "small.txt").read_bytes() == (backup.src / "small.txt").read_bytes()
    assert not (dest / "medium.bin").is_symlink()
    assert (dest / "medium.bin").read_bytes() == (backup.src / "medium.bin").read_bytes()


def test_restore_with_include_restores_only_matches_and_parents(backup: Backup, tmp_path: Path) -> None:
    repo = open_repo(backup.repo)
    target = tmp_path / "inc"
    src = str(backup.src)
    result = restore(repo, repo.find_snapshot("latest"), str(target),
                     include=[f"{src}/a/b/c/*.txt", "notes.txt", f"{src}/docs"])
    assert result.errors == []
    restored = {p[len(bytes(target)):] for p in
                (os.fsencode(d) + b"/" + n for d, ds, fs in os.walk(bytes(target)) for n in ds + fs)}
    wanted = {f"{src}/a/b/c/deep.txt", f"{src}/a/notes.txt", f"{src}/docs/x.txt", f"{src}/docs/y.bin"}
    expected: set[str] = set()
    for path in wanted:
        parts = path.split("/")
        expected.update("/".join(parts[:i]) for i in range(2, len(parts) + 1))
    assert restored == {os.fsencode(p) for p in expected}
    assert result.files == 4
    # Parent directories that did not match themselves still get their metadata.
    st = os.stat(str(target) + src + "/a/b")
    assert st.st_mtime_ns == os.stat(f"{src}/a/b").st_mtime_ns
    assert stat.S_IMODE(st.st_mode) == 0o2750
    y_bin = Path(str(target) + src) / "docs" / "y.bin"
    assert y_bin.read_bytes() == (backup.src / "docs" / "y.bin").read_bytes()


def test_damaged_blob_loses_only_the_files_that_use_it(backup: Backup, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    shutil.copytree(backup.repo, repo_dir)
    repo = open_repo(repo_dir)
    snap = repo.find_snapshot("latest")
    big = find_node(repo, snap.tree, bytes(backup.src) + b"/big.bin")
    assert big is not None and big.content is not None and len(big.content) > 1
    victim = big.content[1]
    loc = repo.index.lookup(victim)
    assert loc is not None
    pack_path = repo_dir / "data" / loc.pack[:2] / loc.pack
    os.chmod(pack_path, 0o600)
    data = bytearray(pack_path.read_bytes())
    data[loc.blob.offset + loc.blob.length // 2] ^= 0x01
    pack_path.write_bytes(bytes(data))
    other_in_pack = [b.id for b in repo.index.packs[loc.pack] if b.id != victim]
    assert other_in_pack  # the same pack holds blobs of files that must survive

    target = tmp_path / "out"
    result = restore(open_repo(repo_dir), snap, str(target))

    damaged = {path for path, node in walk(repo, snap.tree)
               if node.type == "file" and victim in (node.content or [])}
    assert damaged == {bytes(backup.src) + b"/big.bin"}
    assert {os.fsencode(p) for p, _ in result.errors} == {bytes(target) + p for p in damaged}
    assert all(msg for _, msg in result.errors)
    assert not os.path.lexists(bytes(target) + bytes(backup.src) + b"/big.bin")
    restored_src = bytes(target) + bytes(backup.src)
    for path, entry in scan(bytes(backup.src)).items():
        if path == b"/big.bin":
            continue
        assert os.path.lexists(restored_src + path), path
        if entry.kind == stat.S_IFREG:
            with open(restored_src + path, "rb") as f:
                assert hashlib.file_digest(f, "sha256").hexdigest() == entry.sha256, path


def test_walk_yields_restics_ls_order(backup: Backup) -> None:
    repo = open_repo(backup.repo)
    snap = repo.find_snapshot("latest")
    lines = run_restic(backup.repo, "ls", "--json", "latest").splitlines()
    restic_paths = [doc["path"] for doc in map(json.loads, lines) if doc.get("struct_type") == "node"]
    ours = [path.decode("utf-8", "replace") for path, _ in walk(repo, snap.tree)]
    assert ours == restic_paths
    assert find_node(repo, snap.tree, bytes(backup.src) + b"/caf\xe9") is not None
    assert find_node(repo, snap.tree, bytes(backup.src) + b"/nope") is None
    assert find_node(repo, snap.tree, bytes(backup.src) + b"/small.txt/x") is None


def test_unreadable_target_is_reported_not_raised(backup: Backup, tmp_path: Path) -> None:
    repo = open_repo(backup.repo)
    target = tmp_path / "blocked"
    dest = Path(str(target) + str(backup.src))
    (dest / "docs").mkdir(parents=True)
    (dest / "docs" / "x.txt").mkdir()  # a directory where a file must go
    result: RestoreResult = restore(repo, repo.find_snapshot("latest"), str(target))
    assert [p for p, _ in result.errors] == [str(dest / "docs" / "x.txt")]
    assert (dest / "docs" / "y.bin").read_bytes() == (backup.src / "docs" / "y.bin").read_bytes()
