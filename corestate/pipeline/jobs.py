"""Jobs: the records of the pipeline that never leave one machine, so have no Avro form.

In distributed mode an agent reads files and sends their bytes as capture events; in
embedded mode (and where an agent chunks for itself) the chunk stage reads the file
from the local disk instead. These records carry that work:

- :class:`ReadFile`: a regular file the scan found new or changed, to be read, chunked
  and stored; with the scan's metadata (the read checks the file is still that file)
  and, for a file that existed in the parent snapshot, its previous version
  (:class:`PreviousVersion`: a big file's block map is only usable against it);
- :class:`ReadFailed`: a file that could not be read (``vanished``: deleted since the
  scan, not an error). The committer leaves it out of the snapshot.

``Record`` is everything a stage may be handed: an :data:`~corestate.schemas.events.Event`
or a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from corestate.schemas.events import Event, NodeMeta


@dataclass(frozen=True)
class PreviousVersion:
    """A file as the parent snapshot holds it: size, mtime, content blob ids, and the
    device and inode it had (a block map is reused only for the same file)."""

    size: int
    mtime: int
    blobs: tuple[bytes, ...]
    device_id: int = 0
    inode: int = 0


@dataclass(frozen=True)
class ReadFile:
    """Read, chunk and store the file at ``path`` (see the module docstring)."""

    snapshot_id: str
    path: bytes
    node: NodeMeta
    previous: PreviousVersion | None = None


@dataclass(frozen=True)
class ReadFailed:
    """The file at ``path`` could not be read: left out of the snapshot."""

    snapshot_id: str
    path: bytes
    reason: str
    vanished: bool = False


Record = Union[Event, ReadFile, ReadFailed]
