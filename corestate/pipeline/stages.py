"""The stages of distributed mode as plain classes: chunk, pack and commit.

Each stage takes decoded events one at a time (``handle(partition, event)``) and yields
what it wants produced (:class:`Emit`); it knows nothing of Kafka. A runner
(:mod:`corestate.connectors.kafka_runner`) moves the events and commits consumer offsets
only where a stage says it is safe. Terms (see ``docs/distributed.md``):

- a *snapshot id* is the agent's run id; *S* below;
- an *end marker* is the agent's :class:`SnapshotMarker` ``end`` of S on one captures
  partition; a chunker forwards it (with ``source_partition`` set to that captures
  partition) to every chunks partition and, keyed by S, to ``files``: a forwarded marker
  follows every chunk and manifest of S that came from that captures partition;
- a *barrier* on a chunks partition is complete when its packer holds the forwarded end
  markers of S from every captures partition: every blob of S routed there has reached
  it. The packer then makes its packs and index durable and acknowledges
  (:class:`BarrierAck`) on ``stored``;
- the committer commits S when it holds the forwarded end markers of S from every
  captures partition (so every manifest of S) and an acknowledgement from every chunks
  partition (so every blob of S is durable);
- S is *incremental* when its markers name a ``parent`` (a committed restic snapshot):
  S carries only what changed (the markers list the ``rescanned`` directories and the
  ``removed`` paths), and the committer assembles it onto the parent's trees
  (:mod:`corestate.pipeline.assemble`); otherwise S is *full*.

A record the stage cannot accept raises :class:`RejectedEventError`; the runner sends it
to the dead-letter topic and goes on.

>>> from corestate.schemas.events import DataSegment
>>> stage = ChunkStage(chunk_partitions=2)
>>> list(stage.handle(0, DataSegment(host="h", snapshot_id="s", path=b"/x", seq=0,
...                                  offset=0, data=b"")))
Traceback (most recent call last):
  ...
corestate.pipeline.stages.RejectedEventError: DataSegment of h:/x without a FileBegin
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from corestate.errors import IntegrityError, NotFoundError, PermanentError
from corestate.pipeline.assemble import Parent, assemble, count_files
from corestate.pipeline.chunk import chunk_stream
from corestate.pipeline.dedup import DedupIndex, OrdinalTable
from corestate.pipeline.packer import Packer
from corestate.pipeline.share import IndexShare
from corestate.repository.backend import Kind
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.schemas.events import (BarrierAck, Chunk, DataSegment, Delete, Event, FileBegin,
                                      FileEnd, FileManifest, NodeMeta, Rename,
                                      SnapshotCommitted, SnapshotMarker)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SPOOL = 8 << 20  # a file's bytes stay in memory up to this size, then go to a temp file


class RejectedEventError(PermanentError):
    """A valid event that this stage cannot accept (out of order, wrong topic, corrupt)."""


@dataclass(frozen=True)
class Emit:
    """An event to produce: to ``<prefix>.<topic>``, on ``partition`` (None: by key), with
    ``key`` (None: the contract's key for the event)."""

    topic: str
    event: Event
    partition: int | None = None
    key: bytes | None = None


def time_ns(t: datetime) -> int:
    """A marker's time as nanoseconds since the epoch."""
    return (t - _EPOCH) // _MICRO * 1000


_MICRO = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc) - _EPOCH


# -- chunk -----------------------------------------------------------------------------

@dataclass
class _OpenFile:
    begin: FileBegin
    spool: tempfile.SpooledTemporaryFile[bytes]
    next_seq: int = 0


