"""The metering wrapper: it passes the backend contract (with metrics on, so every
operation is also recorded), and records each operation's name, outcome, duration and
bytes on the current recorder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corestate import telemetry
from corestate.connectors.local import LocalBackend
from corestate.connectors.metered import MeteredBackend, metered
from corestate.errors import NotFoundError
from corestate.repository.backend import Backend, Kind
from tests.connectors.contract import BackendContract


class Noting(telemetry.Recorder):
    enabled = True

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []

    def backend_op(self, backend: str, operation: str, seconds: float, ok: bool,
                   read: int = 0, written: int = 0) -> None:
        self.ops.append((backend, operation, ok, read, written, seconds))


@pytest.fixture(autouse=True)
def noting() -> Iterator[Noting]:
    rec = Noting()
    previous = telemetry.install(rec)
    yield rec
    telemetry.install(previous)


class TestMeteredOverLocal(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return MeteredBackend(LocalBackend(str(root)), "local")


def test_each_operation_is_recorded_with_its_outcome_and_bytes(tmp_path: Path, noting: Noting) -> None:
    backend = MeteredBackend(LocalBackend(str(tmp_path / "repo")), "local")
    backend.create()
    backend.write(Kind.INDEX, "ab" * 32, b"12345")
    assert backend.read(Kind.INDEX, "ab" * 32, 1, 2) == b"23"
    assert [i.name for i in backend.list(Kind.INDEX)] == ["ab" * 32]
    with pytest.raises(NotFoundError):
        backend.stat(Kind.INDEX, "cd" * 32)
    ops = [op[:5] for op in noting.ops]
    assert ops == [("local", "create", True, 0, 0), ("local", "write", True, 0, 5),
                   ("local", "read", True, 2, 0), ("local", "list", True, 0, 0),
                   ("local", "stat", False, 0, 0)]
    assert all(op[5] >= 0 for op in noting.ops)


def test_metered_wraps_only_when_metrics_are_on(tmp_path: Path) -> None:
    inner = LocalBackend(str(tmp_path / "repo"))
    assert isinstance(metered(inner, "local"), MeteredBackend)
    previous = telemetry.install(telemetry.Recorder())
    try:
        assert metered(inner, "local") is inner
    finally:
        telemetry.install(previous)
