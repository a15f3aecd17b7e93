"""The retry wrapper: it passes the backend contract around a real backend, and a flaky
inner backend (injected faults are the one thing a fake is for) shows what is retried,
how often, and how long it waits."""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from corestate.connectors.local import LocalBackend
from corestate.connectors.retry import RetryBackend
from corestate.errors import (
    CoreStateError,
    IntegrityError,
    NotFoundError,
    PermanentError,
    RetryableError,
)
from corestate.repository.backend import Backend, FileInfo, Kind
from tests.connectors.contract import BackendContract

NAME = "ab" * 32


class TestRetryOverLocal(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return RetryBackend(LocalBackend(root), sleep=lambda seconds: None)


class FlakyBackend:
    """A real backend that first raises the queued ``faults``, one per call."""

    def __init__(self, inner: Backend, faults: Iterable[CoreStateError] = ()) -> None:
        self.inner = inner
        self.faults = deque(faults)
        self.calls: Counter[str] = Counter()
        self.fault_after_delete = False  # delete, then lose the reply
        self.fault_mid_list = False  # fail after yielding part of a listing

    def _call(self, operation: str) -> None:
        self.calls[operation] += 1
        if self.faults:
            raise self.faults.popleft()

    def location(self) -> str:
        return self.inner.location()

    def exists(self) -> bool:
        self._call("exists")
        return self.inner.exists()

    def create(self) -> None:
        self._call("create")
        self.inner.create()

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        if not self.fault_mid_list:
            self._call("list")
            return self.inner.list(kind)
        self.calls["list"] += 1
        return self._list_then_fail(kind)

    def _list_then_fail(self, kind: Kind) -> Iterator[FileInfo]:
        yield from self.inner.list(kind)
        if self.faults:
            raise self.faults.popleft()

    def stat(self, kind: Kind, name: str) -> FileInfo:
        self._call("stat")
        return self.inner.stat(kind, name)

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._call("read")
        return self.inner.read(kind, name, offset, length)

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        self._call("write")
        self.inner.write(kind, name, data)

    def delete(self, kind: Kind, name: str) -> None:
        if self.fault_after_delete:
            self.calls["delete"] += 1
            self.inner.delete(kind, name)
            if self.faults:
                raise self.faults.popleft()
            return
        self._call("delete")
        self.inner.delete(kind, name)

    def close(self) -> None:
        self.inner.close()


def transient(count: int) -> list[CoreStateError]:
    return [RetryableError(f"timeout #{i + 1}") for i in range(count)]


@pytest.fixture
def flaky(tmp_path: Path) -> FlakyBackend:
    inner = LocalBackend(tmp_path / "repo")
    inner.create()
    inner.write(Kind.DATA, NAME, b"pack")
    return FlakyBackend(inner)


def test_the_fake_is_a_backend(flaky: FlakyBackend) -> None:
    assert isinstance(flaky, Backend)


def test_retries_transient_failures_then_succeeds(flaky: FlakyBackend) -> None:
    sleeps: list[float] = []
    flaky.faults.extend(transient(4))
    backend = RetryBackend(flaky, attempts=5, sleep=sleeps.append)
    assert backend.read(Kind.DATA, NAME) == b"pack"
    assert flaky.calls["read"] == 5
    assert len(sleeps) == 4


def test_gives_up_after_the_last_attempt(flaky: FlakyBackend) -> None:
    sleeps: list[float] = []
    flaky.faults.extend(transient(10))
    backend = RetryBackend(flaky, attempts=5, sleep=sleeps.append)
    with pytest.raises(RetryableError) as raised:
        backend.write(Kind.INDEX, NAME, b"index")
    message = str(raised.value)
    assert "5 attempts failed" in message
    assert "timeout #5" in message  # the last cause
    assert "index/" + NAME in message
    assert flaky.calls["write"] == 5
    assert len(sleeps) == 4  # no pointless pause after the final attempt


@pytest.mark.parametrize(
    "fault",
    [PermanentError("bad password"), NotFoundError("gone"), IntegrityError("bad MAC")],
    ids=lambda fault: type(fault).__name__,
)
def test_permanent_errors_are_not_retried(flaky: FlakyBackend, fault: CoreStateError) -> None:
    sleeps: list[float] = []
    flaky.faults.append(fault)
    with pytest.raises(type(fault)) as raised:
        RetryBackend(flaky, sleep=sleeps.append).stat(Kind.DATA, NAME)
    assert raised.value is fault
    assert flaky.calls["stat"] == 1
    assert sleeps == []


def test_a_real_missing_file_is_not_retried(flaky: FlakyBackend) -> None:
    sleeps: list[float] = []
    with pytest.raises(NotFoundError):
        RetryBackend(flaky, sleep=sleeps.append).read(Kind.DATA, "cd" * 32)
    assert flaky.calls["read"] == 1
    assert sleeps == []


def test_backoff_grows_exponentially_with_jitter(flaky: FlakyBackend) -> None:
    sleeps: list[float] = []
    flaky.faults.extend(transient(5))
    backend = RetryBackend(flaky, attempts=6, base_delay=0.1, max_delay=100, sleep=sleeps.append)
    backend.exists()
    assert len(sleeps) == 5
    for failures, pause in enumerate(sleeps, start=1):
        ceiling = 0.1 * 2 ** (failures - 1)
        assert ceiling / 2 <= pause <= ceiling
    assert all(later >= earlier for earlier, later in zip(sleeps, sleeps[1:]))
    assert sleeps[-1] > 4 * sleeps[0]


def test_backoff_is_capped_and_seeded(flaky: FlakyBackend) -> None:
    def pauses(seed: int, max_delay: float) -> list[float]:
        backend = RetryBackend(flaky, base_delay=1, max_delay=max_delay, rng=random.Random(seed))
        return [backend.backoff(failures) for failures in range(1, 12)]

    assert max(pauses(1, max_delay=2.5)) <= 2.5
    assert pauses(1, max_delay=100) == pauses(1, max_delay=100)
    assert pauses(1, max_delay=100) != pauses(2, max_delay=100)  # the jitter is real


def test_each_retry_is_logged(flaky: FlakyBackend, caplog: pytest.LogCaptureFixture) -> None:
    flaky.faults.extend(transient(3))
    with caplog.at_level(logging.WARNING, logger="corestate.connectors.retry"):
        RetryBackend(flaky, sleep=lambda seconds: None).list(Kind.DATA)
    retries = [r for r in caplog.records if r.name == "corestate.connectors.retry"]
    assert len(retries) == 3
    assert "timeout #3" in retries[-1].getMessage()
    assert "attempt 3 of 5" in retries[-1].getMessage()


def test_list_is_retried_and_complete(flaky: FlakyBackend) -> None:
    flaky.faults.extend(transient(2))
    listed = list(RetryBackend(flaky, sleep=lambda seconds: None).list(Kind.DATA))
    assert listed == [FileInfo(Kind.DATA, NAME, 4)]
    assert flaky.calls["list"] == 3


def test_a_listing_that_fails_half_way_starts_over(flaky: FlakyBackend) -> None:
    flaky.fault_mid_list = True
    flaky.faults.extend(transient(1))
    listed = list(RetryBackend(flaky, sleep=lambda seconds: None).list(Kind.DATA))
    assert listed == [FileInfo(Kind.DATA, NAME, 4)]
    assert flaky.calls["list"] == 2


def test_delete_whose_reply_was_lost_succeeds(flaky: FlakyBackend) -> None:
    flaky.fault_after_delete = True
    flaky.faults.extend(transient(1))
    RetryBackend(flaky, sleep=lambda seconds: None).delete(Kind.DATA, NAME)
    assert flaky.calls["delete"] == 2
    with pytest.raises(NotFoundError):
        flaky.inner.stat(Kind.DATA, NAME)


def test_at_least_one_attempt(flaky: FlakyBackend) -> None:
    with pytest.raises(ValueError):
        RetryBackend(flaky, attempts=0)
