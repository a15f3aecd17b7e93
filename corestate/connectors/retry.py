"""Retrying: a backend wrapper that repeats operations which failed transiently.

Terms:

- *attempt*: one call to the wrapped (*inner*) backend. An operation makes at most
  ``attempts`` of them.
- *transient failure*: a :class:`~corestate.errors.RetryableError`, the only error that is
  retried. :class:`~corestate.errors.PermanentError` (and its
  :class:`~corestate.errors.NotFoundError`) and :class:`~corestate.errors.IntegrityError`
  pass straight through: repeating cannot change their answer, and damaged data must
  reach the user as it was reported.
- *backoff*: the pause after the n-th failed attempt, drawn uniformly from ``[d/2, d]``
  where ``d = min(max_delay, base_delay * 2**(n-1))`` ("equal jitter"). It grows
  exponentially so a struggling store gets room to recover, and the random half keeps
  many agents that failed at the same moment from retrying in lockstep.

Every write is safe to repeat because names are content addresses, so all operations are
retried alike; :meth:`RetryBackend.delete` treats "not found" after a transient failure as
success, since the failed attempt may have deleted the file before its reply was lost.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from corestate.errors import NotFoundError, RetryableError
from corestate.repository.backend import Backend, FileInfo, Kind, object_path

_log = logging.getLogger(__name__)

_T = TypeVar("_T")


class RetryBackend:
    """A :class:`~corestate.repository.backend.Backend` that retries ``inner``'s transient
    failures with exponential backoff; ``sleep`` and ``rng`` are injectable for tests."""

    def __init__(
        self,
        inner: Backend,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must not be negative")
        self.inner = inner
        self.attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()

    def __reduce__(self) -> tuple[object, tuple[Backend, int, float, float]]:
        # a copy for a worker process: the same budget, its own clock and dice
        return (RetryBackend, (self.inner, self.attempts, self._base_delay, self._max_delay))

    def backoff(self, failures: int) -> float:
        """The pause, in seconds, after the ``failures``-th failed attempt."""
        # The exponent is capped so a huge attempt count cannot overflow a float.
        ceiling = min(self._max_delay, self._base_delay * 2.0 ** min(failures - 1, 60))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def location(self) -> str:
        return self.inner.location()

    def exists(self) -> bool:
        return self._retry("exists", self.inner.exists)

    def create(self) -> None:
        self._retry("create", self.inner.create)

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        # Materialised inside the retry: a listing that fails half-way must start over,
        # not hand the caller a partial result.
        found = self._retry(f"list {kind.value}", lambda: list(self.inner.list(kind)))
        return iter(found)

    def stat(self, kind: Kind, name: str) -> FileInfo:
        return self._retry(f"stat {object_path(kind, name)}", lambda: self.inner.stat(kind, name))

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry(
            f"read {object_path(kind, name)}",
            lambda: self.inner.read(kind, name, offset, length),
        )

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        self._retry(f"write {object_path(kind, name)}", lambda: self.inner.write(kind, name, data))

    def delete(self, kind: Kind, name: str) -> None:
        failed_before = False

        def attempt() -> None:
            nonlocal failed_before
            try:
                self.inner.delete(kind, name)
            except NotFoundError:
                if not failed_before:
                    raise
                # The earlier attempt deleted it but its reply was lost: done.
            except RetryableError:
                failed_before = True
                raise

        self._retry(f"delete {object_path(kind, name)}", attempt)

    def close(self) -> None:
        self.inner.close()

    def _retry(self, what: str, operation: Callable[[], _T]) -> _T:
        """Run ``operation``, retrying transient failures; ``what`` names it in messages."""
        failures = 0
        while True:
            try:
                return operation()
            except RetryableError as err:
                failures += 1
                if failures >= self.attempts:
                    raise RetryableError(
                        f"{what} at {self.inner.location()}: all {failures} attempts failed; "
                        f"last error: {err}",
                        exit_code=err.exit_code,
                    ) from err
                pause = self.backoff(failures)
                _log.warning(
                    "%s at %s failed (attempt %d of %d): %s; retrying in %.2fs",
                    what,
                    self.inner.location(),
                    failures,
                    self.attempts,
                    err,
                    pause,
                )
                self._sleep(pause)
