"""Entries replaced between the scan's lstat and the read (issue 9, section 3).

A backup runs as root (these tests do) over a directory its user can write. The user
replaces a file, after the scan saw it, by a symlink to a root-only file, a fifo, or
puts a symlink in place of a directory above it. The snapshot must record what is
there now (a symlink, a fifo) or report the entry, never store the root-only file's
bytes and never hang. The swaps are made deterministically by hooks at the two moments
that matter (right after the scan looked at the entry, right before it is opened), and
once by a real attacker process racing the backup.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corestate.agents import agent
from corestate.connectors.local import LocalBackend
from corestate.kernel.blockmap import BlockMapStore
from corestate.pipeline import scan as scan_mod
from corestate.pipeline.backup import BackupOptions, BackupSummary, backup
from corestate.pipeline.chunk import ChunkStage
from corestate.repository.repository import Repository
from corestate.repository.tree import Node
from corestate.schemas.events import Chunk, DataSegment, FileManifest
from tests.kernel.test_reflink import xfs  # noqa: F401  (a loop-mounted XFS: reflinks)

PASSWORD = "pw"


def _make_secret(where: Path) -> tuple[Path, bytes]:
    """A root-only directory holding a root-only file ``f``, and its content."""
    token = b"ROOT-ONLY-" + secrets.token_hex(16).encode()
    d = where / "root-only"
    d.mkdir(mode=0o700, parents=True)
    (d / "f").write_bytes(token * 100)
    os.chmod(d / "f", 0o600)
    return d, token


@pytest.fixture
def secret(tmp_path: Path) -> tuple[Path, bytes]:
    return _make_secret(tmp_path)


def _repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD)


def _open(tmp_path: Path) -> Repository:
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), PASSWORD)
    repo.load_index()
    return repo


def _stored(tmp_path: Path) -> bytes:
    """Every data and tree blob the repository holds, concatenated."""
    repo = _open(tmp_path)
    blobs = b"".join(repo.load_blob(b) for b in repo.index.blob_ids())
    assert blobs, "the repository holds nothing: the check would prove nothing"
    return blobs


def _node(tmp_path: Path, path: Path) -> Node | None:
    """The node of ``path`` in the latest snapshot (None if it is not there)."""
    repo = _open(tmp_path)
    tree = repo.find_snapshot("latest").tree
    node = None
    for part in path.parts[1:]:
        node = next((n for n in repo.load_tree(tree) if n.name == os.fsencode(part)), None)
        if node is None or node.subtree is None:
            break
        tree = node.subtree
    return node


def _after_scan(monkeypatch: pytest.MonkeyPatch, module: object, target: Path,
                swap: Callable[[], None]) -> list[int]:
    """Run ``swap`` once, right after the scan made the node of ``target`` (its lstat)."""
    real = module.node_from_stat  # type: ignore[attr-defined]
    done: list[int] = []

    def hook(name: bytes, path: bytes, st: os.stat_result, known: Node | None = None) -> Node:
        node = real(name, path, st, known)
        if path == os.fsencode(target) and not done:
            done.append(1)
            swap()
        return node

    monkeypatch.setattr(module, "node_from_stat", hook)
    return done


def _before_open(monkeypatch: pytest.MonkeyPatch, target: Path,
                 swap: Callable[[], None]) -> list[int]:
    """Run ``swap`` once, right before anything opens ``target`` by its path."""
    real = os.open
    done: list[int] = []

    def hook(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if not done and os.fsencode(path) == os.fsencode(target):
            done.append(1)
            swap()
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", hook)
    return done


def _to_symlink(path: Path, target: Path) -> Callable[[], None]:
    def swap() -> None:
        os.rename(path, path.with_name(path.name + ".moved"))
        os.symlink(target, path)
    return swap


def _options(src: Path, tmp_path: Path, big: bool) -> BackupOptions:
    """Backup options; ``big`` takes every file through the block-map path."""
    if not big:
        return BackupOptions(paths=[str(src)])
    return BackupOptions(paths=[str(src)], block_threshold=1, block_size=4096,
                         block_store=BlockMapStore(str(tmp_path / "maps")))


@pytest.fixture(params=["ext4", "xfs"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on ext4 (no reflinks: live reads) or XFS (reads of clones)."""
    if request.param == "ext4":
        yield tmp_path / "on-ext4"
        return
    base = request.getfixturevalue("xfs") / f"t-{secrets.token_hex(4)}"
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("big", [False, True], ids=["chunks", "blocks"])
def test_symlink_swapped_in_before_the_open_is_saved_as_the_symlink(
        where, tmp_path, monkeypatch, big):
    src = where / "src"
    src.mkdir(parents=True)
    (src / "f").write_bytes(b"harmless")
    secret_dir, token = _make_secret(where)  # on the same filesystem, as /root and /home
    swapped = _before_open(monkeypatch, src / "f", _to_symlink(src / "f", secret_dir / "f"))
    summary = backup(_repo(tmp_path), _options(src, tmp_path, big))
    assert swapped, "the hook never ran"
    assert token not in _stored(tmp_path), "the root-only file's bytes are in the repository"
    node = _node(tmp_path, src / "f")
    assert node is not None and node.type == "symlink", node
    assert node.linktarget == os.fsencode(secret_dir / "f")
    assert not summary.errors, "a replaced entry is taken as what it is now"


