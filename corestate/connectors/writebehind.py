"""Write-behind: a backend wrapper that uploads packs in the background, several at once,
so a slow or distant store never holds up chunking.

Terms:

- a pack write is *in flight* from the moment :meth:`WriteBehindBackend.write` accepts it
  (and returns) until the inner backend has stored it. At most ``uploads`` packs are in
  flight; a write beyond that waits for one to finish, which bounds the memory held to
  ``uploads`` packs (~16 MiB each);
- a *barrier* waits for every pack in flight and raises the first error any of them
  failed with (the inner backend, usually a :class:`~corestate.connectors.retry.RetryBackend`,
  has already retried it). Every call other than a pack write passes a barrier first.
  The error is *sticky*: once a pack failed, every later call raises it, because the
  caller has already counted that pack as stored (its index entry is pending) and must
  not write an index or a snapshot on top of it. A new process starts clean.

That keeps the repository's write order: the index file that lists a pack is written
only after the pack is stored, the snapshot only after its index, and a listing, read or
delete sees every pack written before it. A pack that failed to upload makes the next
index write fail, so no index ever names a pack that is not stored. Only ``data`` files
are written behind: everything else is small and ordered.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from corestate.repository.backend import Backend, FileInfo, Kind

UPLOADS = 4


class WriteBehindBackend:
    """A :class:`~corestate.repository.backend.Backend` that stores ``data`` writes of
    ``inner`` on ``uploads`` background threads (see the module doc)."""

    def __init__(self, inner: Backend, uploads: int = UPLOADS) -> None:
        if uploads < 1:
            raise ValueError(f"uploads must be at least 1, not {uploads}")
        self.inner = inner
        self.uploads = uploads
        self._pool = ThreadPoolExecutor(uploads, thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(uploads)
        self._lock = threading.Lock()
        self._in_flight: set[Future[None]] = set()
        self._error: BaseException | None = None

    def __reduce__(self) -> tuple[object, tuple[Backend, int]]:
        # a copy for a worker process: uploads of its own (it waits for them itself)
        return (WriteBehindBackend, (self.inner, self.uploads))

    def location(self) -> str:
        return self.inner.location()

    def barrier(self) -> None:
        """Wait for every pack in flight; raise the first upload error (sticky)."""
        with self._lock:
            pending = list(self._in_flight)
        for future in pending:
            future.exception()  # waits; the error is taken from _error below
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def exists(self) -> bool:
        self.barrier()
        return self.inner.exists()

    def create(self) -> None:
        self.barrier()
        self.inner.create()

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        self.barrier()
        return self.inner.list(kind)

    def stat(self, kind: Kind, name: str) -> FileInfo:
        self.barrier()
        return self.inner.stat(kind, name)

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.barrier()
        return self.inner.read(kind, name, offset, length)

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        if kind is not Kind.DATA:
            self.barrier()
            self.inner.write(kind, name, data)
            return
        with self._lock:
            error = self._error
        if error is not None:  # stop early: later packs would only be orphans
            raise error
        self._slots.acquire()
        data = bytes(data)  # the caller may reuse its buffer once we return
        try:
            future = self._pool.submit(self.inner.write, kind, name, data)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        error = future.exception()
        with self._lock:
            self._in_flight.discard(future)
            if error is not None and self._error is None:
                self._error = error
        self._slots.release()

    def delete(self, kind: Kind, name: str) -> None:
        self.barrier()
        self.inner.delete(kind, name)

    def close(self) -> None:
        try:
            self.barrier()
        finally:
            self._pool.shutdown(wait=True)
            self.inner.close()
