"""What a watcher is, what it reports, and the contract every implementation keeps.

Terms:

- *root*: a directory the caller asked to watch, together with everything below it.
- *excluded*: the caller's predicate on absolute directory paths; an excluded directory
  and everything below it are not watched.
- *event*: one change the kernel reports (inotify or fanotify): an entry was created,
  modified, closed after writing, re-attributed (mode, owner, times, xattrs), deleted,
  or moved from or to a directory. Its *kind* is one of ``create``, ``modify``,
  ``close_write``, ``attrib``, ``delete``, ``move_from``, ``move_to``, and for a root
  itself ``delete_self``, ``move_self``, ``unmount``.
- *dirty directory*: a directory whose listing, or one of whose direct entries, changed.
  The caller re-lists it and stats its entries instead of rescanning the whole tree; its
  subdirectories are not implied. It may no longer exist by the time the caller looks.
- *changed path*: an entry an event named; ``kinds`` says what happened to it.
- *batch*: the events of one :meth:`Watcher.poll`, coalesced into a :class:`ChangeBatch`.
- *coalescing*: after the first event, :meth:`~Watcher.poll` goes on reading while
  events keep coming: it stops when none has come for ``COALESCE_QUIET`` seconds, or
  ``coalesce`` seconds (at most ``COALESCE_MAX``) after the first.
- *overflow*: the kernel's event queue filled and events were lost. The caller must
  rescan everything; the watcher repairs its own state so that later batches are right.
- *unwatched directory*: one the watcher could not watch (out of inotify watches). The
  caller rescans those whole now and then: nothing inside them is reported.

The contract (``tests/kernel/test_watch.py`` holds every implementation to it):

1. An entry under a root is created, modified, deleted, or its attributes change: its
   parent directory is dirty and its path is a changed path. This holds for a
   directory too (its entry in the parent changed), except that a root's own attribute
   change makes the root itself dirty.
2. A rename inside the roots: both parents are dirty, the old path (``move_from``) and
   the new one (``move_to``) are changed paths, and the moved directory and every
   directory below it are dirty, since the caller has nothing recorded at the new path.
   Later events inside it are reported under the new path.
3. A move out of the roots dirties the old parent, and nothing under the old path is
   reported after it. A move in from outside is reported as in (2) at its new path:
   the new parent and every directory of the moved subtree are dirty.
4. A new directory is dirty, as is its parent, and so is every directory made inside
   it, even when it is filled before the watcher could look (``mkdir -p`` and a write).
5. A root deleted or moved away is itself dirty, with kind ``delete_self`` or
   ``move_self``.
6. Nothing outside the roots and nothing at or below an excluded directory is reported;
   an excluded directory's own entry may still dirty its parent.
7. Overflow sets :attr:`ChangeBatch.overflow`; the batch may be incomplete. Batches
   after it follow rules 1-6 again, also for directories moved while events were lost.
8. :meth:`Watcher.poll` returns None when nothing was reported within ``timeout``;
   events elsewhere on the filesystem neither end the wait nor prolong a batch.

Lifecycle: the constructor raises :class:`~corestate.errors.PermanentError` with the
reason when the watcher cannot be made; :meth:`Watcher.start` (which ``with`` calls)
begins watching, and calling it again does nothing; :meth:`Watcher.close` stops, and is
idempotent; after it ``start`` and ``poll`` raise ``ValueError``. A watcher is not
thread-safe. :class:`QueueWatcher` is that lifecycle and the coalescing poll loop,
written once for the implementations, which read one kernel queue each.
"""

from __future__ import annotations

import math
import os
import select
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

COALESCE_QUIET = 0.05
COALESCE_MAX = 0.5

# inotify's IN_* and fanotify's FAN_* event bits are the same fsnotify bits.
KIND_BITS: tuple[tuple[int, str], ...] = (
    (0x0100, "create"), (0x0002, "modify"), (0x0008, "close_write"), (0x0004, "attrib"),
    (0x0200, "delete"), (0x0040, "move_from"), (0x0080, "move_to"), (0x0400, "delete_self"),
    (0x0800, "move_self"), (0x2000, "unmount"))


@dataclass(frozen=True)
class ChangeBatch:
    """What changed during one :meth:`Watcher.poll` (terms in the module docstring).

    ``dirty_dirs`` are the absolute dirty directories to re-list; ``paths`` the changed
    paths and ``kinds`` their event kinds; ``overflow`` means events were lost and
    everything must be rescanned.
    """

    dirty_dirs: frozenset[bytes] = frozenset()
    paths: frozenset[bytes] = frozenset()
    kinds: dict[bytes, set[str]] = field(default_factory=dict)
    overflow: bool = False


