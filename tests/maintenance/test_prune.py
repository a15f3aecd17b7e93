"""prune: frees space, keeps every live blob, refuses under a lock, survives being
killed, and leaves a repository the real restic checks and restores."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import orjson
import pytest

from corestate.errors import NotFoundError, RepositoryLockedError
from corestate.maintenance import prune as prunemod
from corestate.maintenance import usage
from corestate.maintenance.check import check
from corestate.maintenance.forget import Policy, forget
from corestate.maintenance.prune import PruneAborted, PruneOptions, prune
from corestate.repository import ordinals
from corestate.repository.backend import Kind, object_path
from corestate.repository.pack import BlobType, PackBuilder, seal_blob
from corestate.repository.repository import Repository
from corestate.repository.timefmt import format_time
from tests.maintenance.scenario import (RESTIC, all_files, data_bytes, file_names, new_repo,
                                        reopen, restic, snap, write_files)

MiB = 1024 * 1024


def three_generations(tmp_path: Path) -> tuple[Repository, Path, list[str]]:
    """s1: a, big1; s2: big1 gone, big2 added, a changed; s3: small change."""
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"first\n", "big1.bin": os.urandom(3 * MiB),
                      "keep/same.bin": os.urandom(600_000), "keep/link": b"x"})
    s1 = snap(repo, src)
    write_files(src, {"big1.bin": None, "big2.bin": os.urandom(2 * MiB), "a.txt": b"second\n"})
    s2 = snap(repo, src)
    write_files(src, {"c.txt": b"third\n"})
    s3 = snap(repo, src)
    return reopen(repo), src, [s1, s2, s3]


def restore_with_restic(repo: Repository, snap_id: str, target: Path, src: Path) -> dict[str, str]:
    restic(repo, "restore", snap_id, "--target", str(target))
    return all_files(target / str(src).lstrip("/"))


@pytest.mark.restic
@pytest.mark.skipif(RESTIC is None, reason="restic is not installed")
def test_forget_and_prune_free_space_and_restic_still_checks_and_restores(tmp_path: Path) -> None:
    repo, src, (s1, s2, s3) = three_generations(tmp_path)
    before = data_bytes(repo)
    with repo.locked(exclusive=True):
        result = forget(repo, Policy(last=1))
        assert sorted(result.removed) == sorted([s1, s2])
        report = prune(repo, lock=False)
    assert report.packs_deleted or report.packs_repacked
    after = data_bytes(reopen(repo))
    assert after == report.bytes_after
    assert before - after > 2.9 * MiB  # big1 (3 MiB) was only in s1
    assert report.bytes_freed == before - after
    restic(repo, "check", "--read-data")
    assert restore_with_restic(repo, s3, tmp_path / "r3", src) == all_files(src)
    assert check(reopen(repo), read_data=True).ok
    assert file_names(repo, Kind.INDEX) and not restic(repo, "list", "locks").stdout.strip()


@pytest.mark.restic
@pytest.mark.skipif(RESTIC is None, reason="restic is not installed")
def test_remaining_snapshots_restore_byte_identically(tmp_path: Path) -> None:
    repo, src, (s1, s2, s3) = three_generations(tmp_path)
    expected = {s: restore_with_restic(repo, s, tmp_path / f"before-{s[:8]}", src) for s in (s1, s3)}
    repo.backend.delete(Kind.SNAPSHOTS, s2)
    before = data_bytes(repo)
    prune(repo)
    assert data_bytes(repo) < before  # s2's own trees are gone
    restic(repo, "check", "--read-data")
    for s in (s1, s3):
        assert restore_with_restic(repo, s, tmp_path / f"after-{s[:8]}", src) == expected[s]


def test_prune_of_an_unchanged_repository_changes_nothing(tmp_path: Path) -> None:
    repo, _, _ = three_generations(tmp_path)
    prune(repo)  # first run may combine small packs
    files = (file_names(repo, Kind.DATA), file_names(repo, Kind.INDEX))
    report = prune(reopen(repo))
    assert report.packs_deleted == report.packs_repacked == report.packs_written == []
    assert (file_names(repo, Kind.DATA), file_names(repo, Kind.INDEX)) == files


def test_prune_refuses_while_a_live_shared_lock_is_held(tmp_path: Path) -> None:
    repo, _, (s1, _, _) = three_generations(tmp_path)
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    packs = file_names(repo, Kind.DATA)
    backup_in_progress = reopen(repo)
    with backup_in_progress.locked(exclusive=False):
        with pytest.raises(RepositoryLockedError, match="shared lock"):
            prune(reopen(repo))
    assert file_names(repo, Kind.DATA) == packs
    assert prune(reopen(repo)).bytes_freed > 2.9 * MiB  # the lock is gone: big1 goes


def test_a_stale_lock_does_not_block_prune(tmp_path: Path) -> None:
    repo, _, _ = three_generations(tmp_path)
    old = time.time_ns() - 3600 * 10**9
    repo.save_json(Kind.LOCKS, {"time": format_time(old), "exclusive": False,
                                "hostname": "elsewhere", "username": "u", "pid": 1})
    assert prune(reopen(repo)).snapshots == 3  # no RepositoryLockedError


def test_a_missing_bitmap_is_recomputed_from_trees_and_stored(tmp_path: Path) -> None:
    repo, _, (s1, s2, s3) = three_generations(tmp_path)
    repo.backend.delete(Kind.SIDECAR, f"bitmap-{s3}")
    report = prune(repo)
    assert report.bitmaps_recomputed == 1
    fresh = reopen(repo)
    fresh.load_index()
    table = ordinals.load_table(fresh)
    stored = ordinals.load_bitmap(fresh, s3, table)
    assert stored is not None
    assert set(table.resolve(stored)) == usage.tree_blob_ids(fresh, fresh.load_snapshot(s3).tree)
    assert check(fresh, read_data=True).ok


def test_prune_trusts_valid_bitmaps_instead_of_walking_trees(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _, (s1, _, _) = three_generations(tmp_path)
    repo.backend.delete(Kind.SNAPSHOTS, s1)

    def no_walking(*args: object) -> set[bytes]:
        raise AssertionError("walked trees although every bitmap is valid")

    monkeypatch.setattr(usage, "tree_blob_ids", no_walking)
    report = prune(repo)
    assert report.bitmaps_recomputed == 0 and report.blobs_removed > 0
    monkeypatch.undo()
    assert check(reopen(repo), read_data=True).ok


def test_prune_aborts_without_deleting_when_a_used_blob_is_missing(tmp_path: Path) -> None:
    repo, _, (s1, _, _) = three_generations(tmp_path)
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    repo.load_index()
    live_data_pack = next(p for p, e in repo.index.packs.items()
                          if e[0].type == BlobType.DATA and len(e) > 1)
    repo.backend.delete(Kind.DATA, live_data_pack)
    packs, index = file_names(repo, Kind.DATA), file_names(repo, Kind.INDEX)
    with pytest.raises(PruneAborted, match="nothing was deleted"):
        prune(reopen(repo))
    assert (file_names(repo, Kind.DATA), file_names(repo, Kind.INDEX)) == (packs, index)


def _orphan_pack(repo: Repository, payload: bytes) -> str:
    builder = PackBuilder(BlobType.DATA)
    builder.add(seal_blob(repo.key, hashlib.sha256(payload).digest(), BlobType.DATA, payload, None))
    pack_id, data, _ = builder.finish(repo.key)
    repo.backend.write(Kind.DATA, pack_id, data)
    return pack_id


def test_unused_unindexed_and_unreadable_packs_and_stale_temporaries_go(tmp_path: Path) -> None:
    repo, _, _ = three_generations(tmp_path)
    orphan = _orphan_pack(repo, os.urandom(1000))
    garbage = hashlib.sha256(b"garbage").hexdigest()
    repo.backend.write(Kind.DATA, garbage, b"garbage")
    root = Path(repo.backend.location())
    stale, fresh = root / "data" / "00" / ".tmp-stale", root / "index" / ".tmp-fresh"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    report = prune(reopen(repo))
    assert {orphan, garbage} <= set(report.packs_deleted)
    assert report.packs_damaged == [garbage] and set(report.packs_unindexed) == {orphan, garbage}
    assert not (file_names(repo, Kind.DATA) & {orphan, garbage})
    assert report.temporaries_removed == 1 and not stale.exists() and fresh.exists()
    result = check(reopen(repo), read_data=True)
    assert result.ok and result.notes == []


def test_a_used_pack_missing_from_the_index_is_indexed_again(tmp_path: Path) -> None:
    repo, src, _ = three_generations(tmp_path)
    for name in file_names(repo, Kind.INDEX):  # as if every index write was lost
        repo.backend.delete(Kind.INDEX, name)
    assert not check(reopen(repo)).ok
    report = prune(reopen(repo))
    assert report.packs_unindexed
    result = check(reopen(repo), read_data=True)
    assert result.ok and result.notes == []


def _two_packs(tmp_path: Path) -> tuple[Repository, str, Path]:
    """s1 holds old.bin in a data pack of its own; s2 does not use it."""
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, {"old.bin": os.urandom(MiB)})
    s1 = snap(repo, src)
    repo.load_index()
    old_pack = next(p for p, e in repo.index.packs.items() if e[0].type == BlobType.DATA)
    write_files(src, {"old.bin": None, "new.bin": os.urandom(MiB)})
    snap(repo, src)
    return reopen(repo), s1, Path(repo.backend.location()) / object_path(Kind.DATA, old_pack)


def test_a_used_pack_with_a_cut_header_is_salvaged(tmp_path: Path) -> None:
    repo, s1, path = _two_packs(tmp_path)
    path.write_bytes(path.read_bytes()[:-10])  # the blobs are intact, the header is not
    assert not check(reopen(repo)).ok
    report = prune(repo)
    assert path.name in report.packs_damaged and path.name in report.packs_repacked
    assert not path.exists()
    assert check(reopen(repo), read_data=True).ok


def test_a_used_truncated_pack_stops_prune_an_unused_one_is_deleted(tmp_path: Path) -> None:
    repo, s1, path = _two_packs(tmp_path)
    path.write_bytes(path.read_bytes()[:-5000])  # the last blob is cut off
    every = (file_names(repo, Kind.DATA), file_names(repo, Kind.INDEX))
    with pytest.raises(PruneAborted, match="no intact copy"):  # s1 still needs it
        prune(reopen(repo))
    assert path.exists()
    assert file_names(repo, Kind.INDEX) == every[1] and every[0] <= file_names(repo, Kind.DATA)
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    report = prune(reopen(repo))
    assert path.name in report.packs_damaged and path.name in report.packs_deleted
    assert not path.exists()
    result = check(reopen(repo), read_data=True)
    assert result.ok and result.notes == []


@pytest.mark.parametrize("killed_at", [Kind.INDEX, Kind.DATA])
def test_a_prune_killed_midway_leaves_a_consistent_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_at: Kind) -> None:
    repo, src, (s1, s2, s3) = three_generations(tmp_path)
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    victim = reopen(repo)
    real_delete = victim.backend.delete

    def dies(kind: Kind, name: str) -> None:
        if kind is killed_at:
            raise KeyboardInterrupt  # the process is killed before this delete
        real_delete(kind, name)

    monkeypatch.setattr(victim.backend, "delete", dies)
    with pytest.raises(KeyboardInterrupt):
        prune(victim)
    for lock in file_names(repo, Kind.LOCKS):  # a killed process leaves its lock behind
        repo.backend.delete(Kind.LOCKS, lock)
    assert check(reopen(repo), read_data=True).ok
    if RESTIC is not None:
        restic(repo, "check", "--read-data")
    prune(reopen(repo))
    result = check(reopen(repo), read_data=True)
    assert result.ok and result.notes == []


def test_dry_run_changes_nothing_but_reports_the_plan(tmp_path: Path) -> None:
    repo, _, (s1, _, _) = three_generations(tmp_path)
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    repo.backend.delete(Kind.SIDECAR, f"bitmap-{s1}")
    every = {k: file_names(repo, k) for k in (Kind.DATA, Kind.INDEX, Kind.SIDECAR)}
    report = prune(reopen(repo), PruneOptions(dry_run=True))
    assert report.dry_run and (report.packs_deleted or report.packs_repacked)
    assert report.bytes_freed > 2 * 1024 * 1024
    assert {k: file_names(repo, k) for k in every} == every
    real = prune(reopen(repo))
    assert real.packs_deleted == report.packs_deleted
    assert real.packs_repacked == report.packs_repacked


def test_index_files_list_what_they_supersede(tmp_path: Path) -> None:
    repo, _, (s1, _, _) = three_generations(tmp_path)
    old_index = file_names(repo, Kind.INDEX)
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    prune(repo)
    new_index = file_names(repo, Kind.INDEX)
    assert new_index and not new_index & old_index
    for name in new_index:
        doc = repo.load_json(Kind.INDEX, name)
        assert isinstance(doc, dict) and set(doc["supersedes"]) == old_index
    assert orjson.dumps(sorted(repo.index.files)) == orjson.dumps(sorted(new_index))


def test_orphaned_bitmaps_are_removed(tmp_path: Path) -> None:
    repo, _, (s1, _, _) = three_generations(tmp_path)
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    report = prune(repo)
    assert report.bitmaps_removed == 1 and f"bitmap-{s1}" not in repo.list_sidecar()
    with pytest.raises(NotFoundError):
        repo.load_sidecar(f"bitmap-{s1}")


def test_the_new_index_is_verified_before_anything_is_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, _, (s1, _, _) = three_generations(tmp_path)
    repo.backend.delete(Kind.SNAPSHOTS, s1)
    every = (file_names(repo, Kind.DATA), file_names(repo, Kind.INDEX))
    # A repack that silently loses what it should have copied must not cost data.
    monkeypatch.setattr(prunemod, "_repack", lambda *args: {})
    with pytest.raises(PruneAborted, match="would not be indexed"):
        prune(reopen(repo))
    assert (file_names(repo, Kind.DATA), file_names(repo, Kind.INDEX)) == every
