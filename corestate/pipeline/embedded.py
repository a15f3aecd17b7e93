"""The embedded runner: the pipeline's stages in this process and worker processes.

Terms:

- a *lane* is a chunk stage feeding its own pack stage (:class:`Lane`): it reads the
  files it is given, chunks them, and stores their new blobs in packs of its own. A
  lane runs in a *worker process* (so that reading, hashing, compressing and
  encrypting use every core), or *inline*, in this process, when a run has too little
  to read to be worth starting processes;
- the *main* process scans (:mod:`.scan`), dispatches each file to read to a lane, and
  drives the commit stage with everything the scan captured and the lanes report: the
  same stage classes the Kafka runner drives, with lanes for partitions (lane *i* is
  captures partition *i* and chunks partition *i*);
- *dispatch*: a small file goes to the lane chosen by its size (identical files have
  equal sizes, so a duplicate meets the lane that stored its first copy: no two lanes
  store the same small blob in one run); a big one to the lane with the least work in
  flight. Each lane has at most :data:`LANE_BYTES` and :data:`LANE_FILES` of work in
  flight (bounded memory; the scan waits, handling the lanes' results meanwhile);
- a run starts with a ``begin`` marker to every lane (a lane then reloads the index, so
  it deduplicates against what other lanes and runs stored) and ends with an ``end``
  marker: a lane forwards it after its last manifest, flushes its packs and
  acknowledges (the pack stage's barrier with one source). A lane that received no
  work this run is acknowledged for by the runner (nothing of the run is in it).

Lanes are started on demand and kept for the next run (``corestate protect`` runs one
every few seconds); :meth:`EmbeddedRunner.close` stops them. A worker that dies (killed,
out of memory) fails the run with a clear error; what it had stored is in packs the next
backup indexes (:meth:`~corestate.repository.repository.Repository.adopt_orphan_packs`).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from corestate.errors import CoreStateError, PermanentError
from corestate.kernel.blockmap import BlockMapStore
from corestate.pipeline.chunk import BLOCK_THRESHOLD, ChunkStage, ReadReport
from corestate.pipeline.commit import CommitReport, CommitStage
from corestate.pipeline.jobs import ReadFailed, ReadFile, Record
from corestate.pipeline.pack import PackStage
from corestate.pipeline.stage import RejectedEventError
from corestate.pipeline.workers import (InlineWorker, Replies, WorkerFailed, WorkerProcess)
from corestate.repository.repository import Repository
from corestate.schemas.events import BarrierAck, FileManifest, SnapshotMarker

LANE_BYTES = 64 << 20
LANE_FILES = 2048
BATCH_BYTES = 4 << 20
BATCH_FILES = 256
SMALL_FILE = 1 << 20       # at most one chunk (smaller than FastCDC's minimum is 512 KiB)
INLINE_BYTES = 8 << 20     # a run reading less than this (and few files) stays inline
INLINE_FILES = 2000   # 1,000 changed small files: 5.3 s inline vs 5.8 s with workers (RESULTS.md)


@dataclass(frozen=True)
class LaneConfig:
    """What a lane needs: the job of its worker (:mod:`.workers`), pickled to it."""

    repo: Repository
    index: int
    lanes: int
    block_threshold: int = BLOCK_THRESHOLD
    block_size: int = 1 << 20
    block_store: str | None = None

    def start(self) -> Lane:
        return Lane(self)


@dataclass
class LaneReport:
    """A lane's counts for one run, sent after its acknowledgement."""

    index: int
    read: ReadReport
    blobs_stored: int
    bytes_added: int
    bytes_packed: int  # as stored: compressed and encrypted


