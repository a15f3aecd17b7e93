"""CoreState's sidecar (bitmaps, ordinal table) is rebuildable: when it cannot be
written after the snapshot is saved, the backup warns and succeeds."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import restored_root, tree_manifest


@pytest.mark.restic
def test_a_sidecar_that_cannot_be_written_is_a_warning(tmp_path, repo_path, corestate, restic):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    sidecar = repo_path / "corestate"
    os.chmod(sidecar, 0o500)  # as good as a full disk for these writes
    try:
        proc = corestate("backup", str(src), "--repo", str(repo_path), "--json", check=False,
                         drop_dac=True)
    finally:
        os.chmod(sidecar, 0o700)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    snap = summary["snapshot_id"]
    assert [w.split(" (")[0] for w in summary["warnings"]] == [
        "the blob ordinal table was not saved",
        f"snapshot {snap[:8]} was saved, but not its blob bitmap"]
    assert f"warning: snapshot {snap[:8]} was saved, but not its blob bitmap" in proc.stderr
    assert "permission denied" in proc.stderr
    restic("-r", str(repo_path), "check", "--read-data")
    # everything that uses the sidecar rebuilds what is missing
    (src / "b.bin").write_bytes(os.urandom(100_000))
    corestate("backup", str(src), "--repo", str(repo_path))
    corestate("forget", snap, "--prune", "--repo", str(repo_path))
    restic("-r", str(repo_path), "check", "--read-data")
    corestate("restore", "latest", "--target", str(tmp_path / "out"), "--repo", str(repo_path))
    assert tree_manifest(restored_root(tmp_path / "out", src)) == tree_manifest(src)
