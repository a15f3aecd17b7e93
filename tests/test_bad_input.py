"""Bad input gets a clear one-line error and loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, restored_root, tree_manifest

def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got: {stderr!r}"
    return lines[0]


def test_wrong_password_is_one_line_exit_1(repo_path, corestate):
    proc = corestate("snapshots", "--repo", str(repo_path), check=False,
                     env={"CORESTATE_PASSWORD": "wrong"})
    assert proc.returncode == 1
    assert "wrong password" in _one_line(proc.stderr)


def test_missing_and_not_a_repository(tmp_path, corestate):
    proc = corestate("snapshots", "--repo", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 1 and "does not exist" in _one_line(proc.stderr)
    (tmp_path / "plain").mkdir()
    proc = corestate("snapshots", "--repo", str(tmp_path / "plain"), check=False)
    assert proc.returncode == 1 and "not a repository" in _one_line(proc.stderr)
    proc = corestate("init", "--repo", str(tmp_path / "plain"))
    proc = corestate("init", "--repo", str(tmp_path / "plain"), check=False)
    assert proc.returncode == 1 and "already exists" in _one_line(proc.stderr)


def test_missing_password_without_terminal(repo_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORESTATE_")}
    proc = subprocess.run([sys.executable, "-m", "corestate", "snapshots", "--repo", str(repo_path)],
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "no password given" in _one_line(proc.stderr)


def test_password_file(repo_path, tmp_path):
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORESTATE_")}
    proc = subprocess.run([sys.executable, "-m", "corestate", "snapshots", "--json",
                           "--repo", str(repo_path), "--password-file", str(pwfile)],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout) == []


@pytest.mark.restic
def test_unreadable_files_exit_3_and_snapshot_is_saved(tmp_path, repo_path, corestate, restic):
    src = tmp_path / "src"
    (src / "locked-dir").mkdir(parents=True)
    (src / "ok.txt").write_text("readable\n")
    (src / "secret.txt").write_text("unreadable\n")
    (src / "locked-dir" / "inside").write_text("x")
    os.chmod(src / "secret.txt", 0)
    os.chmod(src / "locked-dir", 0)
    proc = corestate("backup", str(src), "--repo", str(repo_path), "--json", check=False,
                     drop_dac=True)
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout)
    failed = {e["path"] for e in summary["errors"]}
    assert failed == {str(src / "secret.txt"), str(src / "locked-dir")}
    assert "secret.txt" in proc.stderr and "Permission denied" in proc.stderr
    restic("-r", str(repo_path), "check", "--read-data")
    listing = restic("-r", str(repo_path), "ls", "latest").stdout
    assert f"{src}/ok.txt" in listing and "secret.txt" not in listing


@pytest.mark.restic
@pytest.mark.parametrize("packs_before_kill", [0, 2, 6])
def test_kill_during_backup_then_resume(tmp_path, repo_path, corestate, restic, packs_before_kill):
    src = tmp_path / "src"
    src.mkdir()
    rng_seed = 7
    import random
    rng = random.Random(rng_seed)
    for i in range(12):
        (src / f"f{i}").write_bytes(rng.randbytes(16 * 1024 * 1024))
    env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD}
    proc = subprocess.Popen([sys.executable, "-m", "corestate", "backup", str(src),
                             "--repo", str(repo_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data_dir = repo_path / "data"

    def packs() -> set[str]:  # durable packs, not the temporary files being written
        return {f for _, _, files in os.walk(data_dir) for f in files if not f.startswith(".")}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once some packs are durable
        if len(packs()) >= packs_before_kill:
            break
        time.sleep(0.01)
    if packs_before_kill == 0:
        time.sleep(0.3)  # somewhere in start-up: lock, index, first reads
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    packs_before = packs()
    assert len(packs_before) >= packs_before_kill
    assert not list((repo_path / "snapshots").iterdir())
    # consistent even with no snapshot yet (restic leaves the dead process's lock to unlock)
    restic("-r", str(repo_path), "check", "--no-lock")
    # the lock left behind belongs to a dead process: stale, so the next backup runs
    out = json.loads(corestate("backup", str(src), "--repo", str(repo_path), "--json").stdout)
    if packs_before:
        assert out["data_added"] < 12 * 16 * 1024 * 1024, "packs written before the kill were not reused"
    restic("-r", str(repo_path), "check", "--read-data")
    target = tmp_path / "out"
    corestate("restore", "latest", "--target", str(target), "--repo", str(repo_path))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)


def test_very_deep_tree(tmp_path, repo_path, corestate):
    src = tmp_path / "src"
    deep = os.fsencode(str(src))
    os.mkdir(deep)
    fd = os.open(deep, os.O_RDONLY)
    depth = 1500  # beyond Python's default recursion limit
    for _ in range(depth):
        os.mkdir(b"d", dir_fd=fd)
        nfd = os.open(b"d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open(b"leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write("bottom")
    os.close(fd)
    corestate("backup", str(src), "--repo", str(repo_path))
    target = tmp_path / "out"
    corestate("restore", "latest", "--target", str(target), "--repo", str(repo_path))
    leaf = os.fsencode(str(restored_root(target, src))) + b"/d" * depth + b"/leaf"
    with open(leaf, "rb") as f:
        assert f.read() == b"bottom"
    for top in (os.fsencode(str(src)), os.fsencode(str(restored_root(target, src)))):
        _remove_deep(top, depth)  # pytest's recursive clean-up would overflow on it


def _remove_deep(top: bytes, depth: int) -> None:
    os.unlink(top + b"/d" * depth + b"/leaf")
    for level in range(depth, 0, -1):
        os.rmdir(top + b"/d" * level)


@pytest.mark.restic
def test_file_over_4_gib(tmp_path, repo_path, corestate, restic):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.img"
    with open(big, "wb") as f:  # sparse: 4.5 GiB logical, a few KiB on disk
        f.truncate(4608 * 1024 * 1024)
        f.seek(4600 * 1024 * 1024)
        f.write(b"beyond the 32-bit boundary")
    corestate("backup", str(src), "--repo", str(repo_path))
    restic("-r", str(repo_path), "check", "--read-data")
    target = tmp_path / "out"
    corestate("restore", "latest", "--target", str(target), "--repo", str(repo_path))
    out = restored_root(target, src) / "big.img"
    assert out.stat().st_size == big.stat().st_size
    with open(out, "rb") as f:
        f.seek(4600 * 1024 * 1024)
        assert f.read(26) == b"beyond the 32-bit boundary"
    assert out.stat().st_blocks * 512 < 64 * 1024 * 1024, "restore wrote the holes"
