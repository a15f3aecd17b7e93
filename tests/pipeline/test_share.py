"""The packer's index share (corestate.pipeline.index_share) driving PackStage without a broker:
what is recorded, when, and when an entry stops counting."""

from __future__ import annotations

import hashlib
import itertools
import os
from datetime import datetime, timezone
from pathlib import Path

from corestate.connectors.url import open_backend
from corestate.pipeline.index_share import IndexShare
from corestate.pipeline.pack import PackStage
from corestate.repository.backend import Kind
from corestate.repository.repository import Repository
from corestate.schemas.events import BarrierAck, Chunk, SnapshotMarker
from tests.conftest import PASSWORD

POS = itertools.count()  # record positions, as a runner gives them


def chunk(data: bytes) -> Chunk:
    return Chunk(snapshot_id="s1", source_partition=0, blob_id=hashlib.sha256(data).digest(),
                 data=data)


def end(sid: str) -> SnapshotMarker:
    return SnapshotMarker(host="h", snapshot_id=sid, kind="end", paths=("/srv",),
                          partition_count=1, source_partition=0,
                          time=datetime(2024, 5, 1, tzinfo=timezone.utc))


def packs(repo: Repository) -> set[str]:
    return {f.name for f in repo.backend.list(Kind.DATA)}


def test_blobs_are_recorded_only_once_durable_and_a_new_stage_trusts_the_share(tmp_path: Path) -> None:
    repo = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)
    entries: dict[bytes, bytes] = {}
    told: list[tuple[int, bytes, bytes]] = []
    stage = PackStage(repo, 1, IndexShare(entries, set(), lambda *a: told.append(a)))
    blobs = [os.urandom(1000) for _ in range(3)]
    for b in blobs:
        assert list(stage.handle(0, next(POS), chunk(b))) == []
    assert entries == {} and told == []  # not durable yet: nothing recorded
    [ack] = [e.event for e in stage.handle(0, next(POS), end("s1"))]
    assert isinstance(ack, BarrierAck) and ack.durable
    [pack] = packs(repo)
    assert entries == {hashlib.sha256(b).digest(): bytes.fromhex(pack) for b in blobs}
    assert sorted(told) == sorted((0, k, v) for k, v in entries.items())
    stage.close()

    # a new packer (another process, the repository index never loaded) given the share
    again = PackStage(Repository.open(open_backend(str(tmp_path / "repo")), PASSWORD), 1,
                      IndexShare(dict(entries), set()))
    for b in blobs:
        list(again.handle(0, next(POS), chunk(b)))
    list(again.handle(0, next(POS), end("s2")))
    assert again.blobs_stored == 0 and packs(repo) == {pack}


def test_an_entry_whose_pack_is_gone_makes_the_blob_be_stored_again(tmp_path: Path) -> None:
    repo = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)
    data = os.urandom(1000)
    entries = {hashlib.sha256(data).digest(): bytes(32)}  # names a pack that does not exist
    stage = PackStage(repo, 1, IndexShare(entries, set()))
    list(stage.handle(0, next(POS), chunk(data)))
    list(stage.handle(0, next(POS), end("s1")))
    assert stage.blobs_stored == 1
    [pack] = packs(repo)
    assert entries[hashlib.sha256(data).digest()] == bytes.fromhex(pack)
