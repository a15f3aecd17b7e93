"""Metering: a backend wrapper that times every operation of the backend it wraps.

Terms:

- the *inner* backend is the one wrapped (with its retries: a metered operation lasts
  as long as the caller waits for it);
- each operation (``exists``, ``create``, ``list``, ``stat``, ``read``, ``write``,
  ``delete``) is reported to the current recorder
  (:func:`corestate.telemetry.metrics`) with the backend's *name* (the location's
  scheme: ``local``, ``s3``, ...), its duration in seconds, whether it succeeded, and the
  bytes read or written. A listing counts until the caller has all of it.

Behaviour is the inner backend's, unchanged: the wrapper passes the backend contract
suite (``tests/connectors/test_metered.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from corestate.repository.backend import Backend, FileInfo, Kind
from corestate.telemetry import metrics

_T = TypeVar("_T")


class MeteredBackend:
    """A :class:`~corestate.repository.backend.Backend` that reports each operation."""

    def __init__(self, inner: Backend, name: str) -> None:
        self.inner = inner
        self.name = name

    def _timed(self, operation: str, call: Callable[[], _T],
               size: Callable[[_T], tuple[int, int]] = lambda _r: (0, 0)) -> _T:
        started = time.perf_counter()
        try:
            result = call()
        except BaseException:
            metrics().backend_op(self.name, operation, time.perf_counter() - started, False)
            raise
        read, written = size(result)
        metrics().backend_op(self.name, operation, time.perf_counter() - started, True,
                             read, written)
        return result

    def location(self) -> str:
        return self.inner.location()

    def exists(self) -> bool:
        return self._timed("exists", self.inner.exists)

    def create(self) -> None:
        self._timed("create", self.inner.create)

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        return iter(self._timed("list", lambda: list(self.inner.list(kind))))

    def stat(self, kind: Kind, name: str) -> FileInfo:
        return self._timed("stat", lambda: self.inner.stat(kind, name))

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._timed("read", lambda: self.inner.read(kind, name, offset, length),
                           lambda data: (len(data), 0))

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        self._timed("write", lambda: self.inner.write(kind, name, data),
                    lambda _r: (0, len(data)))

    def delete(self, kind: Kind, name: str) -> None:
        self._timed("delete", lambda: self.inner.delete(kind, name))

    def close(self) -> None:
        self.inner.close()


def metered(backend: Backend, name: str) -> Backend:
    """``backend`` metered as ``name`` when metrics are on, else ``backend`` itself."""
    return MeteredBackend(backend, name) if metrics().enabled else backend
