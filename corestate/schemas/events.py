"""The typed events of distributed mode: one frozen dataclass per Avro record schema.

The ``.avsc`` files beside this module are the source of truth; each class here mirrors
one of them field by field, in order (``tests/schemas/test_events.py`` checks names, types,
optionality and defaults). Terms:

- an *event* is a top-level record that travels on a topic as one Kafka record
  (:data:`EVENT_TYPES`); a *nested record* (:class:`NodeMeta`, :class:`Xattr`,
  :class:`AlertFeature`) only occurs inside events;
- Avro ``array`` is a ``tuple`` (events are immutable and hashable), ``bytes`` and
  ``fixed`` are ``bytes``, an ``enum`` is a ``Literal`` of its symbols, a union with
  ``null`` is ``X | None``, ``timestamp-micros`` is a timezone-aware ``datetime``;
- times of file system entries (``mtime``, ``atime``, ``ctime``) are plain ``int``
  nanoseconds since the epoch, as restic keeps them;
- paths are raw ``bytes``; names shown to people (host, user, snapshot paths) are ``str``.

>>> seg = DataSegment(host="h1", snapshot_id="run-1", path=b"/etc/hosts", seq=0, offset=0,
...                   data=b"127.0.0.1 localhost\\n")
>>> seg.data[:9], len(seg.data) <= MAX_SEGMENT
(b'127.0.0.1', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeAlias

from corestate.schemas.errors import InvalidEventError

MAX_SEGMENT = 1 << 20
"""Most bytes of file content one :class:`DataSegment` carries."""

MAX_CHUNK = 8 << 20
"""Most bytes one :class:`Chunk` carries (the chunker's maximum chunk size)."""

MarkerKind: TypeAlias = Literal["begin", "end"]


@dataclass(frozen=True, slots=True)  # slotted: a backup holds one per entry until its commit
class Xattr:
    """One extended attribute."""

    name: str
    value: bytes


@dataclass(frozen=True, slots=True)
class NodeMeta:
    """A file system entry's metadata as a restic tree node records it (not its content)."""

    type: str
    mode: int
    mtime: int
    atime: int
    ctime: int
    uid: int
    gid: int
    user: str = ""
    group: str = ""
    inode: int = 0
    device_id: int = 0
    size: int = 0
    links: int = 0
    linktarget: bytes = b""
    device: int = 0
    xattrs: tuple[Xattr, ...] = ()


@dataclass(frozen=True)
class AlertFeature:
    """One model feature and its value when an alert was raised."""

    name: str
    value: float


@dataclass(frozen=True)
class FileBegin:
    """A captured entry starts; its content (if any) follows as :class:`DataSegment` s."""

    host: str
    snapshot_id: str
    path: bytes
    node: NodeMeta


@dataclass(frozen=True)
class DataSegment:
    """Up to :data:`MAX_SEGMENT` bytes of a file's content at ``offset``."""

    host: str
    snapshot_id: str
    path: bytes
    seq: int
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        if len(self.data) > MAX_SEGMENT:
            raise InvalidEventError(f"a data segment carries at most {MAX_SEGMENT} bytes, "
                                    f"not {len(self.data)}")


@dataclass(frozen=True)
class FileEnd:
    """A captured entry is complete; ``segments`` segments were sent for it."""

    host: str
    snapshot_id: str
    path: bytes
    size: int
    segments: int
    consistent: bool
    sha256: bytes | None = None


@dataclass(frozen=True)
class Delete:
    """An entry of the previous snapshot is gone."""

    host: str
    snapshot_id: str
    path: bytes


@dataclass(frozen=True)
class Rename:
    """An entry moved from ``old_path`` to ``path``."""

    host: str
    snapshot_id: str
    path: bytes
    old_path: bytes


@dataclass(frozen=True)
class SnapshotMarker:
    """A barrier that opens (``begin``) or closes (``end``) a snapshot on every partition.

    ``parent`` None: a full run. Else an incremental run: the restic id of the snapshot it
    builds on, in ``rescanned`` the directories whose whole listing it carries, and in
    ``removed`` the parent's entries that are gone. ``excludes``: the patterns the run
    applied, recorded in the snapshot. ``entries`` (end markers from an agent): how many
    entries the whole run sent, so that the committer can tell a complete run from one
    that lost a manifest on the way."""

    host: str
    snapshot_id: str
    kind: MarkerKind
    paths: tuple[str, ...]
    partition_count: int
    time: datetime
    tags: tuple[str, ...] = ()
    source_partition: int | None = None
    parent: str | None = None
    rescanned: tuple[bytes, ...] = ()
    removed: tuple[bytes, ...] = ()
    excludes: tuple[str, ...] = ()
    entries: int | None = None


@dataclass(frozen=True)
class Chunk:
    """One chunk's bytes, named by its blob id (SHA-256 of the plaintext)."""

    blob_id: bytes
    snapshot_id: str
    data: bytes
    source_partition: int


@dataclass(frozen=True, slots=True)
class FileManifest:
    """One entry of a snapshot: metadata plus its content's blob ids in order."""

    snapshot_id: str
    path: bytes
    node: NodeMeta
    blobs: tuple[bytes, ...]


@dataclass(frozen=True)
class BarrierAck:
    """A packer partition's "all of this snapshot that reached me is durable"."""

    snapshot_id: str
    packer_partition: int
    durable: bool
    partition_count: int
    bytes_added: int = 0  # new blobs' plaintext bytes of this snapshot on this partition


@dataclass(frozen=True)
class SnapshotCommitted:
    """A snapshot is in the repository, every blob it references durable."""

    snapshot_id: str
    restic_id: str
    host: str
    paths: tuple[str, ...]
    time: datetime
    tree: str
    files: int
    bytes_added: int
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alert:
    """Ransomware-like behaviour on a host, with the evidence and where to restore from."""

    time: datetime
    host: str
    score: float
    reason: str
    top_features: tuple[AlertFeature, ...] = ()
    paths: tuple[bytes, ...] = ()
    clean_snapshot: str | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be processed, kept with the reason."""

    topic: str
    partition: int
    offset: int
    reason: str
    time: datetime
    key: bytes | None = None
    value: bytes | None = None


Event: TypeAlias = (FileBegin | DataSegment | FileEnd | Delete | Rename | SnapshotMarker | Chunk
                    | FileManifest | BarrierAck | SnapshotCommitted | Alert | DeadLetter)

EVENT_TYPES: tuple[type[Event], ...] = (
    FileBegin, DataSegment, FileEnd, Delete, Rename, SnapshotMarker, Chunk, FileManifest,
    BarrierAck, SnapshotCommitted, Alert, DeadLetter)
"""Every event type; each has ``<name>.avsc`` beside this module."""

NESTED_TYPES: tuple[type[NodeMeta | Xattr | AlertFeature], ...] = (NodeMeta, Xattr, AlertFeature)
"""Records that occur only inside events."""
