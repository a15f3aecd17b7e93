"""Object stores: the :class:`~corestate.repository.backend.Backend` protocol on a flat
namespace of named objects (S3, Azure Blob, GCS), shared by the three stores.

Terms:

- a *store* (:class:`Store`) is one vendor's client reduced to the few calls a backend
  needs: does the bucket exist, create it, head/get/put/delete/list objects. It speaks
  object *keys* and raises errors already on CoreState's tree (its module translates the
  SDK's errors); it never sees a :class:`~corestate.repository.backend.Kind`;
- the *key* of a repository file is its :func:`~corestate.repository.backend.object_path`
  under the location's prefix: ``PREFIX/data/ab/ab12...``, ``PREFIX/config`` (restic's
  layout on every object store);
- the *root* of the repository is the bucket (Azure: the container). ``exists`` asks
  whether the bucket exists; ``create`` makes it when missing (or says clearly that the
  credentials may not) and refuses when a repository (a ``config``) is already there;
- an *upload* is atomic on all three stores: an object appears whole when its single
  request or its multipart/block/resumable upload completes, never in part. So a writer
  killed mid-upload leaves nothing that a listing shows;
- *retention* (S3 Object Lock, :mod:`corestate.connectors.immutable`): when set, every
  file of a locked kind is written with a retain-until date, and a delete of a file whose
  date has not passed raises :class:`~corestate.errors.ImmutableError` before asking the
  store (on AWS, a plain delete of a locked object would "succeed" by hiding it behind a
  delete marker).

Semantics the stores differ on and this class makes uniform: deleting a missing object
is :class:`~corestate.errors.NotFoundError` (S3 answers 204 either way, so the object is
headed first); a read of zero bytes or from past the end returns ``b""``; listings are
complete however many pages they take.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from corestate.connectors.url import Location
from corestate.errors import ImmutableError, NotFoundError, PermanentError
from corestate.repository.backend import FileInfo, Kind, object_path

GOVERNANCE = "GOVERNANCE"
COMPLIANCE = "COMPLIANCE"


@dataclass(frozen=True)
class Retention:
    """Lock files for ``days`` after they are written, in S3 Object Lock ``mode``
    (GOVERNANCE: a user with the bypass permission may still remove them; COMPLIANCE:
    nobody can until the date passes)."""

    mode: str
    days: int

    # What is locked: the restic data that a restore needs (packs, index, snapshots,
    # keys, config), and the sidecar file holding this policy. Locks are deleted by
    # every run, and the rest of the sidecar is rebuildable metadata that is rewritten.
    KINDS = frozenset({Kind.DATA, Kind.INDEX, Kind.SNAPSHOTS, Kind.KEYS, Kind.CONFIG})
    SIDECAR = "immutable"

    def locks(self, kind: Kind, name: str) -> bool:
        return kind in self.KINDS or (kind is Kind.SIDECAR and name == self.SIDECAR)

    def until(self, now: float) -> float:
        return now + self.days * 86400.0


def missing_extra(what: str, extra: str) -> PermanentError:
    """The error for a store whose client library is not installed."""
    return PermanentError(f"{what} support is not installed: pip install 'corestate[{extra}]'")


class Store(Protocol):
    """One object store's client (see the module doc). Every method raises CoreState
    errors: NotFoundError, PermanentError, RetryableError."""

    def bucket_exists(self) -> bool: ...

    def create_bucket(self, object_lock: bool) -> None:
        """Create the bucket (with Object Lock enabled if asked); fine if it exists."""
        ...

    def head(self, key: str) -> int | None:
        """The object's size, or None when there is no such object."""
        ...

    def get(self, key: str, offset: int, length: int | None) -> bytes:
        """Bytes ``[offset, offset+length)`` (to the end when None); ``length`` > 0.
        ``b""`` when ``offset`` is at or past the end; NotFoundError when absent."""
        ...

    def put(self, key: str, data: bytes, retention: Retention | None, now: float) -> None:
        """Upload atomically, locked until ``retention.until(now)`` when given."""
        ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object whose key starts with ``prefix``."""
        ...

    def retained_until(self, key: str) -> float | None:
        """When the object's retention ends (seconds since the epoch), None if unlocked."""
        ...

    def object_lock_enabled(self) -> bool:
        """Whether objects in the bucket can be locked."""
        ...

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Move the object to another storage class (PermanentError where there are none)."""
        ...

    def close(self) -> None: ...


class WithoutLocks:
    """What a :class:`Store` says where the service has no Object Lock and no storage
    classes that CoreState moves (Azure, GCS here): nothing is locked, moving fails."""

    loc: object

    def retained_until(self, key: str) -> float | None:
        return None

    def object_lock_enabled(self) -> bool:
        return False

    def set_storage_class(self, key: str, storage_class: str) -> None:
        raise PermanentError(f"{self.loc}: storage classes are moved on S3 only here")


def _reopened(cls: type[ObjectStoreBackend], location: Location,
              retention: Retention | None) -> ObjectStoreBackend:
    backend = cls(location)  # type: ignore[call-arg]  # the subclasses take a location
    backend.retention = retention
    return backend


class ObjectStoreBackend:
    """A :class:`~corestate.repository.backend.Backend` on ``store`` at ``location``.
    ``retention`` (None: nothing is locked) is set when the repository is opened, by
    :func:`corestate.connectors.immutable.apply`; ``clock`` is injectable for tests."""

    supports_retention = False
    storage_classes: frozenset[str] = frozenset()  # what set_storage_class takes

    def __init__(self, location: Location, store: Store) -> None:
        self.loc = location
        self.store = store
        self.retention: Retention | None = None
        self.clock = time.time

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        """A copy for another process (the backup's and restore's workers): the same
        location and retention, with clients of its own."""
        return (_reopened, (type(self), self.loc, self.retention))

    def location(self) -> str:
        return str(self.loc)

    def key(self, kind: Kind, name: str) -> str:
        if kind is not Kind.CONFIG and (not name or "/" in name or name in (".", "..")):
            raise PermanentError(f"invalid {kind.value} file name {name!r}")
        return self.loc.key(object_path(kind, name))

    def exists(self) -> bool:
        return self.store.bucket_exists()

    def create(self) -> None:
        """Make the bucket if missing; refuse if a repository is already there."""
        if self.store.bucket_exists():
            if self.store.head(self.key(Kind.CONFIG, "")) is not None:
                raise PermanentError(f"a repository already exists at {self.location()}")
        else:
            self.store.create_bucket(object_lock=self.retention is not None)

    def list(self, kind: Kind) -> Iterator[FileInfo]:
        if kind is Kind.CONFIG:
            size = self.store.head(self.key(kind, ""))
            return iter([] if size is None else [FileInfo(kind, "config", size)])
        prefix = self.loc.key(kind.value + "/")
        found = []
        for key, size in self.store.list(prefix):
            rest = key[len(prefix):]
            # data/<2 hex>/<name>; the other kinds are flat. Anything else under the
            # prefix (a "directory" marker, a stray file) is not a repository file.
            if kind is Kind.DATA:
                sub, _, name = rest.partition("/")
                if len(sub) != 2 or not name.startswith(sub) or "/" in name:
                    continue
            else:
                name = rest
                if not name or "/" in name:
                    continue
            found.append(FileInfo(kind, name, size))
        # Collected eagerly so errors surface at the call, not half-way through a loop.
        return iter(found)

    def stat(self, kind: Kind, name: str) -> FileInfo:
        size = self.store.head(self.key(kind, name))
        if size is None:
            raise NotFoundError(f"{self._where(kind, name)} does not exist")
        return FileInfo(kind, name, size)

    def read(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"bad range: offset={offset}, length={length}")
        if length == 0:
            self.stat(kind, name)  # a missing file is still NotFoundError
            return b""
        return self.store.get(self.key(kind, name), offset, length)

    def write(self, kind: Kind, name: str, data: bytes) -> None:
        key = self.key(kind, name)
        retention = self.retention if self.retention and self.retention.locks(kind, name) else None
        try:
            self.store.put(key, bytes(data), retention, self.clock())
        except PermanentError:
            # A locked object cannot be overwritten, not even with the same bytes: an
            # earlier attempt (whose reply was lost) or an earlier run stored it. Names
            # are content addresses, so the same name and size is the same file.
            if retention is None or self.store.head(key) != len(data):
                raise

    def locked_until(self, kind: Kind, name: str) -> float | None:
        """When the file's S3 Object Lock ends, if it has not ended yet; else None."""
        if not self.supports_retention:
            return None
        until = self.store.retained_until(self.key(kind, name))
        return until if until is not None and until > self.clock() else None

    def delete(self, kind: Kind, name: str) -> None:
        key = self.key(kind, name)
        if self.store.head(key) is None:
            raise NotFoundError(f"{self._where(kind, name)} does not exist")
        until = self.locked_until(kind, name)
        if until is not None:
            raise ImmutableError(f"{self._where(kind, name)} is locked (S3 Object Lock) "
                                 f"until {_utc(until)}", until=until)
        self.store.delete(key)

    def set_storage_class(self, kind: Kind, name: str, storage_class: str) -> None:
        """Move a stored file to ``storage_class`` (one of :attr:`storage_classes`)."""
        if storage_class not in self.storage_classes:
            known = ", ".join(sorted(self.storage_classes)) or "none here"
            raise PermanentError(f"{self.location()}: no storage class {storage_class!r} "
                                 f"(the store's classes: {known})")
        self.store.set_storage_class(self.key(kind, name), storage_class)

    def close(self) -> None:
        self.store.close()

    def _where(self, kind: Kind, name: str) -> str:
        return self.loc.where(self.key(kind, name))


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
