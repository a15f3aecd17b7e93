"""The commit stage: a snapshot is written once every file and every blob of it is in.

Terms (see also :mod:`.chunk` and :mod:`.pack`):

- a *run* is one snapshot in the making, named by its ``snapshot_id`` (the agent's or
  the embedded backup's run id, not the restic id it gets when written);
- the committer collects per run: the *manifests* (:class:`~corestate.schemas.events.FileManifest`:
  path, metadata, blob ids), the files that could not be read
  (:class:`~corestate.pipeline.jobs.ReadFailed`: left out), the forwarded *end markers*
  (one per captures partition) and the packers' *acknowledgements* (one per chunks
  partition: every blob of the run routed there is durable);
- a run is *ready* when it holds the end markers of every captures partition (so every
  manifest) and an acknowledgement from every chunks partition (so every blob). It is
  then committed (:meth:`CommitStage.commit`, whose docstring numbers the protocol);
- a run is *incremental* when its markers name a ``parent`` (a committed restic
  snapshot): it carries only what changed, and is assembled onto the parent's trees
  (:mod:`.assemble`); otherwise it is *full*;
- the *blob bitmap* of a snapshot (:mod:`corestate.repository.ordinals`) is computed
  from the trees: a built tree's from its nodes, a tree taken from the parent from the
  stage's memo of *tree bitmaps* (kept across runs, so a continuous-protection run
  costs what changed) or by loading it once.

Settling: every record of a run holds its partition until the run is committed,
rejected or abandoned (its manifests live in memory only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyroaring import BitMap

from corestate.errors import (CoreStateError, IntegrityError, NotFoundError,
                              RepositoryLockedError, RetryableError)
from corestate.pipeline.assemble import Parent, assemble, count_files
from corestate.pipeline.jobs import ReadFailed, Record
from corestate.pipeline.listings import ListingCache
from corestate.pipeline.packer import Packer
from corestate.pipeline.stage import Emit, Holds, RejectedEventError
from corestate.repository import ordinals
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.tree import Node
from corestate.repository.walk import fold
from corestate.schemas.events import (BarrierAck, FileManifest, NodeMeta, SnapshotCommitted,
                                      SnapshotMarker)

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc) - _EPOCH


def time_ns(t: datetime) -> int:
    """A marker's time as nanoseconds since the epoch."""
    return (t - _EPOCH) // _MICRO * 1000


def marker_time(ns: int) -> datetime:
    """Nanoseconds since the epoch as a marker's time (microseconds)."""
    return _EPOCH + (ns // 1000) * _MICRO


@dataclass
class _Run:
    entries: dict[bytes, NodeMeta] = field(default_factory=dict)
    contents: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict)
    unreadable: set[bytes] = field(default_factory=set)
    markers: dict[int, SnapshotMarker] = field(default_factory=dict)
    acks: dict[int, int] = field(default_factory=dict)  # packer partition -> bytes added
    ack_count: int | None = None
    last_seen: float = field(default_factory=time.monotonic)


@dataclass
class CommitReport:
    """What one commit did: the snapshot, the tree blobs it added, and the sidecar
    writes that failed (the snapshot is saved all the same)."""

    committed: SnapshotCommitted
    snapshot: Snapshot
    tree_blobs: int = 0
    tree_bytes: int = 0
    tree_packed: int = 0  # the new tree blobs as stored
    warnings: list[str] = field(default_factory=list)
    skipped: bool = False  # its tree equals its parent's: no new snapshot (the parent's id)


