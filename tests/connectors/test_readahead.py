"""Read-ahead: the wrapper passes the backend contract (with windows small enough that
ranges cross them), reads a run of blobs with one request per window, and fetches a
window once however many readers want it at the same time."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from corestate.connectors.local import LocalBackend
from corestate.connectors.readahead import ReadAheadBackend
from corestate.repository.backend import Backend, FileInfo, Kind
from tests.connectors.contract import BackendContract, content_name


class TestReadAheadOverLocal(BackendContract):
    def make_backend(self, root: Path) -> Backend:
        return ReadAheadBackend(LocalBackend(root), window=7, windows=3)


class CountingBackend(LocalBackend):
    """A directory backend that counts the reads it serves, and can hold them up."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: Counter[tuple[Kind, str]] = Counter()
        self.gate = threading.Event()
        self.gate.set()

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.reads[kind, name] += 1
        self.gate.wait(30)
        return super().read(kind, name, offset, length)

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        return super().list(kind)


def test_a_run_of_small_reads_costs_one_request_per_window(tmp_path: Path) -> None:
    inner = CountingBackend(tmp_path / "repo")
    inner.create()
    pack = bytes(range(256)) * 4096  # 1 MiB
    name = content_name(pack)
    inner.write(Kind.DATA, name, pack)
    backend = ReadAheadBackend(inner, window=256 * 1024, windows=2)
    for offset in range(0, len(pack), 1000):
        length = min(1000, (offset // (256 * 1024) + 1) * 256 * 1024 - offset)
        assert backend.read(Kind.DATA, name, offset, length) == pack[offset:offset + length]
    assert inner.reads[Kind.DATA, name] == 4  # one per 256 KiB window
    assert backend.read(Kind.DATA, name) == pack  # a whole file: straight through
    backend.write(Kind.INDEX, "ab" * 32, b"index")
    for _ in range(3):
        assert backend.read(Kind.INDEX, "ab" * 32, 1, 2) == b"nd"  # not data: never kept
    assert inner.reads[Kind.INDEX, "ab" * 32] == 3


def test_concurrent_readers_of_a_window_share_one_fetch(tmp_path: Path) -> None:
    inner = CountingBackend(tmp_path / "repo")
    inner.create()
    pack = b"x" * 100_000
    inner.write(Kind.DATA, content_name(pack), pack)
    backend = ReadAheadBackend(inner, window=65536)
    inner.gate.clear()
    got: list[bytes] = []
    readers = [threading.Thread(target=lambda i=i: got.append(
        backend.read(Kind.DATA, content_name(pack), i * 100, 50))) for i in range(8)]
    for t in readers:
        t.start()
    inner.gate.set()
    for t in readers:
        t.join(30)
    assert got == [b"x" * 50] * 8
    assert inner.reads[Kind.DATA, content_name(pack)] == 1
