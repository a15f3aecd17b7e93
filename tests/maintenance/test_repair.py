"""repair index and repair snapshots mend what check reports; the real restic checks
the result."""

from __future__ import annotations

import json
import os

import pytest

from corestate.connectors.local import LocalBackend
from corestate.repository.backend import Kind
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from tests.conftest import PASSWORD, restored_root, tree_manifest
from tests.repository.forge import file_node, forge_snapshot, new_repo, store_blobs

pytestmark = pytest.mark.restic


def _data_packs(repo_path):
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD)
    repo.load_index()
    return {p for p, entries in repo.index.packs.items() if entries[0].type == BlobType.DATA}


def _two_backups(tmp_path, corestate):
    repo = tmp_path / "repo"
    corestate("init", "--repo", str(repo))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(200_000))
    corestate("backup", str(src), "--repo", str(repo))
    before = _data_packs(repo)
    (src / "b.bin").write_bytes(os.urandom(300_000))
    second = json.loads(corestate("backup", str(src), "--repo", str(repo), "--json").stdout)
    (b_pack,) = _data_packs(repo) - before
    return repo, src, second["snapshot_id"], b_pack


def test_repair_index_rebuilds_a_lost_or_damaged_index(tmp_path, corestate, restic):
    repo, src, _, _ = _two_backups(tmp_path, corestate)
    first, *rest = sorted((repo / "index").iterdir())
    first.unlink()
    for other in rest:
        other.write_bytes(b"garbage")
    assert corestate("check", "--repo", str(repo), check=False).returncode == 1
    proc = corestate("repair", "index", "--repo", str(repo), "--json")
    report = json.loads(proc.stdout)
    assert len(report["index_files_dropped"]) == len(rest) and report["packs_skipped"] == []
    assert len(report["packs_added"]) == len(list((repo / "data").rglob("*")) ) - 256
    corestate("check", "--read-data", "--repo", str(repo))
    restic("-r", str(repo), "check", "--read-data")
    corestate("restore", "latest", "--target", str(tmp_path / "out"), "--repo", str(repo))
    assert tree_manifest(restored_root(tmp_path / "out", src)) == tree_manifest(src)


def test_repair_snapshots_drops_what_references_missing_data(tmp_path, corestate, restic):
    repo, src, second, b_pack = _two_backups(tmp_path, corestate)
    (repo / "data" / b_pack[:2] / b_pack).unlink()
    report = json.loads(corestate("repair", "index", "--repo", str(repo), "--json").stdout)
    assert report["packs_forgotten"] == [b_pack]
    check = corestate("check", "--repo", str(repo), check=False)
    assert check.returncode == 1 and "data blobs not in the index" in check.stderr
    assert restic("-r", str(repo), "check", check=False).returncode == 1
    proc = corestate("repair", "snapshots", "--forget", "--repo", str(repo))
    assert f"snapshot {second[:8]} {src}/b.bin: " in proc.stdout
    assert f"snapshot {second[:8]} repaired as " in proc.stdout
    assert "(original removed)" in proc.stdout
    corestate("check", "--read-data", "--repo", str(repo))
    restic("-r", str(repo), "check", "--read-data")
    snaps = json.loads(corestate("snapshots", "--json", "--repo", str(repo)).stdout)
    assert second not in [s["id"] for s in snaps] and snaps[-1]["tags"] == ["repaired"]
    target = tmp_path / "out"
    restic("-r", str(repo), "restore", "latest", "--target", str(target))
    out = restored_root(target, src)
    assert (out / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert (out / "b.bin").read_bytes() == b""  # its content is gone; the file is kept
    corestate("prune", "--repo", str(repo))
    restic("-r", str(repo), "check", "--read-data")


def test_repair_snapshots_drops_entries_restic_cannot_read(tmp_path, corestate, restic):
    repo = new_repo(tmp_path / "repo")
    ok, bad = store_blobs(repo, BlobType.DATA, [b"fine\n", b"bad\n"])
    snap = forge_snapshot(repo, [file_node("", [bad], 4), file_node("bad\\x4", [bad], 4),
                                 file_node("ok.txt", [ok], 5), file_node("ok.txt", [ok], 5)])
    location = repo.backend.location()
    assert restic("-r", location, "check", check=False).returncode == 1
    dry = corestate("repair", "snapshots", "--dry-run", "--repo", location)
    assert f"snapshot {snap[:8]} would be repaired" in dry.stdout
    assert os.listdir(os.path.join(location, "snapshots")) == [snap]
    proc = corestate("repair", "snapshots", "--forget", "--repo", location)
    assert proc.stdout.count("entry dropped") == 3
    restic("-r", location, "check", "--read-data")
    corestate("check", "--repo", location)
    listing = corestate("ls", "latest", "--repo", location).stdout.splitlines()
    assert listing[1:] == ["/ok.txt"]
    assert [f.name for f in LocalBackend(location).list(Kind.SNAPSHOTS)] != [snap]
