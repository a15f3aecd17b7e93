"""Recovery point of ``corestate protect``: how long a change waits for a snapshot.

Terms:

- a *pending change* is an entry the watcher reported, with the time it was *seen* (the
  batch that named it was read: at most the watcher's coalescing window, half a second,
  after the write's close), not yet in a committed snapshot. An entry reported again
  while pending keeps its first time: the older version is the one at risk;
- a snapshot that *began* at ``started`` holds every change seen before ``started``
  (the protect loop reads the watcher in the thread that takes snapshots, so nothing is
  seen while one is taken); when it commits at ``committed``, each such change's *RPO*
  is ``committed - seen``. A failed snapshot commits nothing: its changes stay pending
  until the next one, which rescans.

>>> p = PendingChanges(clock=lambda: 100.0)
>>> p.seen([b"/a", b"/b"], at=10.0); p.seen([b"/a", b"/c"], at=12.0)
>>> p.oldest_age(), len(p)
(90.0, 3)
>>> sorted(p.committed(started=11.0, committed=15.0))
[5.0, 5.0]
>>> p.oldest_age(), len(p)
(88.0, 1)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable


class PendingChanges:
    """Thread-safe: the protect loop adds and commits, a scrape reads the age."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, paths: Iterable[bytes], at: float | None = None) -> None:
        when = self._clock() if at is None else at
        with self._lock:
            for path in paths:
                self._seen.setdefault(path, when)

    def committed(self, started: float, committed: float) -> list[float]:
        """Forget the changes a snapshot that began at ``started`` holds; their RPOs."""
        with self._lock:
            done = [p for p, t in self._seen.items() if t <= started]
            return [committed - self._seen.pop(p) for p in done]

    def oldest_age(self) -> float:
        """Seconds since the oldest pending change was seen; 0 when nothing is pending."""
        with self._lock:
            oldest = min(self._seen.values(), default=None)
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)