class ChunkStage:
    """Reassembles each captured file from its segments, chunks it and names the chunks.

    State: the files begun and not yet ended, per captures partition. A partition with
    no open file is *quiet*: its consumed offset may be committed (once what was emitted
    is acknowledged), since nothing before it is still needed."""

    def __init__(self, chunk_partitions: int) -> None:
        self.chunk_partitions = chunk_partitions
        self._open: dict[tuple[int, str, bytes], _OpenFile] = {}

    def quiet(self, partition: int) -> bool:
        return not any(k[0] == partition for k in self._open)

    def reset(self) -> None:
        """Forget every open file (partitions were revoked: they will be replayed)."""
        for f in self._open.values():
            f.spool.close()
        self._open.clear()

    def handle(self, partition: int, event: Event) -> Iterator[Emit]:
        if isinstance(event, FileBegin):
            old = self._open.pop((partition, event.host, event.path), None)
            if old is not None:  # the agent restarted this file
                old.spool.close()
            self._open[(partition, event.host, event.path)] = _OpenFile(
                event, tempfile.SpooledTemporaryFile(max_size=_SPOOL))
        elif isinstance(event, DataSegment):
            f = self._open.get((partition, event.host, event.path))
            where = f"{event.host}:{os.fsdecode(event.path)}"
            if f is None:
                raise RejectedEventError(f"DataSegment of {where} without a FileBegin")
            if event.seq == 0:  # a re-read of a file that changed underfoot starts over
                f.spool.seek(0)
                f.spool.truncate()
                f.next_seq = 0
            if event.seq != f.next_seq:
                raise RejectedEventError(f"DataSegment {event.seq} of {where}: expected "
                                         f"{f.next_seq}")
            f.spool.write(event.data)
            f.next_seq += 1
        elif isinstance(event, FileEnd):
            yield from self._end(partition, event)
        elif isinstance(event, SnapshotMarker):
            if event.kind == "end":
                fwd = replace(event, source_partition=partition)
                for p in range(self.chunk_partitions):
                    yield Emit("chunks", fwd, partition=p)
                yield Emit("files", fwd, key=event.snapshot_id.encode("utf-8"))
        elif isinstance(event, Delete):
            # A file that could not be read after its FileBegin is withdrawn.
            old = self._open.pop((partition, event.host, event.path), None)
            if old is not None:
                old.spool.close()
        elif isinstance(event, Rename):
            pass  # only a watching agent sends them; a full scan never does
        else:
            raise RejectedEventError(f"{type(event).__name__} does not belong on captures")

    def _end(self, partition: int, end: FileEnd) -> Iterator[Emit]:
        f = self._open.pop((partition, end.host, end.path), None)
        where = f"{end.host}:{os.fsdecode(end.path)}"
        if f is None:
            raise RejectedEventError(f"FileEnd of {where} without a FileBegin")
        with f.spool:
            size = f.spool.tell()
            if end.segments != f.next_seq or end.size != size:
                raise RejectedEventError(
                    f"FileEnd of {where}: {end.segments} segments, {end.size} bytes announced, "
                    f"{f.next_seq} segments, {size} bytes received")
            node = f.begin.node
            blobs: list[bytes] = []
            if node.type == "file":
                f.spool.seek(0)
                for data in chunk_stream(f.spool, size_hint=size):  # type: ignore[arg-type]
                    blob_id = hashlib.sha256(data).digest()
                    blobs.append(blob_id)
                    yield Emit("chunks", Chunk(blob_id=blob_id, snapshot_id=end.snapshot_id,
                                               data=data, source_partition=partition))
                node = replace(node, size=size)
        yield Emit("files", FileManifest(snapshot_id=end.snapshot_id, path=end.path, node=node,
                                         blobs=tuple(blobs)))


# -- pack ------------------------------------------------------------------------------

