"""`corestate protect` end to end: a real watcher, real snapshots, restic as the oracle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, restored_root, run_corestate, run_restic, tree_manifest


class Protect:
    """A running `corestate protect --json` whose snapshot lines are collected."""

    def __init__(self, repo: Path, src: Path, *args: str, drop_dac: bool = False) -> None:
        env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD,
               "CORESTATE_STATE_DIR": str(repo.parent / "state")}
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if drop_dac else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "corestate", "protect", str(src), "--repo", str(repo),
             "--json", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr = ""
        self.points: list[dict] = []

    def wait_points(self, n: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.points) < n:
            assert time.monotonic() < deadline, f"only {len(self.points)} snapshots: {self.points}"
            line = self.proc.stdout.readline()
            assert line, self.proc.stderr.read()
            self.points.append(json.loads(line))
        return self.points

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        out, self.stderr = self.proc.communicate(timeout=30)
        self.points += [json.loads(ln) for ln in out.splitlines() if ln.strip()]
        return self.proc.returncode


@pytest.mark.restic
def test_every_change_is_protected_within_seconds(tmp_path):
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("first version\n")
    (src / "old.txt").write_text("to be deleted\n")
    outside = tmp_path / "outside"
    (outside / "incoming").mkdir(parents=True)
    (outside / "incoming" / "x.bin").write_bytes(os.urandom(200_000))
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src, "--interval", "0.5")
    try:
        first = p.wait_points(1)[0]
        assert first["full_scan"] and first["files_new"] == 2
        before_changes = time.time()
        time.sleep(0.3)
        (src / "docs" / "a.txt").write_text("second version\n")
        (src / "docs" / "new.txt").write_text("created\n")
        os.unlink(src / "old.txt")
        (src / "fresh" / "deeper").mkdir(parents=True)  # files right after mkdir
        (src / "fresh" / "deeper" / "f").write_text("in a new directory\n")
        os.rename(src / "docs", src / "papers")
        shutil.move(str(outside / "incoming"), str(src / "incoming"))
        with open(src / "papers" / "a.txt", "r+") as f:  # truncation
            f.truncate(6)
        os.link(src / "papers" / "new.txt", src / "hardlink")
        start = time.monotonic()
        deadline = start + 15
        while time.monotonic() < deadline:  # until a snapshot matches the tree
            pts = p.wait_points(len(p.points) + 1, timeout=15)
            target = tmp_path / f"out{len(pts)}"
            run_corestate("restore", pts[-1]["snapshot_id"], "--target", str(target),
                          "--repo", str(repo))
            if tree_manifest(restored_root(target, src)) == tree_manifest(src):
                break
        else:
            pytest.fail("no snapshot ever matched the tree")
        # latency is measured by benchmarks/rpo_bench.py; here only that it is bounded
        assert time.monotonic() - start < 30, "changes took too long to be protected"
        assert not pts[-1]["full_scan"], "incremental snapshots must not rescan everything"
    finally:
        assert p.stop() == 0
    run_restic("-r", str(repo), "check", "--read-data")
    # the tree as it was before the changes is still there, by time
    out = tmp_path / "at"
    run_corestate("restore", "--at", str(before_changes), "--target", str(out), "--repo", str(repo))
    assert (restored_root(out, src) / "docs" / "a.txt").read_text() == "first version\n"
    assert (restored_root(out, src) / "old.txt").exists()


def test_sigterm_commits_pending_changes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("one")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src, "--interval", "60")  # no snapshot would be due for a minute
    p.wait_points(1)
    time.sleep(0.2)
    (src / "a").write_text("two")
    time.sleep(1.0)  # let the watcher see it
    assert p.stop() == 0
    assert len(p.points) == 2, p.points
    out = tmp_path / "out"
    run_corestate("restore", "latest", "--target", str(out), "--repo", str(repo))
    assert (restored_root(out, src) / "a").read_text() == "two"


def test_catch_up_after_restart_finds_offline_changes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_text(f"v1 {i}")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src)
    p.wait_points(1)
    p.stop()
    (src / "f3").write_text("changed while nobody watched")  # the agent is down
    p = Protect(repo, src)
    point = p.wait_points(1)[0]
    p.stop()
    assert point["full_scan"] and point["files_changed"] == 1 and point["files_new"] == 0


@pytest.mark.restic
def test_prune_between_snapshots_does_not_leave_dangling_blobs(tmp_path):
    """A long-running protect caches what the repository holds; a prune from another
    process rewrites the index, and the next snapshot must notice instead of
    referencing blobs that prune removed."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_bytes(os.urandom(300_000))
    gone = os.urandom(300_000)
    (src / "gone").write_bytes(gone)
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src, "--interval", "0.3")
    try:
        p.wait_points(1)
        os.unlink(src / "gone")
        p.wait_points(2)
        # forget the first snapshot: prune deletes `gone`'s blob
        run_corestate("forget", "--keep-last", "1", "--prune", "--repo", str(repo))
        # the same content again: a stale cache would think its blob is still stored
        (src / "gone").write_bytes(gone)
        p.wait_points(3)
    finally:
        assert p.stop() == 0
    run_restic("-r", str(repo), "check", "--read-data")
    out = tmp_path / "out"
    run_corestate("restore", "latest", "--target", str(out), "--repo", str(repo))
    assert tree_manifest(restored_root(out, src)) == tree_manifest(src)


def test_hostile_changes_are_reported_never_fatal(tmp_path):
    """Vanishing directories, permission denied, files deleted while being read, a
    file replaced by a directory: protect reports them and keeps protecting."""
    src = tmp_path / "src"
    (src / "work").mkdir(parents=True)
    (src / "swap").write_text("a file for now")
    (src / "private").mkdir()
    (src / "private" / "secret").write_text("x")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src, "--interval", "0.3", drop_dac=True)
    try:
        p.wait_points(1)
        os.chmod(src / "private", 0)  # permission denied from now on (for protect)
        (src / "private" / "secret").write_text("changed where protect may not look")
        for i in range(30):  # directories that appear and vanish while watched
            d = src / "work" / f"tmp{i}"
            d.mkdir()
            (d / "f").write_bytes(os.urandom(50_000))
            shutil.rmtree(d)
        big = src / "work" / "deleted-mid-read"
        big.write_bytes(os.urandom(20_000_000))
        big.unlink()
        os.unlink(src / "swap")  # a file replaced by a directory
        (src / "swap").mkdir()
        (src / "swap" / "inside").write_text("now a directory")
        time.sleep(1.5)
        (src / "work" / "after").write_text("still protected")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            p.wait_points(len(p.points) + 1, timeout=15)
            out = tmp_path / f"out{len(p.points)}"
            run_corestate("restore", p.points[-1]["snapshot_id"], "--target", str(out),
                          "--repo", str(repo))
            root = restored_root(out, src)
            if (root / "work" / "after").exists():
                break
        assert (root / "swap" / "inside").read_text() == "now a directory"
        assert not (root / "work" / "tmp29").exists()
    finally:
        assert p.stop() == 0, p.stderr
        os.chmod(src / "private", 0o755)
    assert "private" in p.stderr and "Permission denied" in p.stderr
