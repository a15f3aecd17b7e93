"""The storage backend protocol: where a repository's files live.

A *backend* stores named, immutable files grouped by *kind* (``data``, ``index``,
``keys``, ``locks``, ``snapshots``, the single ``config`` file, and CoreState's own
``corestate`` sidecar). Files are written whole and atomically: a reader sees either the
complete file or nothing. A backend knows nothing about encryption or the format.

Layout on a path-based store (restic's): ``config``, ``data/<first 2 hex of name>/<name>``,
``<kind>/<name>`` for the others. :func:`object_path` is the single place that rule lives.

Implementations live in :mod:`corestate.connectors`; wrappers (retry) implement the same
protocol; ``tests/connectors/contract.py`` is the one suite every backend passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable


class Kind(str, Enum):
    """What a stored file is; decides its directory."""

    CONFIG = "config"
    DATA = "data"
    INDEX = "index"
    KEYS = "keys"
    LOCKS = "locks"
    SNAPSHOTS = "snapshots"
    SIDECAR = "corestate"  # our own rebuildable metadata; restic ignores it


@dataclass(frozen=True)
class FileInfo:
    """A stored file: its kind, name and size in bytes."""

    kind: Kind
    name: str
    size: int


def object_path(kind: Kind, name: str) -> str:
    """The relative path of a file in restic's layout.

    >>> object_path(Kind.DATA, "ab12")
    'data/ab/ab12'
    >>> object_path(Kind.CONFIG, "")
    'config'
    >>> object_path(Kind.SNAPSHOTS, "ff")
    'snapshots/ff'
    """
    if kind is Kind.CONFIG:
        return "config"
    if kind is Kind.DATA:
        return f"data/{name[:2]}/{name}"
    return f"{kind.value}/{name}"


@runtime_checkable
class Backend(Protocol):
    """Storage for a repository's files. All methods may raise
    :class:`~corestate.errors.RetryableError` for transient failures and
    :class:`~corestate.errors.NotFoundError` for a missing file."""

    def location(self) -> str:
        """A human-readable description of where the files live (for messages)."""
        ...

    def exists(self) -> bool:
        """Whether the repository's root exists at all (it may be empty)."""
        ...

    def create(self) -> None:
        """Create the root and the directory layout; fine if it exists and is empty."""
        ...

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        """Every file of ``kind``, in no particular order."""
        ...

    def stat(self, kind: Kind, name: str) -> FileInfo:
        """Size of one file; NotFoundError if absent."""
        ...

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes from ``offset`` (to the end when ``length`` is None).
        A range past the end returns what exists (possibly fewer bytes)."""
        ...

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        """Store ``data`` atomically and durably; overwriting the same name with the
        same content is harmless (content-addressed names make writes idempotent)."""
        ...

    def delete(self, kind: Kind, name: str) -> None:
        """Remove a file; NotFoundError if absent."""
        ...

    def close(self) -> None:
        """Release connections and handles."""
        ...


class WrappedBackend:
    """A backend that passes every operation to ``inner``: the base of wrappers that
    change only some operations (read-ahead, recording reads, tests' faulty stores)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    def location(self) -> str:
        return self.inner.location()

    def exists(self) -> bool:
        return self.inner.exists()

    def create(self) -> None:
        self.inner.create()

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        return self.inner.list(kind)

    def stat(self, kind: Kind, name: str) -> FileInfo:
        return self.inner.stat(kind, name)

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.read(kind, name, offset, length)

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        self.inner.write(kind, name, data)

    def delete(self, kind: Kind, name: str) -> None:
        self.inner.delete(kind, name)

    def close(self) -> None:
        self.inner.close()