class CommitStage:
    """Writes a snapshot once all its manifests and every packer's acknowledgement are in.

    ``abandon_after``: a run that received nothing for this long (its agent died before
    its end markers) is dropped by :meth:`tick`. ``replay_safe``: before writing, look
    for a snapshot a replay already wrote (distributed mode; a run is committed at most
    once in embedded mode, which skips that listing). ``skip_unchanged``: a run whose
    tree equals its parent's writes no snapshot (continuous protection: no snapshot
    without a change); its report names the parent. ``reports`` holds a
    :class:`CommitReport` per commit.

    To count the files of an incremental snapshot without walking what it shares with
    its parent, the committer keeps, per host and paths, the file count of the trees of
    the last snapshot it wrote (at most ``COUNT_CACHE`` trees); likewise the bitmap of
    every tree of that snapshot."""

    COUNT_CACHE = 200_000

    def __init__(self, repo: Repository, abandon_after: float = 3600.0,
                 replay_safe: bool = True) -> None:
        self.repo = repo
        self.abandon_after = abandon_after
        self.replay_safe = replay_safe
        self.skip_unchanged = False
        self._runs: dict[str, _Run] = {}
        self._holds = Holds()
        self._counts: dict[tuple[str, tuple[str, ...]], dict[bytes, int]] = {}
        self._bitmaps: dict[bytes, BitMap] = {}
        self._hinted: dict[bytes, int] = {}  # files below trees a scan saw untouched
        self._listings: dict[bytes, list[Node]] = {}  # parent trees a scan decoded
        # where the listings of the trees a run builds go (the next scan reads them)
        self.listings: ListingCache | None = None
        self._table: ordinals.OrdinalTable | None = None
        self.reports: list[CommitReport] = []

    # -- what a scan in this process learns of untouched subtrees (Summaries) ----------
    def blob_ordinals(self, blob_ids: Iterable[bytes]) -> BitMap:
        """The bitmap of ``blob_ids`` in the repository's ordinal table."""
        if self._table is None:
            self._table = ordinals.load_table(self.repo)
        return self._table.ordinals(blob_ids)

    def subtree(self, tree_id: bytes, files: int, bitmap: BitMap) -> None:
        """A parent tree the next commit takes whole: its file count and blob bitmap,
        so that the commit need not load it."""
        self._hinted[tree_id] = files
        self._bitmaps[tree_id] = bitmap

    def listing(self, tree_id: bytes, nodes: list[Node]) -> None:
        """A parent tree the next commit rebuilds (something below it changed), as the
        scan decoded it: the commit takes it instead of loading and decoding it again."""
        self._listings[tree_id] = nodes

    # -- the Stage protocol ------------------------------------------------------------
    def settled(self, partition: int) -> int | None:
        return self._holds.settled(partition)

    def idle(self) -> bool:
        return not self._runs

    def flush(self) -> Iterator[Emit]:
        return iter(())

    def tick(self, now: float) -> Iterator[Emit]:
        """Drop the runs abandoned at ``now`` (monotonic seconds)."""
        for snapshot_id in [s for s, r in self._runs.items()
                            if now - r.last_seen > self.abandon_after]:
            log.warning("snapshot %s abandoned: nothing received for %.0fs", snapshot_id,
                        self.abandon_after)
            self._drop(snapshot_id)
        return iter(())

    def reset(self) -> None:
        self._runs.clear()
        self._holds.clear()

    def close(self) -> None:
        self.reset()

    def handle(self, partition: int, position: int, event: Record) -> Iterator[Emit]:
        self._holds.seen(partition, position)
        if isinstance(event, FileManifest):
            run = self._run(event.snapshot_id, partition, position)
            run.entries[event.path] = event.node
            if event.node.type == "file":
                run.contents[event.path] = event.blobs
        elif isinstance(event, ReadFailed):
            self._run(event.snapshot_id, partition, position).unreadable.add(event.path)
        elif isinstance(event, SnapshotMarker) and event.kind == "end" \
                and event.source_partition is not None:
            run = self._run(event.snapshot_id, partition, position)
            run.markers[event.source_partition] = event
        elif isinstance(event, BarrierAck):
            run = self._run(event.snapshot_id, partition, position)
            if event.durable:
                run.acks[event.packer_partition] = event.bytes_added
                run.ack_count = event.partition_count
        else:
            raise RejectedEventError(f"{type(event).__name__} does not belong on files or stored")
        snapshot_id = event.snapshot_id
        if self._ready(self._runs[snapshot_id]):
            run = self._runs[snapshot_id]
            try:
                report = self.commit(snapshot_id, run)
            except (RetryableError, RepositoryLockedError):
                raise  # the run is kept: the record that completed it is handled again
            except BaseException:
                self._drop(snapshot_id)
                raise
            self._drop(snapshot_id)
            yield Emit("snapshots", report.committed)

    def _run(self, snapshot_id: str, partition: int, position: int) -> _Run:
        run = self._runs.setdefault(snapshot_id, _Run())
        run.last_seen = time.monotonic()
        self._holds.hold(partition, snapshot_id, position)
        return run

    def _drop(self, snapshot_id: str) -> None:
        self._runs.pop(snapshot_id, None)
        self._holds.release(snapshot_id)

    @staticmethod
    def _ready(run: _Run) -> bool:
        if not run.markers or run.ack_count is None:
            return False
        marker = next(iter(run.markers.values()))
        return len(run.markers) >= marker.partition_count and len(run.acks) >= run.ack_count

    # -- the commit protocol -------------------------------------------------------------
    def commit(self, snapshot_id: str, run: _Run) -> CommitReport:
        """The commit protocol, in order:

        1. check that every entry the agent sent has its manifest (the count on its end
           markers), reload the index (the packers' index files) and check that every
           blob the manifests reference is in it (else the run is rejected); for an
           incremental run, load its parent snapshot (else rejected, too);
        2. build the trees in post-order (an incremental run's onto its parent's), store
           the new ones in packs, flush the packs and write their index;
        3. write the snapshot (unless, ``replay_safe``, a replay already wrote it);
        4. extend the ordinal table and write the snapshot's blob bitmap (a failure
           there is a warning: both are rebuilt from the trees when missing);
        5. return the report, with the SnapshotCommitted event to publish."""
        repo = self.repo
        marker = next(iter(run.markers.values()))
        if marker.entries is not None and len(run.entries) < marker.entries:
            raise RejectedEventError(f"snapshot {snapshot_id} not committed: {len(run.entries)} "
                                     f"of the {marker.entries} entries its agent sent arrived")
        if repo.refresh_index():
            self._bitmaps.clear()  # a prune rewrote the index: ordinals may have moved
            self._table = None
        missing = [b for blobs in run.contents.values() for b in blobs if b not in repo.index]
        if missing:  # e.g. a chunk was dead-lettered: the snapshot cannot be complete
            raise RejectedEventError(f"snapshot {snapshot_id} not committed: {len(missing)} "
                                     f"blob(s) are not in the index (first "
                                     f"{missing[0].hex()[:16]})")
        key = (marker.host, marker.paths)
        memo = dict(self._counts.get(key, {}))
        memo.update(self._hinted)
        self._hinted = {}
        listings, self._listings = self._listings, {}
        parent = self._parent(snapshot_id, marker, run, memo, listings)
        packer = Packer(repo)
        built: dict[bytes, list[Node]] = {}
        stats = [0, 0]

        def store_tree(tree_id: bytes, blob: bytes, nodes: list[Node]) -> None:
            built[tree_id] = nodes
            if not repo.has_blob(tree_id, BlobType.TREE):
                packer.add_plain(tree_id, BlobType.TREE, blob)
                stats[0] += 1
                stats[1] += len(blob)

        entries = run.entries
        if run.unreadable:
            entries = {p: m for p, m in entries.items() if p not in run.unreadable}
        try:
            assembly = assemble(entries, run.contents, store_tree, parent)
            packer.flush()
        finally:
            packer.close()
        if self.listings is not None:
            for tree_id, nodes in built.items():
                self.listings.add(tree_id, nodes)
        packed = packer.bytes_stored
        data_added = sum(run.acks.values())  # what the packers stored new for this run
        repo.flush_index()
        root = assembly.root
        memo.update(assembly.counts)
        self._counts[key] = memo if len(memo) <= self.COUNT_CACHE else dict(assembly.counts)
        when = time_ns(marker.time)
        paths = list(marker.paths)
        if self.skip_unchanged and parent is not None and marker.parent and root == parent.tree:
            same = self.repo.load_snapshot(marker.parent)
            unchanged = SnapshotCommitted(
                snapshot_id=snapshot_id, restic_id=same.id, host=marker.host,
                paths=tuple(paths), time=marker.time, tree=root.hex(), files=assembly.files,
                bytes_added=stats[1] + data_added, tags=marker.tags)
            report = CommitReport(unchanged, same, stats[0], stats[1], packed, skipped=True)
            self.reports.append(report)
            return report
        restic_id = None
        if self.replay_safe:
            restic_id = next((s.id for s in repo.list_snapshots()
                              if s.tree == root and s.time == when and s.hostname == marker.host
                              and s.paths == paths), None)
        snap = Snapshot(time=when, tree=root, paths=paths, hostname=marker.host,
                        tags=list(marker.tags), excludes=list(marker.excludes),
                        parent=marker.parent)
        if restic_id is None:
            restic_id = repo.save_snapshot(snap)
        snap.id = restic_id
        done = SnapshotCommitted(snapshot_id=snapshot_id, restic_id=restic_id, host=marker.host,
                                 paths=tuple(paths), time=marker.time, tree=root.hex(),
                                 files=assembly.files, bytes_added=stats[1] + data_added,
                                 tags=marker.tags)
        report = CommitReport(done, snap, stats[0], stats[1], packed)
        self._save_bitmap(report, built)
        self.reports.append(report)
        return report

    def _parent(self, snapshot_id: str, marker: SnapshotMarker, run: _Run,
                memo: dict[bytes, int], listings: dict[bytes, list[Node]]) -> Parent | None:
        """The parent an incremental run builds on; None for a full run. A parent that
        cannot be used (forgotten, damaged, of other paths) rejects the run: the agent,
        seeing no commit, makes its next run a full one."""
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
        stored = self.repo.load_tree

        def load(tree_id: bytes) -> list[Node]:
            taken = listings.pop(tree_id, None)  # each is taken once: memory is freed
            return stored(tree_id) if taken is None else taken

        return Parent(snap.tree, load, lambda tree_id: count_files(tree_id, load, memo),
                      rescanned=frozenset(marker.rescanned),
                      removed=frozenset(marker.removed) | run.unreadable)

    # -- blob bitmaps ----------------------------------------------------------------------
    def _save_bitmap(self, report: CommitReport, built: dict[bytes, list[Node]]) -> None:
        """Step 4 of :meth:`commit`; the tree bitmap memo keeps this snapshot's trees."""
        try:
            if self._table is None:
                self._table = ordinals.load_table(self.repo)
            table = self._table
            bitmaps: dict[bytes, BitMap] = {}
            for tree_id, nodes in built.items():  # children before their parents
                bitmaps[tree_id] = _tree_bitmap(
                    tree_id, nodes, table,
                    lambda sub: bitmaps.get(sub) or self._stored_tree_bitmap(sub, table))
            root = report.snapshot.tree
            bitmap = bitmaps.get(root) or self._stored_tree_bitmap(root, table)
            self._bitmaps = self._keep(root, bitmaps)
            for warning in (ordinals.store_table(self.repo, table),
                            ordinals.save_bitmap(self.repo, report.snapshot.id, bitmap, table)):
                if warning:
                    report.warnings.append(warning)
        except CoreStateError as exc:
            self._table = None
            report.warnings.append(f"snapshot {report.snapshot.short_id} was saved, but its "
                                   f"blob bitmap was not ({exc}); it is rebuilt when needed")

    def _stored_tree_bitmap(self, tree_id: bytes, table: ordinals.OrdinalTable) -> BitMap:
        """The bitmap of a stored tree and everything below it (memoized)."""
        def combine(tid: bytes, nodes: list[Node], memo: Mapping[bytes, BitMap]) -> BitMap:
            return _tree_bitmap(tid, nodes, table, memo.__getitem__)

        return fold(tree_id, self.repo.load_tree, self._bitmaps, combine)

    def _keep(self, root: bytes, fresh: dict[bytes, BitMap]) -> dict[bytes, BitMap]:
        """The memo for the next run: the bitmaps of the new snapshot's trees (what the
        next run of the same paths can reuse), bounded like the file counts."""
        memo = {**self._bitmaps, **fresh}
        return memo if len(memo) <= self.COUNT_CACHE else fresh


def _tree_bitmap(tree_id: bytes, nodes: list[Node], table: ordinals.OrdinalTable,
                 below: Callable[[bytes], BitMap]) -> BitMap:
    """The blob bitmap of a tree: the tree itself and its files' blobs (mapped in one
    call, not one per file), with ``below(subtree)`` for each of its directories."""
    blobs = [tree_id]
    subtrees = []
    for n in nodes:
        if n.type == "file" and n.content:
            blobs.extend(n.content)
        elif n.type == "dir" and n.subtree is not None:
            subtrees.append(below(n.subtree))
    return BitMap.union(table.ordinals(blobs), *subtrees)
