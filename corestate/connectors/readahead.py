"""Read-ahead: a backend wrapper that reads packs from an object store in windows of a
few MiB, so that a restore or a tree walk asking for one blob after another costs one
request per window rather than one per blob.

Terms:

- a *window* is the range ``[i * window, (i + 1) * window)`` of one pack (the last one
  ends with the pack). A read of a range inside one window fetches the whole window
  (once: concurrent readers of the same window wait for the one fetch) and keeps it;
  later reads inside it are served from memory;
- the *cache* keeps the ``windows`` most recently used windows (least recently used out
  first), so memory stays below ``windows x window`` bytes;
- only ``data`` files are read ahead: they are immutable (named by their content), so a
  kept window can never be stale. Reads of a whole file, or of a range spanning
  windows, go straight to the inner backend.

Why it pays: a request to an object store costs tens of milliseconds however small it
is, while a few MiB more transfer in about as long; blobs that are read together (a
file's chunks, a directory's trees) were written together, into the same pack.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from corestate.repository.backend import Backend, Kind, WrappedBackend

MiB = 1 << 20
WINDOW = 4 * MiB
WINDOWS = 16


class _Fetch:
    """One window being fetched: readers wait on ``done``; ``data`` or ``error`` is set."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data = b""
        self.error: BaseException | None = None


class ReadAheadBackend(WrappedBackend):
    """A :class:`~corestate.repository.backend.Backend` that reads ``inner``'s packs in
    windows of ``window`` bytes and keeps the last ``windows`` of them (see the module doc)."""

    def __init__(self, inner: Backend, window: int = WINDOW, windows: int = WINDOWS) -> None:
        if window < 1 or windows < 1:
            raise ValueError("window and windows must be at least 1")
        super().__init__(inner)
        self.window = window
        self.windows = windows
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._fetching: dict[tuple[str, int], _Fetch] = {}
        self.fetches = 0  # windows fetched from the inner backend (for tests)

    def __reduce__(self) -> tuple[object, tuple[Backend, int, int]]:
        # a copy for a worker process: the same windows, a cache of its own
        return (ReadAheadBackend, (self.inner, self.window, self.windows))

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if kind is not Kind.DATA or length is None or length <= 0 or offset < 0:
            return self.inner.read(kind, name, offset, length)
        index = offset // self.window
        if (offset + length - 1) // self.window != index:
            return self.inner.read(kind, name, offset, length)
        start = offset - index * self.window
        return self._window(name, index)[start:start + length]

    def _window(self, name: str, index: int) -> bytes:
        key = (name, index)
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
            fetch = self._fetching.get(key)
            mine = fetch is None
            if fetch is None:
                fetch = self._fetching[key] = _Fetch()
        if not mine:
            fetch.done.wait()
            if fetch.error is not None:
                raise fetch.error
            return fetch.data
        try:
            fetch.data = self.inner.read(Kind.DATA, name, index * self.window, self.window)
        except BaseException as exc:
            fetch.error = exc
            raise
        finally:
            with self._lock:
                del self._fetching[key]
                if fetch.error is None:
                    self.fetches += 1
                    self._cache[key] = fetch.data
                    while len(self._cache) > self.windows:
                        self._cache.popitem(last=False)
            fetch.done.set()
        return fetch.data

    def delete(self, kind: Kind, name: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == name]:
                del self._cache[key]
        self.inner.delete(kind, name)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        self.inner.close()