class PackStage:
    """Stores the new blobs of its chunks partitions and acknowledges barriers.

    State: the open packs (the repository's :class:`Packer`), the dedup index, and the
    forwarded end markers seen per snapshot and chunks partition. The dedup index's exact
    part is the repository's index, or, given a ``share`` (:mod:`.share`), that share
    alone: then the repository index is never loaded, and every blob stored here is
    recorded in the share once durable. Chunks are sharded by blob id, so no other packer
    stores these blobs meanwhile. After :meth:`flush` every blob handed in is durable, so
    offsets consumed so far may be committed."""

    def __init__(self, repo: Repository, chunk_partitions: int,
                 share: IndexShare | None = None) -> None:
        self.repo = repo
        self.chunk_partitions = chunk_partitions
        self.packer = Packer(repo)
        self.share = share
        if share is None:
            repo.refresh_index()
        self._dedup: DedupIndex | None = None
        self._unrecorded: list[tuple[int, bytes]] = []
        self._markers: dict[tuple[str, int], set[int]] = {}
        self.blobs_stored = 0
        self.flushes = 0  # a runner compares it to learn that everything so far is durable

    @property
    def dedup(self) -> DedupIndex:
        """Built on first use, so that a share restored after :meth:`reset` is complete."""
        if self._dedup is None:
            if self.share is None:
                self._dedup = DedupIndex(self.repo.index, OrdinalTable(), self.repo.index.blob_ids())
            else:
                self.share.live_packs = {bytes.fromhex(f.name)
                                         for f in self.repo.backend.list(Kind.DATA)}
                self._dedup = DedupIndex(self.share, OrdinalTable(), self.share.blob_ids())
        return self._dedup

    def flush(self) -> None:
        """Write open packs and their index: everything handed in is durable."""
        self.packer.flush()
        self.repo.flush_index()
        if self.share is not None:
            for partition, blob_id in self._unrecorded:
                where = self.repo.index.lookup(blob_id)
                if where is not None:
                    self.share.record(partition, blob_id, bytes.fromhex(where.pack))
        self._unrecorded.clear()
        self.flushes += 1

    def reset(self) -> None:
        """Partitions moved: make what was claimed durable, forget barriers in progress,
        and rebuild the dedup index on next use (another worker may have stored blobs
        meanwhile: the repository index is reloaded, or the share restored)."""
        self.flush()
        self._markers.clear()
        if self.share is None:
            self.repo.refresh_index()
        self._dedup = None

    def close(self) -> None:
        self.flush()
        self.packer.close()

    def waiting(self, snapshot_id: str, partition: int) -> bool:
        """Whether the barrier of ``snapshot_id`` on ``partition`` has some end markers
        but not all: a runner must not commit offsets past them."""
        return (snapshot_id, partition) in self._markers

    def handle(self, partition: int, event: Event) -> Iterator[Emit]:
        if isinstance(event, Chunk):
            if hashlib.sha256(event.data).digest() != event.blob_id:
                raise RejectedEventError(f"chunk {event.blob_id.hex()[:16]}: content does not "
                                         "match its id")
            if self.dedup.claim(event.blob_id):
                self.packer.add_plain(event.blob_id, BlobType.DATA, event.data)
                self._unrecorded.append((partition, event.blob_id))
                self.blobs_stored += 1
        elif isinstance(event, SnapshotMarker) and event.kind == "end" \
                and event.source_partition is not None:
            seen = self._markers.setdefault((event.snapshot_id, partition), set())
            seen.add(event.source_partition)
            if len(seen) >= event.partition_count:
                self.flush()
                del self._markers[(event.snapshot_id, partition)]
                yield Emit("stored", BarrierAck(snapshot_id=event.snapshot_id,
                                                packer_partition=partition, durable=True,
                                                partition_count=self.chunk_partitions))
        else:
            raise RejectedEventError(f"{type(event).__name__} does not belong on chunks")


# -- commit ----------------------------------------------------------------------------

@dataclass
class _Pending:
    entries: dict[bytes, NodeMeta] = field(default_factory=dict)
    contents: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict)
    markers: dict[int, SnapshotMarker] = field(default_factory=dict)
    acks: set[int] = field(default_factory=set)
    ack_count: int | None = None
    last_seen: float = field(default_factory=time.monotonic)


