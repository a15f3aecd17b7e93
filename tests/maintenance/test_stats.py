"""stats: restore-size and raw-data, checked against a tree walk and the real restic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corestate.maintenance import usage
from corestate.maintenance.stats import raw_data, repository_totals, restore_size, stats
from corestate.repository.backend import Kind
from corestate.repository.crypto import OVERHEAD
from corestate.repository.repository import Repository
from tests.maintenance.scenario import RESTIC, new_repo, reopen, restic_json, snap, write_files


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Repository, list[str]]:
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, {"a.txt": b"hello\n", "d/b.bin": os.urandom(400_000),
                      "d/e/zeros": bytes(200_000)})
    os.link(src / "a.txt", src / "hardlink.txt")
    os.symlink("a.txt", src / "link")
    s1 = snap(repo, src)
    write_files(src, {"c.txt": b"new file\n", "d/b.bin": os.urandom(100_000)})
    s2 = snap(repo, src)
    return reopen(repo), [s1, s2]


def walked_raw_data(repo: Repository, snap_ids: list[str]) -> tuple[int, int, int]:
    blobs: set[bytes] = set()
    for sid in snap_ids:
        blobs |= usage.tree_blob_ids(repo, repo.load_snapshot(sid).tree)
    locs = [repo.index.lookup(b) for b in blobs]
    assert all(loc is not None for loc in locs)
    return (len(blobs), sum(loc.blob.length for loc in locs if loc),
            sum(loc.blob.plaintext_length + OVERHEAD for loc in locs if loc))


def test_raw_data_from_bitmaps_equals_a_tree_walk(repo: tuple[Repository, list[str]],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    r, ids = repo
    r.load_index()
    expected = walked_raw_data(r, ids)
    snaps = [r.load_snapshot(s) for s in ids]

    def no_walking(*args: object) -> set[bytes]:
        raise AssertionError("raw-data walked trees although the bitmaps are valid")

    monkeypatch.setattr(usage, "tree_blob_ids", no_walking)
    assert raw_data(r, snaps) == expected
    monkeypatch.undo()
    r.backend.delete(Kind.SIDECAR, f"bitmap-{ids[0]}")  # falls back to the trees
    assert raw_data(reopen(r), snaps) == expected
    one = raw_data(reopen(r), snaps[1:])
    assert one == walked_raw_data(r, ids[1:]) and one[0] < expected[0]


def test_restore_size_counts_nodes_and_hardlinks_once(repo: tuple[Repository, list[str]],
                                                      tmp_path: Path) -> None:
    r, ids = repo
    size, count = restore_size(r, [r.load_snapshot(ids[0])])
    assert size == 6 + 400_000 + 200_000  # hardlink.txt shares a.txt's inode
    depth = len(Path(str(tmp_path / "src")).parts) - 1  # directories above src, src included
    assert count == depth + 7  # a.txt, d, d/b.bin, d/e, d/e/zeros, hardlink.txt, link


def test_stats_json_and_repository_totals(repo: tuple[Repository, list[str]]) -> None:
    r, ids = repo
    result = stats(r, r.list_snapshots(), "raw-data").to_json()
    assert {"total_size", "total_file_count", "total_blob_count", "total_uncompressed_size",
            "compression_ratio", "snapshots_count", "repository"} <= set(result)
    assert result["compression_ratio"] > 1.2  # 200 kB of zeros compress well
    totals = repository_totals(r)
    assert totals.packs == len(list(r.backend.list(Kind.DATA)))
    assert totals.blobs == len(r.index) == totals.data_blobs + totals.tree_blobs
    assert totals.pack_bytes > totals.stored_bytes
    with pytest.raises(ValueError):
        stats(r, [], "bogus")


@pytest.mark.restic
@pytest.mark.skipif(RESTIC is None, reason="restic is not installed")
@pytest.mark.parametrize("mode", ["restore-size", "raw-data"])
def test_stats_agree_with_restic(repo: tuple[Repository, list[str]], mode: str) -> None:
    r, ids = repo
    for args, snaps in (([], r.list_snapshots()), ([ids[1]], [r.load_snapshot(ids[1])])):
        theirs = restic_json(r, "stats", "--mode", mode, *args)
        ours = stats(reopen(r), snaps, mode).to_json()
        assert isinstance(theirs, dict)
        assert ours["total_size"] == theirs["total_size"]
        assert ours["snapshots_count"] == theirs["snapshots_count"]
        if mode == "restore-size":
            assert ours["total_file_count"] == theirs["total_file_count"]
        else:
            assert ours["total_blob_count"] == theirs["total_blob_count"]