@pytest.mark.parametrize("big", [False, True], ids=["chunks", "blocks"])
def test_symlink_swapped_in_after_the_scan_is_saved_as_the_symlink(tmp_path, secret,
                                                                   monkeypatch, big):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"harmless")
    secret_dir, token = secret
    _after_scan(monkeypatch, scan_mod, src / "f", _to_symlink(src / "f", secret_dir / "f"))
    summary = backup(_repo(tmp_path), _options(src, tmp_path, big))
    assert token not in _stored(tmp_path)
    node = _node(tmp_path, src / "f")
    assert node is not None and node.type == "symlink" and not summary.errors


def test_another_file_swapped_in_is_read_with_its_own_metadata(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"first file")
    other = tmp_path / "other"
    other.write_bytes(b"the file that took its place")
    os.chown(other, 4242, 4343)
    os.chmod(other, 0o640)

    def swap() -> None:
        os.rename(other, src / "f")

    _after_scan(monkeypatch, scan_mod, src / "f", swap)
    summary = backup(_repo(tmp_path), BackupOptions(paths=[str(src)]))
    node = _node(tmp_path, src / "f")
    st = os.lstat(src / "f")
    assert node is not None and node.type == "file" and not summary.errors
    assert (node.inode, node.uid, node.gid, node.mode & 0o777, node.size) == (
        st.st_ino, 4242, 4343, 0o640, len(b"the file that took its place"))
    assert b"the file that took its place" in _stored(tmp_path)


