"""One damaged snapshot file does not hide the others: listing commands warn, naming it,
and go on with the intact ones, as restic does."""

from __future__ import annotations

import json
import os

import pytest


def _two_snapshots(tmp_path, corestate, damage):
    repo = tmp_path / "repo"
    corestate("init", "--repo", str(repo))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first\n")
    old = json.loads(corestate("backup", str(src), "--repo", str(repo), "--json").stdout)
    (src / "a.txt").write_text("second\n")
    new = json.loads(corestate("backup", str(src), "--repo", str(repo), "--json").stdout)
    path = repo / "snapshots" / old["snapshot_id"]
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    return repo, src, old["snapshot_id"], new["snapshot_id"]


@pytest.mark.restic
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_snapshots_lists_the_intact_ones_and_names_the_damaged(tmp_path, corestate, restic, damage):
    repo, src, old, new = _two_snapshots(tmp_path, corestate, damage)
    oracle = restic("-r", str(repo), "snapshots", "--json", "--no-cache", "--no-lock")
    assert [s["id"] for s in json.loads(oracle.stdout)] == [new]
    assert old[:8] in oracle.stderr
    proc = corestate("snapshots", "--json", "--repo", str(repo))
    assert [s["id"] for s in json.loads(proc.stdout)] == [new]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: snapshot {old[:8]} skipped")
    target = tmp_path / "out"
    proc = corestate("restore", "latest", "--target", str(target), "--repo", str(repo))
    assert old[:8] in proc.stderr
    assert (target / str(src).lstrip("/") / "a.txt").read_text() == "second\n"
    for command in (["ls", "latest"], ["find", "a.txt"], ["stats"]):
        proc = corestate(*command, "--repo", str(repo))
        assert f"warning: snapshot {old[:8]} skipped" in proc.stderr, command


@pytest.mark.restic
def test_prune_refuses_until_the_damaged_snapshot_is_forgotten(tmp_path, corestate, restic):
    repo, _, old, new = _two_snapshots(tmp_path, corestate, "flip")
    proc = corestate("prune", "--repo", str(repo), check=False)
    assert proc.returncode == 1 and old[:16] in proc.stderr and "Traceback" not in proc.stderr
    assert "`corestate forget ID` removes its file" in proc.stderr
    # a policy leaves the damaged file alone, with a warning (restic's behaviour) ...
    kept = corestate("forget", "--keep-last", "1", "--repo", str(repo))
    assert f"warning: snapshot {old[:8]} skipped" in kept.stderr
    assert os.path.exists(repo / "snapshots" / old)
    # ... and naming it removes it; then prune and restic's check are content
    gone = corestate("forget", old[:8], "--repo", str(repo))
    assert f"snapshot {old[:8]} cannot be loaded" in gone.stderr
    assert os.listdir(repo / "snapshots") == [new]
    corestate("prune", "--repo", str(repo))
    restic("-r", str(repo), "check", "--read-data")