class CommitStage:
    """Writes a snapshot once all its manifests and every packer's acknowledgement are in.

    State: per snapshot in progress, its manifests, forwarded end markers and acks. With
    nothing in progress (:meth:`idle`), consumed offsets may be committed. A snapshot
    that received nothing for ``abandon_after`` seconds (its agent died before the end
    marker) is dropped by :meth:`expire`, so that it does not hold offsets back forever.

    An incremental run (its markers name a ``parent``) is assembled onto the parent
    snapshot's trees (:mod:`corestate.pipeline.assemble`). To count the files of such a
    snapshot without walking the parts it shares with its parent, the committer keeps,
    per host and paths, the file count of the trees of the last snapshot it wrote
    (bounded: at most ``COUNT_CACHE`` trees); a miss walks the tree once."""

    COUNT_CACHE = 200_000

    def __init__(self, repo: Repository, abandon_after: float = 3600.0) -> None:
        self.repo = repo
        self.abandon_after = abandon_after
        self._pending: dict[str, _Pending] = {}
        self._counts: dict[tuple[str, tuple[str, ...]], dict[bytes, int]] = {}
        self.committed: list[SnapshotCommitted] = []

    def idle(self) -> bool:
        return not self._pending

    def expire(self, now: float | None = None) -> list[str]:
        """Drop the snapshots abandoned at ``now`` (monotonic seconds); their ids."""
        now = time.monotonic() if now is None else now
        gone = [s for s, p in self._pending.items() if now - p.last_seen > self.abandon_after]
        for s in gone:
            del self._pending[s]
        return gone

    def reset(self) -> None:
        self._pending.clear()

    def handle(self, partition: int, event: Event) -> Iterator[Emit]:
        if isinstance(event, FileManifest):
            p = self._pending.setdefault(event.snapshot_id, _Pending())
            p.entries[event.path] = event.node
            if event.node.type == "file":
                p.contents[event.path] = event.blobs
        elif isinstance(event, SnapshotMarker) and event.kind == "end" \
                and event.source_partition is not None:
            p = self._pending.setdefault(event.snapshot_id, _Pending())
            p.markers[event.source_partition] = event
        elif isinstance(event, BarrierAck):
            p = self._pending.setdefault(event.snapshot_id, _Pending())
            if event.durable:
                p.acks.add(event.packer_partition)
                p.ack_count = event.partition_count
        else:
            raise RejectedEventError(f"{type(event).__name__} does not belong on files or stored")
        snapshot_id = event.snapshot_id
        self._pending[snapshot_id].last_seen = time.monotonic()
        if self._ready(self._pending[snapshot_id]):
            yield Emit("snapshots", self._commit(snapshot_id, self._pending.pop(snapshot_id)))

    @staticmethod
    def _ready(p: _Pending) -> bool:
        if not p.markers or p.ack_count is None:
            return False
        marker = next(iter(p.markers.values()))
        return len(p.markers) >= marker.partition_count and len(p.acks) >= p.ack_count

    def _parent(self, snapshot_id: str, marker: SnapshotMarker,
                memo: dict[bytes, int]) -> Parent | None:
        """The parent an incremental run builds on; None for a full run. A parent that
        cannot be used (forgotten, damaged, of other paths) rejects the snapshot: the
        agent, seeing no commit, makes its next run a full one."""
        if marker.parent is None:
            return None
        why = None
        try:
            snap = self.repo.load_snapshot(marker.parent)
        except (NotFoundError, IntegrityError) as exc:
            why = f"cannot be loaded ({exc})"
        else:
            if snap.hostname != marker.host or snap.paths != list(marker.paths):
                why = f"is of {snap.hostname}:{','.join(snap.paths)}"
        if why is not None:
            raise RejectedEventError(f"snapshot {snapshot_id} not committed: its parent "
                                     f"{marker.parent[:16]} {why}")
        load = self.repo.load_tree
        return Parent(snap.tree, load, lambda tree_id: count_files(tree_id, load, memo),
                      rescanned=frozenset(marker.rescanned), removed=frozenset(marker.removed))

    def _commit(self, snapshot_id: str, p: _Pending) -> SnapshotCommitted:
        """The commit protocol, in order:

        1. reload the index (the packers' index files) and check that every blob the
           manifests reference is in it (else the snapshot is dropped, rejected); for an
           incremental run, load its parent snapshot (else rejected, too);
        2. build the trees in post-order (an incremental run's onto its parent's), store
           the new ones in packs, flush the packs and write their index;
        3. write the snapshot, unless a replay already wrote this very one;
        4. return the SnapshotCommitted event to publish."""
        repo = self.repo
        repo.refresh_index()
        missing = [b for blobs in p.contents.values() for b in blobs if b not in repo.index]
        if missing:  # e.g. a chunk was dead-lettered: the snapshot cannot be complete
            raise RejectedEventError(f"snapshot {snapshot_id} not committed: {len(missing)} "
                                     f"blob(s) are not in the index (first "
                                     f"{missing[0].hex()[:16]})")
        marker = next(iter(p.markers.values()))
        key = (marker.host, marker.paths)
        memo = dict(self._counts.get(key, {}))
        parent = self._parent(snapshot_id, marker, memo)
        packer = Packer(repo)
        added = 0

        def store_tree(tree_id: bytes, blob: bytes) -> None:
            nonlocal added
            if not repo.has_blob(tree_id, BlobType.TREE):
                packer.add_plain(tree_id, BlobType.TREE, blob)
                added += len(blob)

        try:
            built = assemble(p.entries, p.contents, store_tree, parent)
            packer.flush()
        finally:
            packer.close()
        repo.flush_index()
        root = built.root
        memo.update(built.counts)
        self._counts[key] = memo if len(memo) <= self.COUNT_CACHE else dict(built.counts)
        when = time_ns(marker.time)
        paths = list(marker.paths)
        restic_id = next((s.id for s in repo.list_snapshots()
                          if s.tree == root and s.time == when and s.hostname == marker.host
                          and s.paths == paths), None)
        if restic_id is None:
            restic_id = repo.save_snapshot(Snapshot(time=when, tree=root, paths=paths,
                                                    hostname=marker.host,
                                                    tags=list(marker.tags),
                                                    parent=marker.parent))
        done = SnapshotCommitted(snapshot_id=snapshot_id, restic_id=restic_id, host=marker.host,
                                 paths=tuple(paths), time=marker.time, tree=root.hex(),
                                 files=built.files, bytes_added=added, tags=marker.tags)
        self.committed.append(done)
        return done