class Watcher(Protocol):
    """Reports changes under its roots in batches (:class:`ChangeBatch`; see the module
    docstring for the terms and the contract).

    ``with open_watcher(roots, excluded) as w: batch = w.poll(0.5)``
    """

    def start(self) -> None:
        """Begin watching; the ``with`` statement calls it; a second call does nothing."""

    def poll(self, timeout: float, coalesce: float = COALESCE_MAX) -> ChangeBatch | None:
        """Wait up to ``timeout`` seconds for a change; return the batch coalesced for at
        most ``coalesce`` seconds (``COALESCE_MAX`` at most), or None. A caller with a
        deadline passes what is left of it as ``coalesce``."""

    @property
    def unwatched(self) -> frozenset[bytes]:
        """The directories that could not be watched, to be rescanned whole now and then."""

    def close(self) -> None:
        """Stop watching; idempotent."""

    def __enter__(self) -> Watcher: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class BatchBuilder:
    """The reported events of one poll, gathered until they become a :class:`ChangeBatch`."""

    def __init__(self) -> None:
        self.dirty: set[bytes] = set()
        self.paths: set[bytes] = set()
        self.kinds: dict[bytes, set[str]] = {}
        self.overflow = False
        self.events = 0

    def note(self, directory: bytes, path: bytes, mask: int) -> None:
        """An event on ``path`` (kinds from the fsnotify ``mask``) dirtying ``directory``."""
        self.events += 1
        self.dirty.add(directory)
        self.paths.add(path)
        self.kinds.setdefault(path, set()).update(n for bit, n in KIND_BITS if mask & bit)

    def lost(self) -> None:
        """The kernel queue overflowed."""
        self.events += 1
        self.overflow = True

    def build(self) -> ChangeBatch | None:
        if not self.events:
            return None
        return ChangeBatch(dirty_dirs=frozenset(self.dirty), paths=frozenset(self.paths),
                           kinds=self.kinds, overflow=self.overflow)


def is_under(path: bytes, prefix: bytes) -> bool:
    """Whether ``path`` is ``prefix`` or lies below it.

    >>> is_under(b"/a/b", b"/a"), is_under(b"/a", b"/a"), is_under(b"/ab", b"/a")
    (True, True, False)
    """
    return path == prefix or path.startswith(prefix if prefix.endswith(b"/") else prefix + b"/")


class QueueWatcher:
    """A :class:`Watcher` that reads one kernel event queue through a non-blocking
    descriptor ``fd``, which it owns from now on: the lifecycle and the coalescing loop.

    A subclass reads queued events into a :class:`BatchBuilder` in :meth:`_read`, noting
    only those it reports (so foreign ones neither end a wait nor prolong a batch), and
    may override :meth:`_begin` (what starting takes), :meth:`_settle` (what a batch
    needs once reading stops), :meth:`_release` (what closing frees) and ``unwatched``.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._started = False

    def start(self) -> None:
        """Begin watching; the ``with`` statement calls it; a second call does nothing."""
        self._check_open()
        if not self._started:
            self._started = True
            self._begin()

    def close(self) -> None:
        """Close the queue, which drops every watch or mark; idempotent."""
        if self._fd >= 0:
            self._poller.unregister(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._release()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def unwatched(self) -> frozenset[bytes]:
        """The directories that could not be watched; none unless a subclass says so."""
        return frozenset()

    def poll(self, timeout: float, coalesce: float = COALESCE_MAX) -> ChangeBatch | None:
        """Wait up to ``timeout`` seconds for a reported event; then read on until none
        has come for ``COALESCE_QUIET`` seconds, for at most ``coalesce`` seconds
        (capped at ``COALESCE_MAX``); return the batch, or None if nothing came."""
        self._check_open()
        batch = BatchBuilder()
        deadline = time.monotonic() + max(0.0, timeout)
        cap = max(0.0, min(coalesce, COALESCE_MAX))
        wait = max(0.0, timeout)
        first = last = 0.0
        counted = 0
        while True:
            if self._poller.poll(math.ceil(wait * 1000)):
                self._read(batch)
            now = time.monotonic()
            if not first:
                if not batch.events:
                    if now >= deadline:
                        break
                    wait = deadline - now
                    continue
                first = last = now
                counted = batch.events
            elif batch.events != counted:
                counted, last = batch.events, now
            end = min(first + cap, last + COALESCE_QUIET)
            if now >= end:
                break
            wait = end - now
        self._settle(batch)
        return batch.build()

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError("watcher is closed")

    def _read(self, batch: BatchBuilder) -> None:
        """Read what is queued (without blocking) and note the reported events in ``batch``."""
        raise NotImplementedError

    def _begin(self) -> None:
        """What starting takes; nothing by default."""

    def _settle(self, batch: BatchBuilder) -> None:
        """What a batch needs once reading stops; nothing by default."""

    def _release(self) -> None:
        """What closing frees besides the queue; nothing by default."""
