"""The watch loop: continuous capture, shared by ``corestate protect`` and the watching
``corestate agent``.

Terms:

- a *point* is one capture of what changed: a snapshot (protect) or a published run
  (agent). A :class:`PointTaker` takes it; the loop decides when;
- the *changes* (:class:`Changes`) are the watcher's batches accumulated since the last
  point: dirty directories, the entries events named, the paths to take whole (created
  or moved in, or in a directory the watcher could not watch: *rescans*), and *full*
  when only a full walk can be trusted (events lost, a watched directory itself deleted
  or moved, a point that failed);
- the *cadence*: a point is taken when changes are pending, at most every ``interval``
  seconds (counted from the start of the last one; the first change of a quiet period
  is taken at once), and when the taker is *ready* (the agent waits for its previous
  run to be committed, so the next can build on it). A point that failed makes the
  changes full and is tried again after ``retry_after`` seconds; the first point's
  failure stops the loop unless it is transient (storage or brokers away, a lock);
- *own reads*: the events CoreState's own consistent reads cause (reflink clones, see
  :func:`~corestate.kernel.reflink.own_temp`) are dropped, else every point would cause
  the next.

- *collection*: a loop holds about a million long-lived objects (the index, the trees
  kept for the next point), and each full run of Python's cyclic garbage collector
  walks them all: 0.27 s each, 4.8 s in one protect run (a catch-up of 100,000 files,
  then 25 s at 1000 changes/s). So after every point the objects alive are frozen (:func:`gc.freeze`, after a
  young collection: the point's own cyclic garbage goes first; reference counting still
  frees frozen objects), and only after the first point (the catch-up's garbage) and
  then once every ``Cadence.full_collection`` seconds are they unfrozen and collected in
  full (what cycles lived long enough to be frozen).

The watcher (fanotify where permitted, else inotify; :mod:`corestate.kernel.watch`) is
started before the first point, which is full, so nothing that changes meanwhile is
missed. Directories the watcher could not watch are rescanned whole every
``unwatched_rescan`` seconds. When ``stop`` is set, what is pending is taken (if the
taker is ready), then the loop returns.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from corestate.errors import CoreStateError, RepositoryLockedError, RetryableError
from corestate.kernel.reflink import own_temp
from corestate.kernel.watch import ChangeBatch, open_watcher

log = logging.getLogger(__name__)

MAX_NAMED = 500_000  # more changed entries remembered: the next point is full


@dataclass
class Changes:
    """What the watcher reported since a point began (see the module docstring)."""

    dirty: set[bytes] = field(default_factory=set)
    named: set[bytes] = field(default_factory=set)
    subtrees: set[bytes] = field(default_factory=set)
    rescans: set[bytes] = field(default_factory=set)
    full: bool = False

    def __bool__(self) -> bool:
        return bool(self.full or self.dirty or self.named or self.subtrees)

    def add(self, batch: ChangeBatch) -> None:
        self.dirty |= batch.dirty_dirs
        self.named |= batch.paths
        self.subtrees.update(p for p, kinds in batch.kinds.items()
                             if kinds & {"create", "move_to"})
        # lost events, or a watched directory itself deleted or moved
        self.full = self.full or batch.overflow or any(
            kinds & {"delete_self", "move_self", "unmount"} for kinds in batch.kinds.values())
        if len(self.named) > MAX_NAMED:  # so much changed that a full point costs no more
            self.full = True
            self.dirty.clear()
            self.named.clear()
            self.subtrees.clear()

    def rescan(self, directories: frozenset[bytes]) -> None:
        """Take these (unwatched) directories whole at the next point."""
        self.rescans |= directories
        self.subtrees |= directories


def without_own_reads(batch: ChangeBatch) -> ChangeBatch | None:
    """``batch`` without the events of CoreState's own consistent reads: a reflink clone
    is an unlinked temporary file in the file's directory (``O_TMPFILE``, which fanotify
    names ``#<inode>``, or a ``.corestate-clone-*`` name unlinked at once; see
    :func:`~corestate.kernel.reflink.own_temp`). None if nothing else is left."""
    kept = {p: k for p, k in batch.kinds.items() if not own_temp(os.path.basename(p))}
    if len(kept) == len(batch.kinds):
        return batch
    if not kept and not batch.overflow:
        return None
    mine = {os.path.dirname(p) for p in kept}
    named = {os.path.dirname(p) for p in batch.kinds}
    return replace(batch, paths=frozenset(kept), kinds=kept,
                   dirty_dirs=frozenset(d for d in batch.dirty_dirs if d in mine or d not in named))


class PointTaker(Protocol):
    """What the loop drives (protect's snapshots, the agent's runs)."""

    def ready(self, changes: Changes) -> bool:
        """Whether a point with these changes may be taken now."""
        ...

    def take(self, changes: Changes) -> None:
        """Take a point capturing ``changes``; raise (CoreStateError, OSError) on failure."""
        ...

    def failed(self, exc: Exception) -> None:
        """A point failed (it will be retried, full)."""
        ...

    def tick(self) -> None:
        """Called on every turn of the loop (poll feeds, flush queues)."""
        ...


def watched_roots(paths: list[str]) -> list[bytes]:
    """The directories to watch for ``paths``: a source path that is a directory, else
    the directory it is in."""
    out = set()
    for p in paths:
        path = os.fsencode(os.path.abspath(p))
        out.add(path if os.path.isdir(path) else os.path.dirname(path))
    return sorted(out)


@dataclass
class Cadence:
    """When points are taken (see the module docstring)."""

    interval: float = 2.0
    unwatched_rescan: float = 60.0
    retry_after: float = 0.0
    coalesce: float = 0.05  # a quiet period's first batch is gathered at least this long
    full_collection: float = 3600.0  # seconds between full garbage collections


class Collector:
    """The garbage collection of a watch loop (see *collection* in the module docstring)."""

    def __init__(self, full_every: float) -> None:
        self.full_every = full_every
        self._last_full = float("-inf")  # the first point (the catch-up) is collected in full

    def after_point(self) -> None:
        now = time.monotonic()
        if now - self._last_full >= self.full_every:
            gc.unfreeze()
            gc.collect()
            self._last_full = now
        else:
            gc.collect(1)
        gc.freeze()


class WatchLoop:
    """Watch ``paths`` and take points until ``stop`` (see the module docstring).
    ``on_batch`` sees every batch (the anomaly detector)."""

    def __init__(self, paths: list[str], excluded: Callable[[bytes], bool], taker: PointTaker,
                 cadence: Cadence, on_batch: Callable[[ChangeBatch], None] | None = None) -> None:
        self.roots = watched_roots(paths)
        self.excluded = excluded
        self.taker = taker
        self.cadence = cadence
        self.on_batch = on_batch

    def run(self, stop: threading.Event) -> None:
        cadence = self.cadence
        collector = Collector(cadence.full_collection)
        with open_watcher(self.roots, self.excluded) as watcher:
            watcher.start()
            changes = Changes(full=True)
            last = float("-inf")  # monotonic start of the last point
            not_before = 0.0
            last_unwatched = time.monotonic()
            while True:
                stopping = stop.is_set()
                now = time.monotonic()
                wait = max(cadence.interval - (now - last), not_before - now)
                if stopping:
                    batch = None
                elif not changes:
                    # idle: wake up now and then to see stop; the first change of a quiet
                    # period is taken at once if the interval allows
                    batch = watcher.poll(0.5, coalesce=max(wait, cadence.coalesce))
                elif wait > 0:  # pending: gather until due, never past it
                    batch = watcher.poll(min(wait, 0.25), coalesce=wait)
                elif not self.taker.ready(changes):
                    batch = watcher.poll(0.25)  # due, but the taker is not ready yet
                else:
                    batch = None  # due now; later events wait in the kernel queue
                batch = without_own_reads(batch) if batch is not None else None
                if batch is not None:
                    if self.on_batch is not None:
                        self.on_batch(batch)
                    changes.add(batch)
                unwatched = watcher.unwatched
                if unwatched and time.monotonic() - last_unwatched >= cadence.unwatched_rescan:
                    changes.rescan(unwatched)
                    last_unwatched = time.monotonic()
                self.taker.tick()
                now = time.monotonic()
                due = now - last >= cadence.interval and now >= not_before
                if changes and (due or stopping) and self.taker.ready(changes):
                    first = last == float("-inf")
                    taken, changes = changes, Changes()
                    last = time.monotonic()
                    try:
                        self.taker.take(taken)
                        collector.after_point()
                    except (CoreStateError, OSError) as exc:
                        # storage away, brokers away, lock held by prune...: nothing is
                        # lost; the next point walks everything. The first point's
                        # other errors stop the loop (a bad path, a bad repository).
                        if first and not isinstance(exc, (RetryableError,
                                                          RepositoryLockedError)):
                            raise
                        log.warning("point failed, will retry: %s", exc)
                        self.taker.failed(exc)
                        changes.full = True
                        changes.named |= taken.named
                        not_before = time.monotonic() + cadence.retry_after
                        if stopping:
                            raise
                if stopping:
                    return
