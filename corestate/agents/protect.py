"""Continuous protection in one process: watch, then snapshot what changed.

*Consistency point*: a snapshot. ``Protector`` takes one right away (a *catch-up* scan:
a full walk against the latest snapshot of the same paths, which reads only files whose
size, mtime, ctime or inode changed while nothing was watching), then one whenever
something changed, at most every ``interval`` seconds.

Between consistency points the watcher reports *dirty directories* and the entries its
events named: fanotify with filesystem-wide marks where this process may use it
(:mod:`corestate.kernel.watch.fanotify`; no watch limit, no race with new directories),
else recursive inotify (:mod:`corestate.kernel.watch.inotify`); the next snapshot looks
only at the named entries of those (:mod:`corestate.pipeline.scan`) and takes every
other subtree from the previous snapshot without reading it
(:class:`~corestate.pipeline.backup.BackupCache` carries the subtree bitmaps along). An inotify queue overflow makes the next snapshot a
full scan; directories the watcher could not watch (out of inotify watches) are
rescanned whole every ``unwatched_rescan`` seconds.

Events of protect's own reads (reflink clone files) are not changes, and a snapshot
whose tree equals the last one is not saved: no snapshot without a change. If the last
snapshot is gone (forgotten and pruned), the next one lists every directory against
the parent that is left instead of trusting the watcher's changes, which were relative
to the lost one.

The watching, the cadence and the retries are the watch loop's
(:mod:`corestate.agents.watch_loop`, shared with the distributed agent); the
:class:`Protector` is its point taker. The watcher is started before the catch-up scan,
so nothing that changes during the scan is missed. :meth:`Protector.stop`
(SIGTERM/SIGINT in the CLI) ends the loop after committing what is pending.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corestate.agents.watch_loop import Cadence, Changes, WatchLoop
from corestate.kernel.blockmap import BlockMapStore
from corestate.kernel.watch import ChangeBatch
from corestate.pipeline.backup import BackupCache, BackupOptions, BackupSummary, backup
from corestate.pipeline.capture import ExcludeMatcher
from corestate.repository.repository import Repository

log = logging.getLogger("corestate.agents.protect")

# Never protected: caches hold nothing worth restoring and churn constantly.
DEFAULT_EXCLUDES = ("**/.cache", "**/__pycache__", "**/.corestate-clone-*")


@dataclass
class ProtectOptions:
    paths: list[str]
    excludes: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    interval: float = 2.0
    unwatched_rescan: float = 60.0
    hostname: str | None = None
    block_store: BlockMapStore | None = None  # block maps of big files, kept across runs
    listings: str | None = None  # where the listing caches live (BackupOptions.listings)


@dataclass(frozen=True)
class ConsistencyPoint:
    """One committed snapshot of the protect loop."""

    summary: BackupSummary
    started: float  # time.time() when the backup began reading
    committed: float  # time.time() when the snapshot was written
    full_scan: bool
    dirty_dirs: int
    changed_paths: frozenset[bytes]
    rescanned: int = 0  # directories scanned whole because they are not watched


class Protector:
    """Runs the protect loop; ``on_point`` is called after every snapshot."""

    def __init__(self, repo: Repository, opts: ProtectOptions,
                 on_point: Callable[[ConsistencyPoint], None] | None = None,
                 on_batch: Callable[[ChangeBatch], None] | None = None,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.repo = repo
        self.on_error = on_error
        self.opts = opts
        self.on_point = on_point
        self.on_batch = on_batch
        self.paths = [os.path.abspath(p) for p in opts.paths]
        self.excludes = [*DEFAULT_EXCLUDES, *opts.excludes]
        self.cache = BackupCache()
        self._stop = threading.Event()
        self._caught_up = False
        self.points: list[ConsistencyPoint] = []

    def stop(self) -> None:
        self._stop.set()

    def _backup(self, dirty: frozenset[bytes] | None, rescan: frozenset[bytes],
                changed: frozenset[bytes], fresh: frozenset[bytes] = frozenset(),
                catch_up: bool = False) -> ConsistencyPoint | None:
        opts = BackupOptions(paths=self.paths, excludes=self.excludes, tags=self.opts.tags,
                             dirty_dirs=dirty, rescan=rescan, named=changed, fresh=fresh,
                             block_store=self.opts.block_store,
                             listings=self.opts.listings,
                             skip_unchanged=not catch_up)
        if self.opts.hostname:
            opts.hostname = self.opts.hostname
        started = time.time()
        summary = backup(self.repo, opts, cache=self.cache)
        if summary.skipped:
            return None  # events, but nothing changed: no snapshot
        point = ConsistencyPoint(summary, started, time.time(), summary.full_scan,
                                 len(dirty or ()), changed, len(rescan))
        self.points.append(point)
        if self.on_point is not None:
            self.on_point(point)
        return point

    # -- the point taker of the watch loop --------------------------------------------
    def ready(self, changes: Changes) -> bool:
        return True

    def take(self, changes: Changes) -> None:
        catch_up = not self._caught_up  # the first point saves even an unchanged tree
        self._caught_up = True
        self._backup(None if changes.full else frozenset(changes.dirty),
                     frozenset(changes.rescans), frozenset(changes.named),
                     frozenset(changes.subtrees), catch_up=catch_up)

    def failed(self, exc: Exception) -> None:
        if self.on_error is not None:
            self.on_error(exc)
        self.cache.close()  # a fresh cache: the next point rescans everything
        self.cache = BackupCache()

    def tick(self) -> None:
        pass

    def run(self) -> None:
        """Protect until :meth:`stop`; returns after the last pending snapshot."""
        matcher = ExcludeMatcher(self.excludes)
        repo_dir = os.fsencode(os.path.realpath(self.repo.backend.location()))

        def excluded(path: bytes) -> bool:
            return path == repo_dir or matcher.excluded(path)

        loop = WatchLoop(self.paths, excluded, self, Cadence(
            self.opts.interval, self.opts.unwatched_rescan, retry_after=self.opts.interval),
            on_batch=self.on_batch)
        try:
            loop.run(self._stop)
        finally:
            self.cache.close()  # the backup's worker processes
