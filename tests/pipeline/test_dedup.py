"""The bitmap prefilter, ordinals and per-snapshot bitmaps, against a real repository."""

from __future__ import annotations

import os

from pyroaring import BitMap

from corestate.connectors.local import LocalBackend
from corestate.pipeline import dedup
from corestate.pipeline.backup import BackupOptions, backup
from corestate.repository import ordinals
from corestate.repository.backend import Kind
from corestate.repository.repository import Repository


def test_prefilter_answers_certainly_new_without_exact_lookups():
    known = [os.urandom(32) for _ in range(1000)]
    lookups = []

    class Exact:
        def __contains__(self, item):
            lookups.append(item)
            return item in set(known)

    idx = dedup.DedupIndex(Exact(), known)
    fresh = [os.urandom(32) for _ in range(1000)]
    assert all(idx.claim(b) for b in fresh)
    assert idx.prefilter_misses >= 990  # 32-bit prefixes rarely collide
    assert len(lookups) <= 10
    assert not any(idx.claim(b) for b in known)  # known ones go to the exact index


def test_snapshot_bitmaps_record_what_each_snapshot_references(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(100_000))
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), "pw")
    first = backup(repo, BackupOptions(paths=[str(src)]))
    (src / "b").write_bytes(os.urandom(100_000))
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), "pw")
    second = backup(repo, BackupOptions(paths=[str(src)]))
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), "pw")
    repo.load_index()
    table = ordinals.load_table(repo)
    bm1 = ordinals.load_bitmap(repo, first.snapshot_id, table)
    bm2 = ordinals.load_bitmap(repo, second.snapshot_id, table)
    assert isinstance(bm1, BitMap) and isinstance(bm2, BitMap)
    added = table.resolve(bm2 - bm1)
    # what the second snapshot added: b's data blob and the changed trees
    assert len(added) == second.data_blobs + second.tree_blobs
    assert set(table.resolve(bm1 | bm2)) <= set(repo.index.blob_ids())


def test_bitmap_from_a_table_that_lost_a_race_is_rejected(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 1000)
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), "pw")
    snap = backup(repo, BackupOptions(paths=[str(src)]))
    repo = Repository.open(LocalBackend(str(tmp_path / "repo")), "pw")
    repo.load_index()
    for name in repo.list_sidecar():  # the table segment vanishes (or lost a race)
        if name.startswith("ord-"):
            repo.backend.delete(Kind.SIDECAR, name)
    table = ordinals.load_table(repo)
    assert ordinals.load_bitmap(repo, snap.snapshot_id, table) is None
