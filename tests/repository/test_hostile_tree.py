"""Trees a correct writer never makes: a name that is not validly quoted, and names a
restore must refuse (``..``, ``x/y``, empty, twice in one tree). Each damaged entry is
reported with its path; everything else in the snapshot still lists and restores."""

from __future__ import annotations

import json

import pytest

from corestate.repository.pack import BlobType
from tests.repository.forge import (dir_node, file_node, forge_snapshot, new_repo, store_blobs,
                                    store_tree)


def _damaged_repo(tmp_path):
    """One snapshot: /bad\\x4 (damaged name), /ok.txt, and /sub/inner.txt."""
    repo = new_repo(tmp_path / "repo")
    bad, ok, inner = store_blobs(repo, BlobType.DATA, [b"bad\n", b"fine\n", b"inner\n"])
    sub = store_tree(repo, [file_node("inner.txt", [inner], 6)])
    snap = forge_snapshot(repo, [file_node("bad\\x4", [bad], 4), file_node("ok.txt", [ok], 5),
                                 dir_node("sub", sub)])
    return repo, snap


@pytest.mark.parametrize("command", [["ls", "latest"], ["find", "*.txt"], ["stats"],
                                     ["diff", "SNAP", "SNAP2"], ["ls", "--json", "latest"]])
def test_listing_commands_report_the_damaged_entry_and_list_the_rest(tmp_path, corestate, command):
    repo, snap = _damaged_repo(tmp_path)
    other = forge_snapshot(repo, [], time_ns=1_600_000_000 * 10**9)  # older
    args = [{"SNAP": snap, "SNAP2": other}.get(a, a) for a in command]
    proc = corestate(*args, "--repo", repo.backend.location(), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if "damaged entry skipped" in ln]
    assert len(warning) == 1 and warning[0].startswith("warning: /bad\\x4: ")
    assert "is not validly quoted" in warning[0]
    assert proc.stderr.strip().splitlines()[-1] == (
        "corestate: error: 1 damaged entry was skipped (listed above); `corestate check` tells more")
    if command[0] in ("ls", "find"):
        assert "/ok.txt" in proc.stdout and "/sub/inner.txt" in proc.stdout
    if command[0] == "diff":
        assert "-    /ok.txt" in proc.stdout and "-    /sub/inner.txt" in proc.stdout
    if command[0] == "stats":
        assert "Total File Count:   3" in proc.stdout  # ok.txt, sub, sub/inner.txt


def test_restore_restores_the_healthy_siblings(tmp_path, corestate):
    repo, _ = _damaged_repo(tmp_path)
    target = tmp_path / "out"
    proc = corestate("restore", "latest", "--target", str(target), "--repo",
                     repo.backend.location(), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"warning: {target}/bad\\x4: damaged entry skipped" in proc.stderr
    assert (target / "ok.txt").read_bytes() == b"fine\n"
    assert (target / "sub" / "inner.txt").read_bytes() == b"inner\n"
    assert sorted(p.name for p in target.iterdir()) == ["ok.txt", "sub"]


@pytest.mark.restic
def test_check_reports_the_damaged_name_as_restic_does(tmp_path, corestate, restic):
    repo, _ = _damaged_repo(tmp_path)
    oracle = restic("-r", repo.backend.location(), "check", "--no-cache", check=False)
    assert oracle.returncode == 1 and "Unquote: invalid syntax" in oracle.stdout + oracle.stderr
    proc = corestate("check", "--repo", repo.backend.location(), "--json", check=False)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert [(e["kind"], e["path"]) for e in report["errors"]] == [("node", "/bad\\x4")]


@pytest.mark.restic
def test_check_reports_names_a_restore_must_refuse(tmp_path, corestate, restic):
    repo = new_repo(tmp_path / "repo")
    a, b = store_blobs(repo, BlobType.DATA, [b"one\n", b"two\n"])
    forge_snapshot(repo, [file_node("", [a], 4), file_node("..", [a], 4), file_node("ok", [b], 4),
                          file_node("ok", [b], 4), file_node("x/y", [a], 4)])
    # restic 0.14's check flags only the empty name; ours flags every one of them
    oracle = restic("-r", repo.backend.location(), "check", "--no-cache", check=False)
    assert oracle.returncode == 1 and "node with empty name" in oracle.stdout + oracle.stderr
    proc = corestate("check", "--repo", repo.backend.location(), check=False)
    assert proc.returncode == 1 and "check found 4 errors" in proc.stderr
    for what in ("unsafe entry: empty name", "unsafe entry: name '..' is not a file name",
                 "name 'ok' appears more than once", "unsafe entry: name 'x/y' contains '/'"):
        assert what in proc.stderr, what
    # and restore keeps refusing them: nothing lands outside the target
    target = tmp_path / "deep" / "out"
    proc = corestate("restore", "latest", "--target", str(target), "--repo",
                     repo.backend.location(), check=False)
    assert proc.returncode == 1 and "refusing unsafe name" in proc.stderr
    assert sorted(p.name for p in target.iterdir()) == ["ok"]
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["out"]