def test_fifo_swapped_in_after_the_scan_does_not_hang(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"a file, for now")
    (src / "g").write_bytes(b"a sibling")

    def swap() -> None:
        os.unlink(src / "f")
        os.mkfifo(src / "f")

    _after_scan(monkeypatch, scan_mod, src / "f", swap)
    result: list[BackupSummary] = []
    t = threading.Thread(target=lambda: result.append(
        backup(_repo(tmp_path), BackupOptions(paths=[str(src)]))), daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # release the reader blocked on the fifo, then fail
        os.close(os.open(src / "f", os.O_WRONLY | os.O_NONBLOCK))
        t.join(30)
        pytest.fail("the backup hung opening a fifo swapped in for a file")
    assert result and not result[0].errors
    node = _node(tmp_path, src / "f")
    assert node is not None and node.type == "fifo", "a changed type is a changed file"
    assert _node(tmp_path, src / "g").type == "file"


@pytest.mark.parametrize("big", [False, True], ids=["chunks", "blocks"])
def test_directory_above_replaced_by_a_symlink_after_the_scan(tmp_path, secret, monkeypatch,
                                                              big):
    """src/d/f was scanned; then d becomes a symlink to a root-only directory that has
    an f too. O_NOFOLLOW guards the last component only: the read must still refuse."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"harmless")
    secret_dir, token = secret
    _after_scan(monkeypatch, scan_mod, src / "d" / "f", _to_symlink(src / "d", secret_dir))
    summary = backup(_repo(tmp_path), _options(src, tmp_path, big))
    assert token not in _stored(tmp_path), "the root-only file's bytes are in the repository"
    assert [p for p, _ in summary.errors] == [str(src / "d" / "f")], summary.errors
    assert "replaced by a symlink" in summary.errors[0][1]


def test_directory_replaced_by_a_symlink_before_it_is_listed(tmp_path, secret, monkeypatch):
    """The walker saw d as a directory; by the time it lists d, d is a symlink to a
    root-only directory: neither its files nor their names are saved."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"harmless")
    secret_dir, token = secret
    (secret_dir / "root-only-name").write_bytes(b"")
    _after_scan(monkeypatch, scan_mod, src / "d", _to_symlink(src / "d", secret_dir))
    summary = backup(_repo(tmp_path), BackupOptions(paths=[str(src)]))
    stored = _stored(tmp_path)
    assert token not in stored and b"root-only-name" not in stored
    assert [p for p, _ in summary.errors] == [str(src / "d")], summary.errors
    assert "no longer a directory" in summary.errors[0][1]


def test_directory_above_a_directory_replaced_before_it_is_listed(tmp_path, secret,
                                                                  monkeypatch):
    """src/d/e was scanned as a directory; then d becomes a symlink to a root-only
    directory that has an e too: e is not listed there."""
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    secret_dir, token = secret
    (secret_dir / "e").mkdir()
    (secret_dir / "e" / "root-only-name").write_bytes(token)
    _after_scan(monkeypatch, scan_mod, src / "d" / "e", _to_symlink(src / "d", secret_dir))
    summary = backup(_repo(tmp_path), BackupOptions(paths=[str(src)]))
    stored = _stored(tmp_path)
    assert token not in stored and b"root-only-name" not in stored
    assert [p for p, _ in summary.errors] == [str(src / "d" / "e")], summary.errors


# -- the Kafka agent's reads ---------------------------------------------------------

def _agent_run(src: Path) -> tuple[agent.ScanSummary, list[FileManifest], bytes]:
    """A full agent run, its events through the real chunk stage (no broker needed for
    the reads): the summary, the file manifests and the bytes of every chunk."""
    events: list[object] = []
    summary = agent.scan([str(src)], "h", "snap-1", events.append)
    stage = ChunkStage(1)
    manifests, chunks = [], []
    for position, event in enumerate(events):
        for emit in stage.handle(0, position, event):  # type: ignore[arg-type]
            if isinstance(emit.event, FileManifest):
                manifests.append(emit.event)
            elif isinstance(emit.event, Chunk):
                chunks.append(emit.event.data)
    sent = b"".join(e.data for e in events if isinstance(e, DataSegment))
    return summary, manifests, b"".join(chunks) + sent


def test_agent_symlink_swapped_in_after_the_scan(tmp_path, secret, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"harmless")
    secret_dir, token = secret
    _after_scan(monkeypatch, agent, src / "f", _to_symlink(src / "f", secret_dir / "f"))
    summary, manifests, data = _agent_run(src)
    assert token not in data
    f = [m.node for m in manifests if m.path == os.fsencode(src / "f")]
    assert len(f) == 1 and f[0].type == "symlink", f
    assert not summary.errors


def test_agent_directory_above_replaced_by_a_symlink(tmp_path, secret, monkeypatch):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"harmless")
    secret_dir, token = secret
    _after_scan(monkeypatch, agent, src / "d" / "f", _to_symlink(src / "d", secret_dir))
    summary, manifests, data = _agent_run(src)
    assert token not in data
    assert [p for p, _ in summary.errors] == [str(src / "d" / "f")]
    assert not [m for m in manifests if m.path == os.fsencode(src / "d" / "f")]


