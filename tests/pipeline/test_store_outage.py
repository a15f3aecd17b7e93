"""A store that refuses writes for a while (an outage longer than the backend's own
retries): what the pack and commit stages held is kept, and handling the same record
again once the store is back completes it. The worker retries a record this way
(:class:`~corestate.connectors.kafka_runner.Role`); nothing is lost in between."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from corestate.connectors.url import open_backend
from corestate.errors import RetryableError
from corestate.pipeline.commit import CommitStage
from corestate.pipeline.index_share import IndexShare
from corestate.pipeline.pack import PackStage
from corestate.pipeline.packer import Packer
from corestate.repository.backend import Kind, WrappedBackend
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.schemas.events import (BarrierAck, Chunk, FileManifest, NodeMeta, SnapshotCommitted,
                                      SnapshotMarker)
from tests.conftest import PASSWORD


class OutageBackend(WrappedBackend):
    """Refuses every write while ``down``, as a store away for longer than retries last."""

    down = False

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        if self.down:
            raise RetryableError(f"writing {kind.value}/{name}: the store does not answer")
        super().write(kind, name, data)


@pytest.fixture
def store(tmp_path: Path) -> OutageBackend:
    backend = OutageBackend(open_backend(str(tmp_path / "repo")))
    Repository.init(backend, PASSWORD).close()
    return backend


def reopen(store: OutageBackend) -> Repository:
    return Repository.open(store, PASSWORD)


def test_packs_the_store_refused_are_written_by_the_next_flush(store: OutageBackend) -> None:
    repo = reopen(store)
    packer = Packer(repo, target_size=4096)  # small packs: the writer thread writes some
    blobs = {hashlib.sha256(d).digest(): d for d in (os.urandom(3000) for _ in range(6))}
    store.down = True
    for blob_id, data in blobs.items():
        packer.add_plain(blob_id, BlobType.DATA, data)
    with pytest.raises(RetryableError):
        packer.flush()
    with pytest.raises(RetryableError):  # still away: still refused, still kept
        packer.flush()
    assert not list(store.list(Kind.DATA))
    store.down = False
    packer.flush()
    repo.flush_index()
    packer.close()
    fresh = reopen(store)
    fresh.load_index()
    assert {b: fresh.load_blob(b) for b in blobs} == blobs


def test_an_index_file_the_store_refused_is_written_by_the_next_flush(store: OutageBackend) -> None:
    repo = reopen(store)
    packer = Packer(repo)
    data = os.urandom(5000)
    blob_id = hashlib.sha256(data).digest()
    packer.add_plain(blob_id, BlobType.DATA, data)
    packer.flush()
    store.down = True
    with pytest.raises(RetryableError):
        repo.flush_index()
    store.down = False
    assert repo.flush_index() is not None
    packer.close()
    fresh = reopen(store)
    fresh.load_index()
    assert fresh.load_blob(blob_id) == data


def _end(source: int) -> SnapshotMarker:
    return SnapshotMarker(host="h", snapshot_id="s", kind="end", paths=("/srv",),
                          partition_count=2, source_partition=source,
                          time=datetime(2024, 5, 1, tzinfo=timezone.utc), entries=1)


def test_a_barrier_whose_flush_failed_completes_when_its_marker_comes_again(
        store: OutageBackend) -> None:
    stage = PackStage(reopen(store), 1, IndexShare({}, set()))
    data = os.urandom(2000)
    chunk = Chunk(snapshot_id="s", source_partition=0, data=data,
                  blob_id=hashlib.sha256(data).digest())
    assert list(stage.handle(0, 0, chunk)) == []
    assert list(stage.handle(0, 1, _end(0))) == []
    store.down = True
    with pytest.raises(RetryableError):
        list(stage.handle(0, 2, _end(1)))  # completes the barrier; its flush fails
    assert stage.settled(0) is None        # nothing is settled meanwhile
    store.down = False
    (ack,) = [e.event for e in stage.handle(0, 2, _end(1))]  # the same record, again
    assert isinstance(ack, BarrierAck) and ack.durable and stage.settled(0) == 2
    fresh = reopen(store)
    fresh.load_index()
    assert fresh.load_blob(chunk.blob_id) == data


def test_a_commit_that_failed_on_the_store_is_made_when_its_record_comes_again(
        store: OutageBackend) -> None:
    stage = CommitStage(reopen(store))
    meta = NodeMeta(type="file", mode=0o644, mtime=1, atime=1, ctime=1, uid=0, gid=0)
    for position, record in enumerate([
            FileManifest(snapshot_id="s", path=b"/srv/a", node=meta, blobs=()),
            _end(0), _end(1)]):
        assert list(stage.handle(0, position, record)) == []
    ack = BarrierAck(snapshot_id="s", packer_partition=0, durable=True, partition_count=1)
    store.down = True
    with pytest.raises(RetryableError):
        list(stage.handle(1, 0, ack))  # the run is complete; writing it fails
    assert stage.settled(0) == -1      # its records stay held (none settled)
    store.down = False
    (committed,) = [e.event for e in stage.handle(1, 0, ack)]  # the same record, again
    assert isinstance(committed, SnapshotCommitted)
    fresh = reopen(store)
    assert [s.id for s in fresh.list_snapshots()] == [committed.restic_id]