class Lane:
    """A chunk stage feeding a pack stage (see the module docstring)."""

    def __init__(self, cfg: LaneConfig) -> None:
        store = BlockMapStore(cfg.block_store) if cfg.block_store else None
        self.index = cfg.index
        self.chunk = ChunkStage(1, cfg.block_threshold, cfg.block_size, store)
        self.pack = PackStage(cfg.repo, cfg.lanes, barrier_sources=1,
                              flush_every=float("inf"))
        self._position = 0
        self._stored = (0, 0, 0)

    def process(self, records: list[Record]) -> list[Any]:
        """Run records through the lane; what goes to the committer, in order."""
        out: list[Any] = []
        for record in records:
            self._position += 1
            if isinstance(record, SnapshotMarker) and record.kind == "begin":
                self.pack.reset()  # deduplicate against what was stored since
                self.chunk.report = ReadReport()
                self._stored = (self.pack.blobs_stored, self.pack.bytes_added,
                                self.pack.packer.bytes_stored)
            for emit in self.chunk.handle(self.index, self._position, record):
                if emit.topic == "chunks":
                    out.extend(e.event for e in self.pack.handle(self.index, self._position,
                                                                 emit.event))
                else:
                    out.append(emit.event)
            if isinstance(record, SnapshotMarker) and record.kind == "end":
                out.append(LaneReport(self.index, self.chunk.report,
                                      self.pack.blobs_stored - self._stored[0],
                                      self.pack.bytes_added - self._stored[1],
                                      self.pack.packer.bytes_stored - self._stored[2]))
        return out

    def close(self) -> None:
        self.pack.close()


@dataclass
class _Flight:
    """Work handed to one lane in this run and not yet reported back."""

    handle: WorkerProcess | InlineWorker
    batch: list[Record] = field(default_factory=list)
    batch_bytes: int = 0
    batches: int = 0
    files: int = 0
    bytes: int = 0
    used: bool = False


@dataclass
class RunResult:
    """One run of the embedded runner: the commit, and what the lanes reported."""

    commit: CommitReport
    reports: list[LaneReport]
    failed: list[ReadFailed]


