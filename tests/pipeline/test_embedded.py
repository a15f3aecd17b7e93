"""The embedded runner: lanes in worker processes, a worker killed mid-backup, and the
inline lane for small runs — against a real repository, with restic as the oracle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corestate.connectors.url import open_backend
from corestate.pipeline import embedded
from corestate.pipeline.backup import BackupCache, BackupOptions, backup
from corestate.repository.repository import Repository
from tests.conftest import PASSWORD, run_corestate, run_restic


def make_tree(root: Path, files: int, size: int, seed: int = 1) -> None:
    import random

    rng = random.Random(seed)
    for i in range(files):
        d = root / f"d{i % 13}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(rng.randbytes(rng.randrange(size // 2, size)))
    (root / "same1").write_bytes(b"identical content\n" * 1000)
    (root / "same2").write_bytes(b"identical content\n" * 1000)


def lane_pids(parent: int) -> list[int]:
    """The worker processes (lanes) of the corestate process ``parent``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == parent and b"corestate.pipeline.workers import serve" in cmd:
            out.append(int(pid))
    return out


def test_a_backup_in_worker_processes_stores_each_blob_once_and_restic_restores_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "INLINE_FILES", 10)  # worker processes even for this tree
    src = tmp_path / "src"
    make_tree(src, 120, 200_000)
    repo = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)
    cache = BackupCache()
    try:
        first = backup(repo, BackupOptions(paths=[str(src)], workers=2), cache=cache)
        assert cache.runner is not None and len(cache.runner._workers) == 2
        assert first.files_new == 122 and first.errors == []
        # the two identical files meet in one lane: their blob is stored once
        assert first.data_blobs == 121
        (src / "d0" / "f0").write_bytes(b"changed")
        second = backup(repo, BackupOptions(paths=[str(src)], workers=2), cache=cache)
        assert second.files_changed == 1 and second.files_unmodified == 121
        assert second.data_blobs == 1
    finally:
        cache.close()
    assert cache.runner is None
    run_restic("-r", str(tmp_path / "repo"), "check", "--read-data")
    out = tmp_path / "out"
    run_restic("-r", str(tmp_path / "repo"), "restore", "latest", "--target", str(out))
    restored = out / str(src).lstrip("/")
    for path in src.rglob("*"):
        if path.is_file():
            assert (restored / path.relative_to(src)).read_bytes() == path.read_bytes()


def test_a_small_run_stays_in_this_process(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 5, 1000)
    repo = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)
    cache = BackupCache()
    try:
        summary = backup(repo, BackupOptions(paths=[str(src)], workers=2), cache=cache)
        assert summary.files_new == 7
        assert cache.runner is not None and cache.runner._workers == []  # none started
    finally:
        cache.close()


def test_a_worker_process_killed_mid_backup_fails_it_cleanly_and_the_next_completes(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, 1500, 120_000)  # ~90 MiB: long enough to kill a worker in the middle
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD,
           "CORESTATE_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "corestate", "backup", str(src), "--repo",
                             str(repo)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    lanes: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        lanes = lane_pids(proc.pid)
        if len(lanes) >= 2:
            break
        time.sleep(0.05)
    assert len(lanes) >= 2, "the backup never started its worker processes"
    time.sleep(0.5)  # let both lanes store something
    os.kill(lanes[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:  # failed: one line naming the worker, nothing committed
        assert proc.returncode == 1
        assert "worker process" in err and "killed by signal 9" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert lane_pids(proc.pid) == []
    run_restic("-r", str(repo), "check", "--read-data")
    run_corestate("backup", str(src), "--repo", str(repo))
    run_restic("-r", str(repo), "check", "--read-data")
    restored = tmp_path / "out"
    run_corestate("restore", "latest", "--target", str(restored), "--repo", str(repo))
    back = restored / str(src).lstrip("/")
    assert sorted(p.relative_to(back) for p in back.rglob("*")) == \
        sorted(p.relative_to(src) for p in src.rglob("*"))
    assert all((back / p.relative_to(src)).read_bytes() == p.read_bytes()
               for p in src.rglob("*") if p.is_file())
