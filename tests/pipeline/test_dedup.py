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


def _chunk(data: bytes):
    import hashlib

    from corestate.schemas.events import Chunk

    return Chunk(blob_id=hashlib.sha256(data).digest(), snapshot_id="run", data=data,
                 source_partition=0)


def test_a_lane_reset_learns_what_others_stored_and_rebuilds_after_a_prune(tmp_path):
    """Between runs a pack stage catches up with the index incrementally: blobs another
    writer stored meanwhile are not stored again, its own claims are not forgotten
    unsafely, and an index rewritten by prune makes it start over."""
    from corestate.pipeline.pack import PackStage
    from corestate.pipeline.packer import Packer
    from corestate.repository.pack import BlobType

    backend = LocalBackend(str(tmp_path / "repo"))
    repo = Repository.init(backend, "pw")
    stage = PackStage(repo, chunk_partitions=1)
    mine, theirs, later = (_chunk(os.urandom(1000)) for _ in range(3))
    assert list(stage.handle(0, 1, mine)) == [] and stage.blobs_stored == 1
    stage.reset()  # first run done: its pack is flushed
    other = Repository.open(LocalBackend(str(tmp_path / "repo")), "pw")
    other.refresh_index()
    packer = Packer(other)
    packer.add_plain(theirs.blob_id, BlobType.DATA, theirs.data)
    packer.flush()
    packer.close()
    other.flush_index()
    stage.reset()  # the next run: the other writer's index file is new
    list(stage.handle(0, 2, theirs))
    list(stage.handle(0, 3, mine))
    assert stage.blobs_stored == 1, "a blob in the index was stored again"
    list(stage.handle(0, 4, later))
    assert stage.blobs_stored == 2
    # a prune rewrites the index: every index file is replaced, the prefilter rebuilt
    stage.reset()
    for info in list(backend.list(Kind.INDEX)):
        backend.delete(Kind.INDEX, info.name)
    stage.reset()
    list(stage.handle(0, 5, mine))
    assert stage.blobs_stored == 3, "with its index gone the blob is stored again"


def test_the_ordinal_table_extends_in_order_and_keeps_known_ordinals():
    """Loading a table gives ordinals in segment order; an id seen before keeps its
    ordinal (the slow path) and new ones follow without gaps (both paths)."""
    table = ordinals.OrdinalTable()
    ids = [bytes([i]) * 32 for i in range(6)]
    table.extend(ids[:3])  # all new: the fast path
    assert [table.get(b) for b in ids[:3]] == [0, 1, 2]
    table.extend([ids[4], ids[1], ids[3], ids[4]])  # known and repeated ones
    assert [table.get(b) for b in ids] == [0, 1, 2, 4, 3, None]
    assert table.ids == [ids[0], ids[1], ids[2], ids[4], ids[3]]
    assert table.missing([ids[5], ids[0], ids[5]]) == [ids[5]]
