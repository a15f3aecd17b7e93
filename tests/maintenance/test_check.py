"""check: a clean repository passes; each kind of damage is found and named."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from corestate.maintenance.check import check, expected_pack_size
from corestate.repository.backend import Kind, object_path
from corestate.repository.index import index_to_json
from corestate.repository.pack import BlobType, PackBuilder, seal_blob
from corestate.repository.repository import Repository
from tests.maintenance.scenario import RESTIC, new_repo, reopen, restic, snap, write_files

BIG = os.urandom(300_000)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, {"big.bin": BIG, "docs/note.txt": b"a note\n", "empty": b""})
    snap(repo, src)
    write_files(src, {"docs/second.txt": b"second\n"})
    snap(repo, src)
    return reopen(repo)


def pack_of(repo: Repository, btype: BlobType) -> tuple[str, list]:  # type: ignore[type-arg]
    repo.load_index()
    for pack_id, entries in repo.index.packs.items():
        if entries[0].type == btype and any(e.length > 1000 for e in entries):
            return pack_id, entries
    for pack_id, entries in repo.index.packs.items():
        if entries[0].type == btype:
            return pack_id, entries
    raise AssertionError(f"no {btype} pack")


def path_of(repo: Repository, pack_id: str) -> Path:
    return Path(repo.backend.location()) / object_path(Kind.DATA, pack_id)


def test_a_clean_repository_passes_with_and_without_read_data(repo: Repository) -> None:
    plain = check(repo)
    assert plain.ok and plain.errors == [] and plain.notes == []
    assert plain.snapshots == 2 and plain.index_files >= 1 and plain.trees > 0
    full = check(reopen(repo), read_data=True)
    assert full.ok
    assert full.packs_read == full.packs > 0
    assert full.blobs_read == len(repo.load_index())


def test_expected_pack_size_matches_every_stored_pack(repo: Repository) -> None:
    repo.load_index()
    for pack_id, entries in repo.index.packs.items():
        assert repo.backend.stat(Kind.DATA, pack_id).size == expected_pack_size(entries)


def test_a_flipped_bit_is_found_by_read_data_naming_pack_blob_and_file(repo: Repository) -> None:
    pack_id, entries = pack_of(repo, BlobType.DATA)
    victim = max(entries, key=lambda e: e.length)
    path = path_of(repo, pack_id)
    data = bytearray(path.read_bytes())
    data[victim.offset + victim.length // 2] ^= 0x10
    path.write_bytes(bytes(data))

    assert check(reopen(repo)).ok  # like restic, plain check does not read blob bytes
    report = check(reopen(repo), read_data=True)
    assert not report.ok
    kinds = {p.kind for p in report.errors}
    assert {"pack-hash", "blob"} <= kinds
    blob_problem = next(p for p in report.errors if p.kind == "blob")
    assert blob_problem.pack == pack_id
    assert blob_problem.blobs == [victim.id]
    assert pack_id[:16] in blob_problem.message and victim.id.hex()[:16] in blob_problem.message
    assert any(path.endswith(b"/big.bin") for _, path in blob_problem.users)


@pytest.mark.restic
@pytest.mark.skipif(RESTIC is None, reason="restic is not installed")
def test_restic_agrees_about_the_flipped_bit(repo: Repository) -> None:
    pack_id, entries = pack_of(repo, BlobType.DATA)
    victim = max(entries, key=lambda e: e.length)
    path = path_of(repo, pack_id)
    data = bytearray(path.read_bytes())
    data[victim.offset + 40] ^= 0x01
    path.write_bytes(bytes(data))
    assert restic(repo, "check").returncode == 0
    assert restic(repo, "check", "--read-data", check=False).returncode != 0
    assert not check(reopen(repo), read_data=True).ok


def test_a_truncated_pack_is_found_without_reading_data(repo: Repository) -> None:
    pack_id, entries = pack_of(repo, BlobType.DATA)
    path = path_of(repo, pack_id)
    path.write_bytes(path.read_bytes()[:-100])
    report = check(reopen(repo))
    size_errors = [p for p in report.errors if p.kind == "pack-size"]
    assert len(size_errors) == 1 and size_errors[0].pack == pack_id
    assert set(size_errors[0].blobs) == {e.id for e in entries}
    assert size_errors[0].users  # the files that need it are named
    full = check(reopen(repo), read_data=True)
    assert {"pack-size", "pack-hash", "pack-header"} <= {p.kind for p in full.errors}


def test_a_missing_tree_pack_breaks_snapshots(repo: Repository) -> None:
    pack_id, _ = pack_of(repo, BlobType.TREE)
    repo.backend.delete(Kind.DATA, pack_id)
    report = check(reopen(repo))
    kinds = [p.kind for p in report.errors]
    assert "pack-missing" in kinds and "tree" in kinds
    assert next(p for p in report.errors if p.kind == "pack-missing").pack == pack_id


def test_an_unindexed_pack_is_a_note_not_an_error(repo: Repository) -> None:
    builder = PackBuilder(BlobType.DATA)
    blob = os.urandom(500)
    builder.add(seal_blob(repo.key, hashlib.sha256(blob).digest(), BlobType.DATA, blob, None))
    pack_id, data, _ = builder.finish(repo.key)
    repo.backend.write(Kind.DATA, pack_id, data)
    report = check(reopen(repo), read_data=True)
    assert report.ok
    assert [(n.kind, n.pack) for n in report.notes] == [("unindexed-pack", pack_id)]


def test_blobs_missing_from_the_index_are_named_with_their_file(repo: Repository) -> None:
    pack_id, entries = pack_of(repo, BlobType.DATA)
    # Rewrite the index without that pack: its blobs are stored but unindexed.
    remaining = {p: e for p, e in repo.index.packs.items() if p != pack_id}
    old = [f.name for f in repo.backend.list(Kind.INDEX)]
    repo.save_json(Kind.INDEX, index_to_json(remaining, old))
    for name in old:
        repo.backend.delete(Kind.INDEX, name)
    report = check(reopen(repo))
    assert [(n.kind, n.pack) for n in report.notes] == [("unindexed-pack", pack_id)]
    assert report.errors and all(p.kind == "missing-blob" for p in report.errors)
    big = [p for p in report.errors if p.path is not None and p.path.endswith(b"/big.bin")]
    assert big and set(big[0].blobs) <= {e.id for e in entries}


def test_a_damaged_index_file_is_reported_and_the_rest_still_checked(repo: Repository) -> None:
    names = sorted(f.name for f in repo.backend.list(Kind.INDEX))
    victim = Path(repo.backend.location()) / "index" / names[0]
    victim.write_bytes(b"garbage" * 10)
    report = check(reopen(repo))
    index_errors = [p for p in report.errors if p.kind == "index"]
    assert len(index_errors) == 1 and names[0][:16] in index_errors[0].message
    assert report.index_files == len(names)
