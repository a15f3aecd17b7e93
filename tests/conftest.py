"""Shared fixtures: a corestate command runner, the real restic as an oracle, and a
source tree with every kind of entry a backup must round-trip; the real storage servers
(tests/storage_servers.py), one of each per session."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.storage_servers import StorageServer, running

PASSWORD = "correct horse battery staple"


def run_corestate(*args: str, env: dict[str, str] | None = None, check: bool = True,
                  timeout: float = 600, drop_dac: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real `corestate` command (as the console script would).

    ``drop_dac`` runs it as root without the capabilities that let root read any file,
    so permission bits apply to it as to a normal user."""
    full_env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD,
                "CORESTATE_STATE_DIR": "/tmp/corestate-test-state", **(env or {})}
    cmd = [sys.executable, "-m", "corestate", *args]
    if drop_dac:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True,
                          errors="surrogateescape", timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"corestate {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def run_restic(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real restic (Debian's package) against a repository."""
    restic = shutil.which("restic")
    assert restic, "restic is not installed (deploy/install.sh --dev installs it)"
    env = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": "/tmp/restic-test-cache"}
    proc = subprocess.run([restic, *args], env=env, capture_output=True, text=True, errors="surrogateescape",
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"restic {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def corestate() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_corestate


@pytest.fixture
def restic() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_restic


def build_rich_tree(root: Path) -> Path:
    """Every kind of entry: see the assertions in tests/test_roundtrip.py."""
    src = root / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "docs" / "a.txt").write_text("hello\n" * 1000)
    (src / "docs" / "deep" / "b.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "empty").write_bytes(b"")
    (src / "big-compressible").write_bytes(b"abcdefgh" * (1 << 20))  # 8 MiB, several chunks
    os.symlink("docs/a.txt", src / "link")
    os.symlink("/nonexistent/target", src / "dangling")
    os.symlink("loop", src / "loop")  # a symlink loop
    os.link(src / "docs" / "a.txt", src / "hardlink")
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "socket"))  # restic leaves sockets out; so must we
    sock.close()
    os.mknod(src / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    nonutf8 = os.fsencode(str(src)) + b"/caf\xe9-\xff.txt"
    with open(nonutf8, "wb") as f:
        f.write(b"latin-1 name\n")
    setuid = src / "setuid-prog"
    setuid.write_bytes(b"#!/bin/sh\n")
    os.chmod(setuid, 0o4755)
    sparse = src / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.seek(10 * 1024 * 1024)
        f.write(b"data in the middle")
    deep = src / "deep"
    for i in range(120):  # deeper than most trees, within PATH_MAX
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("bottom\n")
    os.utime(src / "docs" / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_987_654_321))
    return src


@pytest.fixture
def rich_tree(tmp_path: Path) -> Path:
    return build_rich_tree(tmp_path)


@pytest.fixture
def repo_path(tmp_path: Path, corestate: Callable[..., subprocess.CompletedProcess[str]]) -> Path:
    repo = tmp_path / "repo"
    corestate("init", "--repo", str(repo))
    return repo


def tree_manifest(root: Path, with_atime: bool = False) -> dict[bytes, tuple[object, ...]]:
    """What a restore must reproduce, per relative path: type, permission bits, size,
    mtime (ns), content hash / link target / device number, and hardlink groups."""
    import hashlib

    base = os.fsencode(str(root))
    out: dict[bytes, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], bytes] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode):
                continue  # not backed up (as restic)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                extra = h.hexdigest()
                first = inodes.setdefault((st.st_dev, st.st_ino), rel)
                if first != rel:
                    extra = ("hardlink-of", first)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            mtime = st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None
            out[rel] = (kind, stat.S_IMODE(st.st_mode), size, mtime, extra, st.st_uid, st.st_gid)
    return out


def restored_root(target: Path, src: Path) -> Path:
    """Where a restore into ``target`` puts ``src`` (the absolute path nests)."""
    return target / str(src).lstrip("/")


# -- real storage servers (deploy/storage/*.sh), one per session, started on first use ---
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    yield from running("s3", tmp_path_factory)


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    yield from running("azure", tmp_path_factory)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageServer]:
    yield from running("gs", tmp_path_factory)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A skipped test is a failed one: every tool and service the suite needs is
    installed by `deploy/install.sh --dev` or started by a script under deploy/, so a
    skip can only hide a missing install step (CORESTATE_ALLOW_SKIPS=1 allows them when
    running a part of the suite by hand on a machine that lacks something)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") \
            and os.environ.get("CORESTATE_ALLOW_SKIPS") != "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, which the suite does not allow: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    """The same for a module skipped as it is collected (``pytest.importorskip``)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CORESTATE_ALLOW_SKIPS") != "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, which the suite does not allow: {reason}"
