"""The central promise: what corestate backs up, restic verifies and restores exactly,
and corestate restores exactly too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import restored_root, tree_manifest

pytestmark = pytest.mark.restic


def test_restic_checks_and_restores_what_corestate_wrote(tmp_path, rich_tree, repo_path,
                                                         corestate, restic):
    corestate("backup", str(rich_tree), "--repo", str(repo_path))
    restic("-r", str(repo_path), "check", "--read-data")
    target = tmp_path / "restic-out"
    restic("-r", str(repo_path), "restore", "latest", "--target", str(target))
    got = tree_manifest(restored_root(target, rich_tree))
    want = tree_manifest(rich_tree)
    assert got == want
    # the snapshot tree nests the absolute path, as restic's own snapshots do
    listing = restic("-r", str(repo_path), "ls", "latest").stdout
    assert f"{rich_tree}/docs/a.txt" in listing


def test_corestate_restores_exactly(tmp_path, rich_tree, repo_path, corestate):
    corestate("backup", str(rich_tree), "--repo", str(repo_path))
    target = tmp_path / "out"
    corestate("restore", "latest", "--target", str(target), "--repo", str(repo_path))
    root = restored_root(target, rich_tree)
    assert tree_manifest(root) == tree_manifest(rich_tree)
    sparse = os.stat(root / "sparse.img")
    # only the one 8 MiB chunk holding data is written; the all-zero chunks stay holes
    assert sparse.st_blocks * 512 <= 9 * 1024 * 1024 < sparse.st_size, "restored dense"


def test_second_backup_reads_nothing_unchanged(tmp_path, rich_tree, repo_path, corestate):
    first = json.loads(corestate("backup", str(rich_tree), "--repo", str(repo_path),
                                 "--json").stdout)
    second = json.loads(corestate("backup", str(rich_tree), "--repo", str(repo_path),
                                  "--json").stdout)
    assert first["files_new"] > 0 and first["data_added"] > 0
    assert second["parent"] == first["snapshot_id"]
    assert second["files_new"] == second["files_changed"] == 0
    assert second["files_unmodified"] == first["files_new"]
    assert second["data_blobs"] == 0  # (data_added, as restic's, counts changed trees too)
    # a touched file is read again, and only its data is new
    (rich_tree / "setuid-prog").write_text("#!/bin/sh\necho changed\n")
    third = json.loads(corestate("backup", str(rich_tree), "--repo", str(repo_path),
                                 "--json").stdout)
    assert third["files_changed"] == 1
    assert third["data_blobs"] == 1 and 0 < third["data_added"]


def test_restore_a_repository_restic_wrote(tmp_path, rich_tree, corestate, restic):
    repo = tmp_path / "restic-repo"
    restic("init", "--repo", str(repo))
    restic("-r", str(repo), "backup", str(rich_tree))
    target = tmp_path / "out"
    corestate("restore", "latest", "--target", str(target), "--repo", str(repo))
    assert tree_manifest(restored_root(target, rich_tree)) == tree_manifest(rich_tree)
    # and corestate can add to it: restic still checks it afterwards
    (rich_tree / "new.txt").write_text("added by corestate\n")
    corestate("backup", str(rich_tree), "--repo", str(repo))
    restic("-r", str(repo), "check", "--read-data")
    snaps = json.loads(restic("-r", str(repo), "snapshots", "--json").stdout)
    assert len(snaps) == 2


def test_excludes_and_tags(tmp_path, rich_tree, repo_path, corestate):
    out = corestate("backup", str(rich_tree), "--repo", str(repo_path), "--exclude", "*.bin",
                    "--exclude", f"{rich_tree}/deep", "--tag", "nightly", "--json").stdout
    snap_id = json.loads(out)["snapshot_id"]
    snaps = json.loads(corestate("snapshots", "--json", "--repo", str(repo_path)).stdout)
    assert snaps[0]["id"] == snap_id and snaps[0]["tags"] == ["nightly"]
    assert set(snaps[0]) >= {"id", "short_id", "time", "paths", "hostname", "tags"}
    target = tmp_path / "out"
    corestate("restore", snap_id, "--target", str(target), "--repo", str(repo_path))
    root = restored_root(target, rich_tree)
    assert (root / "docs" / "a.txt").exists()
    assert not (root / "docs" / "deep" / "b.bin").exists()
    assert not (root / "deep").exists()


def test_several_paths_share_one_tree(tmp_path, rich_tree, repo_path, corestate, restic):
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    corestate("backup", str(rich_tree / "docs"), str(other), "--repo", str(repo_path))
    listing = restic("-r", str(repo_path), "ls", "latest").stdout.splitlines()
    assert f"{rich_tree}/docs/a.txt" in listing and f"{other}/x" in listing
    assert f"{rich_tree}/empty" not in listing
