"""The backend contract: the one suite every :class:`~corestate.repository.backend.Backend`
and every backend wrapper passes.

A backend's test subclasses :class:`BackendContract` and implements ``make_backend``;
pytest then runs every ``test_*`` here against it. The class name does not start with
``Test`` so the abstract suite itself is never collected.

*Names* used here are content addresses (SHA-256 hex of the content), as the repository
uses them, so data files fall into different two-hex-digit prefixes.
"""

from __future__ import annotations

import hashlib
import pickle
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corestate.errors import NotFoundError
from corestate.repository.backend import Backend, FileInfo, Kind

MIB = 1024 * 1024


def content_name(data: bytes) -> str:
    """The name the repository would give ``data``: its SHA-256 in hex."""
    return hashlib.sha256(data).hexdigest()


def name_for(kind: Kind, data: bytes) -> str:
    """The config file's name is its kind; every other file is content-addressed."""
    return "config" if kind is Kind.CONFIG else content_name(data)


def names(backend: Backend, kind: Kind) -> set[str]:
    return {info.name for info in backend.list(kind)}


class BackendContract:
    """Behaviour every backend must have. Subclasses implement :meth:`make_backend`."""

    listing_page = 1_000  # the store's page size for listings; the suite lists more

    def make_backend(self, root: Path) -> Backend:
        """A backend for a repository at ``root`` (a path, or a key for a non-file store)
        that has not been created yet."""
        raise NotImplementedError

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[Backend]:
        backend = self.make_backend(tmp_path / "repo")
        backend.create()
        yield backend
        backend.close()

    def test_implements_the_protocol(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)

    def test_a_copy_for_another_process_works_on_the_same_files(self, backend: Backend) -> None:
        # the backup's and restore's worker processes get the backend pickled
        data = b"written before the copy" * 100
        backend.write(Kind.DATA, content_name(data), data)
        assert backend.read(Kind.DATA, content_name(data)) == data  # done writing it
        copy = pickle.loads(pickle.dumps(backend))
        assert copy.location() == backend.location()
        assert copy.read(Kind.DATA, content_name(data)) == data
        more = b"written by the copy" * 100
        copy.write(Kind.DATA, content_name(more), more)
        copy.close()
        assert backend.read(Kind.DATA, content_name(more)) == more

    def test_create_on_an_empty_root(self, tmp_path: Path) -> None:
        backend = self.make_backend(tmp_path / "repo")
        assert not backend.exists()
        backend.create()
        assert backend.exists()
        for kind in Kind:
            assert list(backend.list(kind)) == []

    def test_create_again_on_an_existing_root_keeps_files(self, backend: Backend) -> None:
        backend.write(Kind.INDEX, "aa" * 32, b"index")
        backend.create()
        assert backend.exists()
        assert backend.read(Kind.INDEX, "aa" * 32) == b"index"

    @pytest.mark.parametrize("kind", list(Kind), ids=lambda kind: kind.value)
    def test_round_trip_for_every_kind(self, backend: Backend, kind: Kind) -> None:
        data = f"contents of a {kind.value} file".encode()
        name = name_for(kind, data)
        backend.write(kind, name, data)
        assert backend.read(kind, name) == data
        assert backend.stat(kind, name) == FileInfo(kind, name, len(data))
        assert list(backend.list(kind)) == [FileInfo(kind, name, len(data))]

    def test_read_ranges(self, backend: Backend) -> None:
        data = bytes(range(256)) * 4
        name = content_name(data)
        backend.write(Kind.DATA, name, data)
        assert backend.read(Kind.DATA, name, offset=10, length=5) == data[10:15]
        assert backend.read(Kind.DATA, name, offset=1000) == data[1000:]
        assert backend.read(Kind.DATA, name, length=3) == data[:3]
        assert backend.read(Kind.DATA, name, offset=7, length=0) == b""

    def test_read_ranges_past_the_end_return_what_exists(self, backend: Backend) -> None:
        data = b"0123456789"
        name = content_name(data)
        backend.write(Kind.DATA, name, data)
        assert backend.read(Kind.DATA, name, offset=8, length=100) == b"89"
        assert backend.read(Kind.DATA, name, offset=10, length=5) == b""
        assert backend.read(Kind.DATA, name, offset=50) == b""

    def test_stat_reports_sizes(self, backend: Backend) -> None:
        for size in (0, 1, 4096, 100_003):
            data = random.Random(size).randbytes(size)
            name = content_name(data)
            backend.write(Kind.DATA, name, data)
            assert backend.stat(Kind.DATA, name) == FileInfo(Kind.DATA, name, size)

    def test_list_returns_exactly_the_written_files(self, backend: Backend) -> None:
        written: dict[Kind, set[FileInfo]] = {}
        for kind in Kind:
            count = 1 if kind is Kind.CONFIG else 5
            contents = [f"{kind.value} {i}".encode() * (i + 1) for i in range(count)]
            for data in contents:
                backend.write(kind, name_for(kind, data), data)
            written[kind] = {FileInfo(kind, name_for(kind, d), len(d)) for d in contents}
        for kind in Kind:
            assert set(backend.list(kind)) == written[kind], kind

    def test_list_finds_data_under_every_prefix(self, backend: Backend) -> None:
        # Names chosen so the files land in data/00, data/7f and data/ff.
        wanted = {"00" + "1" * 62, "7f" + "2" * 62, "ff" + "3" * 62}
        for name in wanted:
            backend.write(Kind.DATA, name, name.encode())
        assert names(backend, Kind.DATA) == wanted

    def test_names_are_not_confused_across_kinds(self, backend: Backend) -> None:
        name = "ab" * 32
        backend.write(Kind.INDEX, name, b"an index")
        backend.write(Kind.SNAPSHOTS, name, b"a snapshot")
        backend.write(Kind.DATA, name, b"a pack")
        assert backend.read(Kind.INDEX, name) == b"an index"
        assert backend.read(Kind.SNAPSHOTS, name) == b"a snapshot"
        assert backend.read(Kind.DATA, name) == b"a pack"
        assert names(backend, Kind.KEYS) == set()
        backend.delete(Kind.INDEX, name)
        assert names(backend, Kind.INDEX) == set()
        assert backend.read(Kind.SNAPSHOTS, name) == b"a snapshot"
        assert backend.read(Kind.DATA, name) == b"a pack"

    def test_overwrite_with_the_same_content_is_harmless(self, backend: Backend) -> None:
        data = b"the same pack twice"
        name = content_name(data)
        backend.write(Kind.DATA, name, data)
        backend.write(Kind.DATA, name, data)
        assert backend.read(Kind.DATA, name) == data
        assert list(backend.list(Kind.DATA)) == [FileInfo(Kind.DATA, name, len(data))]

    def test_delete_removes_only_that_file(self, backend: Backend) -> None:
        gone, kept = b"to delete", b"to keep"
        backend.write(Kind.LOCKS, content_name(gone), gone)
        backend.write(Kind.LOCKS, content_name(kept), kept)
        backend.delete(Kind.LOCKS, content_name(gone))
        assert names(backend, Kind.LOCKS) == {content_name(kept)}
        with pytest.raises(NotFoundError):
            backend.read(Kind.LOCKS, content_name(gone))
        with pytest.raises(NotFoundError):
            backend.stat(Kind.LOCKS, content_name(gone))
        with pytest.raises(NotFoundError):
            backend.delete(Kind.LOCKS, content_name(gone))
        assert backend.read(Kind.LOCKS, content_name(kept)) == kept

    def test_missing_files_are_not_found(self, backend: Backend) -> None:
        for kind in Kind:
            with pytest.raises(NotFoundError):
                backend.read(kind, "cd" * 32)
            with pytest.raises(NotFoundError):
                backend.stat(kind, "cd" * 32)
            with pytest.raises(NotFoundError):
                backend.delete(kind, "cd" * 32)

    def test_large_file_round_trip(self, backend: Backend) -> None:
        data = random.Random(20).randbytes(20 * MIB)
        name = content_name(data)
        backend.write(Kind.DATA, name, data)
        assert backend.stat(Kind.DATA, name).size == 20 * MIB
        assert content_name(backend.read(Kind.DATA, name)) == name
        assert backend.read(Kind.DATA, name, offset=13 * MIB, length=MIB) == data[13 * MIB : 14 * MIB]

    def test_listing_of_more_than_a_thousand_files(self, backend: Backend) -> None:
        # Object stores page listings (S3, GCS by 1,000, Azure by 5,000): every page counts.
        contents = [f"lock {i}".encode() for i in range(self.listing_page + 100)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda d: backend.write(Kind.LOCKS, content_name(d), d), contents))
        listed = list(backend.list(Kind.LOCKS))
        assert len(listed) == len(contents)
        assert {info.name for info in listed} == {content_name(d) for d in contents}

    def test_concurrent_writes_of_different_files(self, backend: Backend) -> None:
        contents = [random.Random(i).randbytes(10_000 + i) for i in range(64)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda d: backend.write(Kind.DATA, content_name(d), d), contents))
        assert names(backend, Kind.DATA) == {content_name(d) for d in contents}
        for data in contents:
            assert backend.read(Kind.DATA, content_name(data)) == data