class EmbeddedRunner:
    """Runs backups through lanes and a commit stage (see the module docstring).

    ``workers``: how many worker processes (0: everything inline). ``on_result`` is told
    of every manifest or failure as it comes back (progress)."""

    MAX_BATCHES = 2  # per lane: one being processed, one waiting

    def __init__(self, repo: Repository, workers: int, block_threshold: int = BLOCK_THRESHOLD,
                 block_size: int = 1 << 20, block_store: str | None = None) -> None:
        self.repo = repo
        self.workers = max(0, workers)
        self._cfg = LaneConfig(repo, 0, 1, block_threshold, block_size, block_store)
        self._replies: Replies = queue.SimpleQueue()
        self._workers: list[WorkerProcess] = []
        self._inline: InlineWorker | None = None
        self._flights: dict[int, _Flight] = {}
        self._pending: list[ReadFile] = []
        self._pending_bytes = 0
        self._position = 0
        self._commit: CommitStage | None = None
        self._begin: SnapshotMarker | None = None
        self._reports: list[LaneReport] = []
        self._failed: list[ReadFailed] = []
        self.on_result: Callable[[FileManifest | ReadFailed], None] | None = None

    # -- one run ---------------------------------------------------------------------------
    def run(self, commit: CommitStage, begin: SnapshotMarker,
            scan: Callable[[Callable[[Record], None]], list[bytes]]) -> RunResult:
        """Scan, read, store, commit: ``scan(sink)`` calls ``sink`` with every record and
        returns the paths of the parent's entries that are gone (the end markers carry
        them)."""
        self._commit, self._begin = commit, begin
        self._flights = {}
        self._pending, self._pending_bytes = [], 0
        self._reports, self._failed = [], []
        try:
            removed = scan(self._sink)
            if self._pending or not self._flights:
                self._start_lanes(len(self._pending) >= INLINE_FILES
                                  or self._pending_bytes >= INLINE_BYTES)
            end = replace(begin, kind="end", partition_count=len(self._flights),
                          removed=tuple(sorted(set(removed))))
            for index, flight in self._flights.items():
                if flight.used:
                    self._add(flight, end, 0)
                    self._send(flight)
                else:  # no work this run: nothing of it is in that lane
                    self._to_commit(replace(end, source_partition=index))
                    self._to_commit(BarrierAck(snapshot_id=end.snapshot_id,
                                               packer_partition=index, durable=True,
                                               partition_count=len(self._flights)))
            while any(f.batches or f.batch for f in self._flights.values()):
                self._take(block=True)
        except BaseException:
            self.close()
            raise
        last = commit.reports[-1] if commit.reports else None
        if last is None or last.committed.snapshot_id != begin.snapshot_id:
            raise CoreStateError(f"snapshot {begin.snapshot_id} was not committed")
        return RunResult(last, self._reports, self._failed)

    def _sink(self, record: Record) -> None:
        if isinstance(record, ReadFile):
            if not self._flights:
                self._pending.append(record)
                self._pending_bytes += record.node.size
                if len(self._pending) >= INLINE_FILES or self._pending_bytes >= INLINE_BYTES:
                    self._start_lanes(True)
                return
            self._dispatch(record)
        else:
            self._to_commit(record)
            if self._flights:
                self._take(block=False)

    def _start_lanes(self, parallel: bool) -> None:
        """Choose the lanes of this run: the worker processes (started once), or inline."""
        handles: list[WorkerProcess | InlineWorker]
        if parallel and self.workers:
            while len(self._workers) < self.workers:
                index = len(self._workers)
                cfg = replace(self._cfg, index=index, lanes=self.workers)
                self._workers.append(WorkerProcess(index, cfg, self._replies, "backup"))
            handles = list(self._workers)
        else:
            if self._inline is None:
                self._inline = InlineWorker(0, replace(self._cfg, index=0, lanes=1),
                                            self._replies)
            handles = [self._inline]
        self._flights = {h.index: _Flight(h) for h in handles}
        pending, self._pending = self._pending, []
        for record in pending:
            self._dispatch(record)

    def _dispatch(self, job: ReadFile) -> None:
        size = job.node.size
        flights = list(self._flights.values())
        if size < SMALL_FILE:  # equal sizes meet in one lane: see the module docstring
            flight = flights[((size * 0x9E3779B97F4A7C15) >> 40) % len(flights)]
        else:
            flight = min(flights, key=lambda f: f.bytes)
        while flight.files >= LANE_FILES or (flight.bytes >= LANE_BYTES and flight.files):
            self._take(block=True)
        if not flight.used:
            assert self._begin is not None
            flight.used = True
            self._add(flight, self._begin, 0)
        self._add(flight, job, size)
        flight.files += 1
        if flight.batch_bytes >= BATCH_BYTES or len(flight.batch) >= BATCH_FILES \
                or flight.batches == 0:
            self._send(flight)
        self._take(block=False)

    @staticmethod
    def _add(flight: _Flight, record: Record, size: int) -> None:
        flight.batch.append(record)
        flight.batch_bytes += size
        flight.bytes += size

    def _send(self, flight: _Flight) -> None:
        if not flight.batch or flight.batches >= self.MAX_BATCHES:
            return
        batch, flight.batch, flight.batch_bytes = flight.batch, [], 0
        flight.batches += 1
        flight.handle.send(batch)

    def _take(self, block: bool) -> None:
        """Hand the lanes' replies to the committer, in order (waiting for one if
        ``block``); lanes with room get their waiting batch."""
        while True:
            try:
                index, out = self._replies.get(block=block)
            except queue.Empty:
                return
            block = False
            flight = self._flights.get(index)
            for item in out:
                if isinstance(item, WorkerFailed):
                    if item.permanent:
                        raise item.error()
                    raise CoreStateError(f"{item.message}; the backup did not complete (what "
                                         "it stored is reused by the next backup)")
                if flight is None:
                    continue  # a stale reply of a lane not in this run
                if isinstance(item, LaneReport):
                    self._reports.append(item)
                    continue
                if isinstance(item, (FileManifest, ReadFailed)) and item.path:
                    if isinstance(item, ReadFailed) or item.node.type == "file":
                        flight.files -= 1
                        flight.bytes -= item.node.size if isinstance(item, FileManifest) else 0
                    if isinstance(item, ReadFailed):
                        self._failed.append(item)
                    if self.on_result is not None:
                        self.on_result(item)
                self._to_commit(item)
            if flight is not None:
                flight.batches -= 1
                if flight.files == 0:
                    flight.bytes = 0
                self._send(flight)

    def _to_commit(self, record: Record) -> None:
        assert self._commit is not None
        self._position += 1
        try:
            for _ in self._commit.handle(0, self._position, record):
                pass  # the committed snapshot is in the stage's reports
        except RejectedEventError as exc:
            raise PermanentError(str(exc)) from None

    def close(self) -> None:
        """Stop the worker processes and the inline lane."""
        for w in self._workers:
            w.stop()
        self._workers = []
        if self._inline is not None:
            self._inline.stop()
            self._inline = None
        self._flights = {}
