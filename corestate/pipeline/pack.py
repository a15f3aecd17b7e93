"""The pack stage: deduplicate chunks and store the new ones in packs.

Each chunk (:class:`~corestate.schemas.events.Chunk`) is checked against the dedup index
(:mod:`.dedup`); a new blob is sealed and appended to an open pack (:mod:`.packer`).
Chunks reach a packer by *chunks partition*: in distributed mode chunks are sharded by
blob id, so every packer owns a disjoint share of the blob-id space; in embedded mode
each worker's packer takes the chunks of the files that worker read.

A *barrier* of snapshot S on a chunks partition completes when the packer holds the
forwarded end markers of S from every *source* feeding it (every captures partition in
distributed mode; its own lane in embedded mode): every blob of S routed here has
arrived. The packer then makes its packs and index durable (:meth:`PackStage.flush`)
and acknowledges with a :class:`~corestate.schemas.events.BarrierAck` on ``stored``.

The exact part of the dedup index is, in order of preference, the packer's *share*
(:mod:`.index_share`: distributed mode, kept in a changelogged table) together with
the repository's index as the packer got its partitions, a set of ``known`` blob ids
(embedded mode: the repository's index as the run began), or the repository's master
index. Blobs claimed here count too.

Settling: a chunk is settled once a flush made it durable; an end marker of a barrier
still incomplete holds its partition (markers live in memory only and must be replayed).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Collection, Container, Iterator

from corestate.pipeline.dedup import DedupIndex
from corestate.pipeline.index_share import IndexShare
from corestate.pipeline.jobs import Record
from corestate.pipeline.packer import Packer
from corestate.pipeline.stage import Emit, Holds, RejectedEventError
from corestate.repository.backend import Kind
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.schemas.events import BarrierAck, Chunk, SnapshotMarker

FLUSH_SECONDS = 30.0

log = logging.getLogger(__name__)


class AnyOf:
    """``blob_id in AnyOf(a, b)``: in any of them."""

    def __init__(self, *parts: Container[bytes]) -> None:
        self.parts = parts

    def __contains__(self, blob_id: object) -> bool:
        return any(blob_id in p for p in self.parts)


class PackStage:
    """Stores the new blobs of its chunks partitions and acknowledges barriers.

    ``barrier_sources``: how many forwarded end markers complete a barrier (None: the
    marker's ``partition_count``, every captures partition). ``flush_every``: a tick
    flushes when something was stored and not flushed for this long. ``abandon_after``:
    a tick gives up a barrier still incomplete after this long. Counters:
    ``blobs_stored``, ``bytes_added`` (plaintext), ``flushes``."""

    def __init__(self, repo: Repository, chunk_partitions: int,
                 share: IndexShare | None = None, known: Collection[bytes] | None = None,
                 barrier_sources: int | None = None, flush_every: float = FLUSH_SECONDS,
                 compress: bool = True, abandon_after: float = 3600.0) -> None:
        self.repo = repo
        self.chunk_partitions = chunk_partitions
        self.packer = Packer(repo, compress=compress)
        self.share = share
        self.known = known
        self.barrier_sources = barrier_sources
        self.flush_every = flush_every
        self.abandon_after = abandon_after
        if share is None and known is None:
            repo.refresh_index()
        self._dedup: DedupIndex | None = None
        self._unrecorded: list[tuple[int, bytes]] = []
        self._markers: dict[tuple[str, int], set[int]] = {}
        self._begun: dict[tuple[str, int], float] = {}  # barrier -> its first marker's time
        self._added: dict[tuple[str, int], int] = {}  # barrier -> bytes stored for it
        self._holds = Holds()
        self._durable: dict[int, int] = {}  # partition -> last position a flush covered
        self._dirty_since: float | None = None
        self.blobs_stored = 0
        self.bytes_added = 0
        self.flushes = 0

    @property
    def dedup(self) -> DedupIndex:
        """Built on first use, so that a share restored after :meth:`reset` is complete."""
        if self._dedup is None:
            if self.share is not None:
                # the share, and what the repository held already (embedded backups,
                # other packers' flushed packs), so that nothing is stored twice
                self.share.live_packs = {bytes.fromhex(f.name)
                                         for f in self.repo.backend.list(Kind.DATA)}
                self.repo.refresh_index()
                index = self.repo.index
                self._dedup = DedupIndex(AnyOf(self.share, index),
                                         itertools.chain(self.share.blob_ids(), index.blob_ids()))
            elif self.known is not None:
                self._dedup = DedupIndex(self.known, self.known)
            else:
                self._dedup = DedupIndex(self.repo.index, self.repo.index.blob_ids())
        return self._dedup

    def settled(self, partition: int) -> int | None:
        durable = self._durable.get(partition)
        return None if durable is None else self._holds.settled(partition, upto=durable)

    def flush(self) -> Iterator[Emit]:
        """Write open packs and their index: everything handed in is durable."""
        self.packer.flush()
        self.repo.flush_index()
        if self.share is not None:
            for partition, blob_id in self._unrecorded:
                where = self.repo.index.lookup(blob_id)
                if where is not None:
                    self.share.record(partition, blob_id, bytes.fromhex(where.pack))
        self._unrecorded.clear()
        self._durable.update(self._holds.last_positions())
        self._dirty_since = None
        self.flushes += 1
        return iter(())

    def tick(self, now: float) -> Iterator[Emit]:
        """Flush what waited ``flush_every``; give up barriers that waited
        ``abandon_after`` for their other end markers (the agent died between its
        markers), releasing their partitions."""
        if self._dirty_since is not None and now - self._dirty_since >= self.flush_every:
            yield from self.flush()
        for barrier in [b for b, t in self._begun.items() if now - t > self.abandon_after]:
            snapshot_id, partition = barrier
            log.warning("snapshot %s abandoned on chunks partition %d: end markers from %d "
                        "captures partition(s) only, none for %.0fs", snapshot_id, partition,
                        len(self._markers.get(barrier, ())), self.abandon_after)
            self._markers.pop(barrier, None)
            self._added.pop(barrier, None)
            del self._begun[barrier]
            self._holds.release(barrier, partition)

    def reset(self) -> None:
        """Partitions moved: make what was claimed durable, forget barriers in progress,
        and rebuild the dedup index on next use (another worker may have stored blobs
        meanwhile: the repository index is reloaded, or the share restored)."""
        for _ in self.flush():
            pass
        self._markers.clear()
        self._begun.clear()
        self._added.clear()
        self._holds.clear()
        self._durable.clear()
        if self.share is None and self.known is None:
            known = len(self.repo.index.packs)
            if not self.repo.refresh_index() and self._dedup is not None:
                # no prune meanwhile: the packs the refresh added are all that is new to
                # the prefilter (this lane's flushed blobs are in it from their claims),
                # so it learns those instead of being rebuilt (a rebuild hashes every
                # blob id: 0.15 s a run for 128,000 blobs)
                fresh = itertools.islice(self.repo.index.packs.values(), known, None)
                self._dedup.learn(b.id for blobs in fresh for b in blobs)
                return
        self._dedup = None

    def close(self) -> None:
        for _ in self.flush():
            pass
        self.packer.close()

    def handle(self, partition: int, position: int, event: Record) -> Iterator[Emit]:
        self._holds.seen(partition, position)
        if isinstance(event, Chunk):
            if hashlib.sha256(event.data).digest() != event.blob_id:
                raise RejectedEventError(f"chunk {event.blob_id.hex()[:16]}: content does not "
                                         "match its id")
            if self.dedup.claim(event.blob_id):
                self.packer.add_plain(event.blob_id, BlobType.DATA, event.data)
                self._unrecorded.append((partition, event.blob_id))
                self.blobs_stored += 1
                self.bytes_added += len(event.data)
                barrier = (event.snapshot_id, partition)
                self._added[barrier] = self._added.get(barrier, 0) + len(event.data)
                if self._dirty_since is None:
                    self._dirty_since = time.monotonic()
        elif isinstance(event, SnapshotMarker) and event.kind == "end" \
                and event.source_partition is not None:
            barrier = (event.snapshot_id, partition)
            seen = self._markers.setdefault(barrier, set())
            self._begun.setdefault(barrier, time.monotonic())
            seen.add(event.source_partition)
            self._holds.hold(partition, barrier, position)
            needed = self.barrier_sources or event.partition_count
            if len(seen) >= needed:
                # flushed first: if the store fails, the barrier stays, and the marker,
                # handled again, completes it again
                yield from self.flush()
                del self._markers[barrier]
                self._begun.pop(barrier, None)
                self._holds.release(barrier, partition)
                yield Emit("stored", BarrierAck(snapshot_id=event.snapshot_id,
                                                packer_partition=partition, durable=True,
                                                partition_count=self.chunk_partitions,
                                                bytes_added=self._added.pop(barrier, 0)))
        else:
            raise RejectedEventError(f"{type(event).__name__} does not belong on chunks")
