"""diff: the change list and the blob summary, checked against the real restic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corestate.maintenance.diff import diff
from corestate.repository.repository import Repository
from tests.maintenance.scenario import RESTIC, new_repo, reopen, restic_json, snap, write_files


def make_pair(tmp_path: Path, type_change: bool = True) -> tuple[Repository, str, str, bytes]:
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, {"same.txt": b"same\n", "changed.txt": b"v1\n", "gone.txt": b"bye\n",
                      "olddir/x.txt": b"x\n", "olddir/sub/y.txt": b"y\n",
                      "big.bin": os.urandom(300_000)})
    if type_change:
        write_files(src, {"becomes_dir": b"I am a file\n"})
    s1 = snap(repo, src)
    write_files(src, {"changed.txt": b"v2, longer\n", "gone.txt": None, "olddir": None,
                      "newdir/n.txt": b"n\n", "added.txt": b"added\n"})
    if type_change:
        write_files(src, {"becomes_dir": None, "becomes_dir/inside.txt": b"in\n"})
    os.chmod(src / "same.txt", 0o600)
    s2 = snap(repo, src)
    return reopen(repo), s1, s2, os.fsencode(src)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Repository, str, str, bytes]:
    return make_pair(tmp_path)


def test_added_removed_modified_and_type_changes(pair: tuple[Repository, str, str, bytes]) -> None:
    repo, s1, s2, src = pair
    result = diff(repo, repo.load_snapshot(s1), repo.load_snapshot(s2))
    changes = [(c.modifier, c.path[len(src):]) for c in result.changes]
    assert changes == [
        ("+", b"/added.txt"),
        ("T", b"/becomes_dir/"),
        ("M", b"/changed.txt"),
        ("-", b"/gone.txt"),
        ("+", b"/newdir/"), ("+", b"/newdir/n.txt"),
        ("-", b"/olddir/"), ("-", b"/olddir/sub/"), ("-", b"/olddir/sub/y.txt"),
        ("-", b"/olddir/x.txt"),
    ]
    assert (result.added.files, result.added.dirs) == (2, 1)
    assert (result.removed.files, result.removed.dirs) == (3, 2)
    assert result.changed_files == 1
    assert result.blobs_added.data_blobs == 4  # changed, added, inside, n
    assert result.blobs_removed.data_blobs == 5  # v1, bye, x, y, "I am a file"
    assert result.blobs_added.bytes > 0 and result.blobs_added.stored_bytes > 0


def test_metadata_changes_only_with_metadata(pair: tuple[Repository, str, str, bytes]) -> None:
    repo, s1, s2, src = pair
    a, b = repo.load_snapshot(s1), repo.load_snapshot(s2)
    assert "U" not in {c.modifier for c in diff(repo, a, b).changes}
    with_meta = {c.path[len(src):]: c.modifier for c in diff(repo, a, b, metadata=True).changes}
    assert with_meta[b"/same.txt"] == "U"
    assert with_meta[b"/"] == "U"  # src itself: its entries changed, so did its mtime


def test_a_snapshot_compared_with_itself_has_no_changes(pair: tuple[Repository, str, str, bytes]) -> None:
    repo, s1, _, _ = pair
    a = repo.load_snapshot(s1)
    result = diff(repo, a, a)
    assert result.changes == [] and result.blobs_added.data_blobs == 0
    assert result.blobs_removed.tree_blobs == 0


@pytest.mark.restic
@pytest.mark.skipif(RESTIC is None, reason="restic is not installed")
@pytest.mark.parametrize("type_change", [False, True])
def test_restic_reports_the_same(tmp_path: Path, type_change: bool) -> None:
    repo, s1, s2, _ = make_pair(tmp_path, type_change)
    lines = restic_json(repo, "diff", s1, s2)
    assert isinstance(lines, list)
    theirs = [(x["modifier"], x["path"]) for x in lines if x["message_type"] == "change"]
    stats = next(x for x in lines if x["message_type"] == "statistics")
    ours = diff(repo, repo.load_snapshot(s1), repo.load_snapshot(s2)).to_json()
    assert [(c["modifier"], c["path"]) for c in ours["changes"]] == theirs  # type: ignore[index, union-attr]
    assert ours["changed_files"] == stats["changed_files"]
    missed_by_restic = {"data_blobs": 1, "bytes": 3}
    for side in ("added", "removed"):
        for key in ("files", "dirs", "others", "data_blobs", "tree_blobs", "bytes"):
            if type_change and side == "added" and key in missed_by_restic:
                # restic 0.14 does not descend into a directory that replaced a file, so
                # it misses becomes_dir/inside.txt's blob ("in\n"); the bitmaps do not.
                assert ours[side][key] == stats[side][key] + missed_by_restic[key]
                continue
            assert ours[side][key] == stats[side][key], (side, key)  # type: ignore[index]
