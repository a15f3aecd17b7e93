"""Continuous protection in one process: watch, then snapshot what changed.

*Consistency point*: a snapshot. ``Protector`` takes one right away (a *catch-up* scan:
a full walk against the latest snapshot of the same paths, which reads only files whose
size, mtime, ctime or inode changed while nothing was watching), then one whenever
something changed, at most every ``interval`` seconds.

Between consistency points the watcher reports *dirty directories*: fanotify with
filesystem-wide marks where this process may use it (:mod:`corestate.kernel.fanotify`;
no watch limit, no race with new directories), else recursive inotify
(:mod:`corestate.kernel.watch`); the next snapshot re-lists only those and takes every other subtree from
the previous snapshot without reading it (:class:`~corestate.pipeline.backup.BackupCache`
carries the subtree bitmaps along). An inotify queue overflow makes the next snapshot a
full scan; directories the watcher could not watch (out of inotify watches) are
rescanned whole every ``unwatched_rescan`` seconds.

The watcher is started before the catch-up scan, so nothing that changes during the
scan is missed. :meth:`Protector.stop` (SIGTERM/SIGINT in the CLI) ends the loop after
committing what is pending.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from corestate.errors import CoreStateError
from corestate.kernel.blockmap import BlockMapStore
from corestate.kernel.fanotify import open_watcher
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
        self.points: list[ConsistencyPoint] = []

    def stop(self) -> None:
        self._stop.set()

    def _backup(self, dirty: frozenset[bytes] | None, rescan: frozenset[bytes],
                changed: frozenset[bytes]) -> ConsistencyPoint:
        opts = BackupOptions(paths=self.paths, excludes=self.excludes, tags=self.opts.tags,
                             dirty_dirs=dirty, rescan=rescan, block_store=self.opts.block_store)
        if self.opts.hostname:
            opts.hostname = self.opts.hostname
        started = time.time()
        summary = backup(self.repo, opts, cache=self.cache)
        point = ConsistencyPoint(summary, started, time.time(), dirty is None,
                                 len(dirty or ()), changed, len(rescan))
        self.points.append(point)
        if self.on_point is not None:
            self.on_point(point)
        return point

    def run(self) -> None:
        """Protect until :meth:`stop`; returns after the last pending snapshot."""
        matcher = ExcludeMatcher(self.excludes)
        repo_dir = os.fsencode(os.path.realpath(self.repo.backend.location()))
        roots = [os.fsencode(p) for p in self.paths if os.path.isdir(p)]

        def excluded(path: bytes) -> bool:
            return path == repo_dir or matcher.excluded(path)

        with open_watcher(roots, excluded) as watcher:
            watcher.start()
            self._backup(None, frozenset(), frozenset())  # catch-up scan
            dirty: set[bytes] = set()
            changed: set[bytes] = set()
            full = False
            last = time.monotonic()
            last_unwatched = time.monotonic()
            while True:
                stopping = self._stop.is_set()
                wait = self.opts.interval - (time.monotonic() - last)
                if stopping:
                    batch = None
                elif not (dirty or full):
                    # idle: wake up now and then to see stop(); the first change of a
                    # quiet period is snapshotted at once if the interval allows
                    batch = watcher.poll(0.5, coalesce=max(wait, 0.05))
                elif wait > 0:  # pending: gather until due, never past it
                    batch = watcher.poll(min(wait, 0.25), coalesce=wait)
                else:
                    batch = None  # due now; later events wait in the kernel queue
                if batch is not None:
                    if self.on_batch is not None:
                        self.on_batch(batch)
                    dirty |= batch.dirty_dirs
                    changed |= batch.paths
                    full = full or batch.overflow
                rescan: frozenset[bytes] = frozenset()
                unwatched = watcher.unwatched
                if unwatched and time.monotonic() - last_unwatched >= self.opts.unwatched_rescan:
                    rescan = frozenset(unwatched)
                    last_unwatched = time.monotonic()
                due = time.monotonic() - last >= self.opts.interval
                if (dirty or full or rescan) and (due or stopping):
                    pending = frozenset(dirty)
                    dirty.clear()
                    paths, changed = frozenset(changed), set()
                    last = time.monotonic()  # the cadence counts from each snapshot's start
                    try:
                        self._backup(None if full else pending, rescan, paths)
                        full = False
                    except (CoreStateError, OSError) as exc:
                        # storage away, lock held by prune...: nothing is lost; the next
                        # consistency point rescans everything with a fresh cache
                        log.warning("snapshot failed, will retry: %s", exc)
                        if self.on_error is not None:
                            self.on_error(exc)
                        self.cache = BackupCache()
                        full = True
                        if stopping:
                            raise
                if stopping:
                    return
