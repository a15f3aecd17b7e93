"""Readers take restic's shared lock, so prune (exclusive) never deletes what they read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from corestate.connectors.local import LocalBackend
from corestate.repository.repository import Repository
from tests.conftest import PASSWORD, restored_root, tree_manifest


def _locks(repo):
    return [n for n in os.listdir(repo / "locks") if not n.startswith(".tmp-")]


def _backups(tmp_path, corestate):
    repo = tmp_path / "repo"
    corestate("init", "--repo", str(repo))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}").write_bytes(os.urandom(512 * 1024))
    first = json.loads(corestate("backup", str(src), "--repo", str(repo), "--json").stdout)
    (src / "f0").write_bytes(os.urandom(512 * 1024))  # the old f0 is left to the first snapshot
    second = json.loads(corestate("backup", str(src), "--repo", str(repo), "--json").stdout)
    return repo, src, first["snapshot_id"], second["snapshot_id"]


def test_prune_waits_for_a_running_restore(tmp_path, corestate):
    repo, src, first, second = _backups(tmp_path, corestate)
    corestate("forget", first, "--repo", str(repo))
    target = tmp_path / "out"
    restore = subprocess.Popen(
        [sys.executable, "-m", "corestate", "restore", second, "--target", str(target),
         "--repo", str(repo)], env={**os.environ, "CORESTATE_PASSWORD": PASSWORD},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _locks(repo):  # the restore has its lock ...
            assert restore.poll() is None and time.monotonic() < deadline, "restore took no lock"
            time.sleep(0.005)
        os.kill(restore.pid, signal.SIGSTOP)  # ... and is held in the middle of its work
        pruned = corestate("prune", "--repo", str(repo), check=False)
        assert pruned.returncode == 1
        assert "repository is already locked: shared lock" in pruned.stderr
    finally:
        os.kill(restore.pid, signal.SIGCONT)
        out, err = restore.communicate(timeout=120)
    assert restore.returncode == 0, err
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)
    assert not _locks(repo)
    corestate("prune", "--repo", str(repo))  # and once the restore is done, prune runs


@pytest.mark.parametrize("command", [
    ["restore", "latest", "--target", "TARGET"], ["ls", "latest"], ["find", "f1"],
    ["diff", "FIRST", "SECOND"], ["check"], ["stats"]])
def test_readers_refuse_while_prune_holds_the_exclusive_lock(tmp_path, corestate, command):
    repo, _, first, second = _backups(tmp_path, corestate)
    args = [{"TARGET": str(tmp_path / "out"), "FIRST": first, "SECOND": second}.get(a, a)
            for a in command]
    handle = Repository.open(LocalBackend(str(repo)), PASSWORD)
    with handle.locked(exclusive=True):  # what prune holds while it deletes packs
        proc = corestate(*args, "--repo", str(repo), check=False)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "repository is already locked: exclusive lock" in lines[0]
    assert _locks(repo) == []  # the refused reader left no lock behind
    assert not (tmp_path / "out").exists()


def test_readers_of_a_read_only_repository_warn_and_go_on(tmp_path, corestate):
    repo, src, _, _ = _backups(tmp_path, corestate)
    for dirpath, dirnames, filenames in os.walk(repo):
        os.chmod(dirpath, 0o500)
    try:
        proc = corestate("restore", "latest", "--target", str(tmp_path / "out"), "--repo",
                         str(repo), check=False, drop_dac=True)
    finally:
        for dirpath, dirnames, filenames in os.walk(repo):
            os.chmod(dirpath, 0o700)
    assert "warning: reading without a lock" in proc.stderr
    assert tree_manifest(restored_root(tmp_path / "out", src)) == tree_manifest(src)