def test_agent_reads_a_source_path_below_a_symlink(tmp_path):
    """Symlinks above a source path are the user's choice: followed, not refused."""
    (tmp_path / "real" / "src").mkdir(parents=True)
    (tmp_path / "real" / "src" / "f").write_bytes(b"data below a symlink")
    os.symlink(tmp_path / "real", tmp_path / "link")
    summary, manifests, data = _agent_run(tmp_path / "link" / "src")
    assert not summary.errors and summary.files == 1
    assert b"data below a symlink" in data


def test_agent_fifo_swapped_in_does_not_hang(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"a file, for now")

    def swap() -> None:
        os.unlink(src / "f")
        os.mkfifo(src / "f")

    _after_scan(monkeypatch, agent, src / "f", swap)
    out: list[tuple[agent.ScanSummary, list[FileManifest], bytes]] = []
    t = threading.Thread(target=lambda: out.append(_agent_run(src)), daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():
        os.close(os.open(src / "f", os.O_WRONLY | os.O_NONBLOCK))
        t.join(30)
        pytest.fail("the agent hung opening a fifo swapped in for a file")
    f = [m.node for m in out[0][1] if m.path == os.fsencode(src / "f")]
    assert len(f) == 1 and f[0].type == "fifo"


# -- a real race -----------------------------------------------------------------------

_RACER = r"""
import ctypes, os, sys
os.setgid(65534); os.setuid(65534)  # the user who owns the backed-up directory
libc = ctypes.CDLL(None, use_errno=True)
a, b = sys.argv[1].encode(), sys.argv[2].encode()
while True:  # swap a directory and a symlink to a root-only directory, atomically
    libc.renameat2(-100, a, -100, b, 2)  # AT_FDCWD, RENAME_EXCHANGE
"""


def test_real_race_never_leaks_a_root_only_file():
    """An unprivileged process swaps a directory of the backed-up tree and a symlink to
    a root-only directory as fast as it can while 25 backups run as root."""
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="corestate-race-"))
    try:
        os.chmod(base, 0o755)
        token = b"ROOT-ONLY-" + secrets.token_hex(16).encode()
        secret_dir = base / "root-only"
        secret_dir.mkdir(mode=0o700)
        for i in range(20):
            (secret_dir / f"f{i}").write_bytes(token * 50)
            os.chmod(secret_dir / f"f{i}", 0o600)
        src = base / "home"
        (src / "d").mkdir(parents=True)
        for i in range(20):
            (src / "d" / f"f{i}").write_bytes(b"mine %d" % i)
        os.symlink(secret_dir, src / "other")
        for p in (src, src / "d", *(src / "d").iterdir()):
            os.lchown(p, nobody.pw_uid, nobody.pw_gid)
        os.lchown(src / "other", nobody.pw_uid, nobody.pw_gid)
        repo = Repository.init(LocalBackend(str(base / "repo")), PASSWORD)
        racer = subprocess.Popen([sys.executable, "-c", _RACER, str(src / "d"), str(src / "other")])
        try:
            time.sleep(0.2)
            assert racer.poll() is None, "the racer died"
            errors = 0
            for _ in range(25):
                errors += len(backup(repo, BackupOptions(paths=[str(src)])).errors)
        finally:
            racer.kill()
            racer.wait()
        stored = b"".join(repo.load_blob(b) for b in repo.index.blob_ids())
        assert token not in stored, "a root-only file's bytes are in the repository"
        assert errors, "the race never hit a read: the test proves nothing"
    finally:
        shutil.rmtree(base, ignore_errors=True)
