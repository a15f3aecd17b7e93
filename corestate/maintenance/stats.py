"""Stats: how big snapshots are, and what the repository holds, as ``restic stats`` tells.

Terms:

- *restore size* (mode ``restore-size``, restic's default): what restoring the snapshots
  would write. ``total_size`` sums the ``size`` of every node, a file hardlinked several
  times (same inode and device, inode not 0) counted once per snapshot;
  ``total_file_count`` counts every node, directories and symlinks included (restic
  0.14 does both).
- *raw data* (mode ``raw-data``): the stored blobs the snapshots reference, each counted
  once however many snapshots share it: the union of their blob bitmaps
  (:mod:`.usage`), mapped back to blob ids by the ordinal table. ``total_size`` is
  their stored (compressed, encrypted) length, ``total_uncompressed_size`` their
  plaintext length plus the 32 bytes of encryption overhead (restic's definition), and
  ``compression_ratio`` the second over the first.
- *repository totals*: every pack and indexed blob, referenced or not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from corestate.errors import NotFoundError
from corestate.maintenance import ProgressFn, no_progress
from corestate.maintenance.usage import blob_ids, snapshot_usage, union
from corestate.repository import ordinals
from corestate.repository.backend import Kind
from corestate.repository.crypto import OVERHEAD
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.walk import OnError, walk

MODES = ("restore-size", "raw-data")


@dataclass
class RepositoryTotals:
    """Everything stored, referenced or not."""

    packs: int = 0
    pack_bytes: int = 0
    blobs: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    stored_bytes: int = 0
    uncompressed_bytes: int = 0

    @property
    def compression_ratio(self) -> float:
        return self.uncompressed_bytes / self.stored_bytes if self.stored_bytes else 0.0

    def to_json(self) -> dict[str, object]:
        return {"packs": self.packs, "pack_bytes": self.pack_bytes, "blobs": self.blobs,
                "data_blobs": self.data_blobs, "tree_blobs": self.tree_blobs,
                "stored_bytes": self.stored_bytes, "uncompressed_bytes": self.uncompressed_bytes,
                "compression_ratio": self.compression_ratio}


@dataclass
class Stats:
    mode: str
    snapshots_count: int = 0
    total_size: int = 0
    total_file_count: int = 0
    total_blob_count: int = 0
    total_uncompressed_size: int = 0
    repository: RepositoryTotals = field(default_factory=RepositoryTotals)

    @property
    def compression_ratio(self) -> float:
        return self.total_uncompressed_size / self.total_size if self.total_size else 0.0

    def to_json(self) -> dict[str, object]:
        """restic's field names, plus ``mode`` and ``repository``."""
        out: dict[str, object] = {"mode": self.mode, "total_size": self.total_size,
                                  "total_file_count": self.total_file_count,
                                  "snapshots_count": self.snapshots_count}
        if self.mode == "raw-data":
            out.update(total_blob_count=self.total_blob_count,
                       total_uncompressed_size=self.total_uncompressed_size,
                       compression_ratio=self.compression_ratio)
        out["repository"] = self.repository.to_json()
        return out


def restore_size(repo: Repository, snaps: Iterable[Snapshot],
                 progress: ProgressFn = no_progress, on_error: OnError | None = None
                 ) -> tuple[int, int]:
    """``(total size, node count)`` of restoring ``snaps`` (see the module doc); damaged
    entries go to ``on_error`` as in :func:`~corestate.repository.walk.walk`."""
    repo.load_index()
    snaps = list(snaps)
    size = count = 0
    for done, snap in enumerate(snaps):
        progress("snapshots", done, len(snaps))
        inodes: set[tuple[int, int]] = set()
        for _, node in walk(repo, snap.tree, on_error=on_error):
            count += 1
            if node.inode == 0 or (node.inode, node.device_id) not in inodes:
                inodes.add((node.inode, node.device_id))
                size += node.size
    progress("snapshots", len(snaps), len(snaps))
    return size, count


def raw_data(repo: Repository, snaps: Iterable[Snapshot], progress: ProgressFn = no_progress
             ) -> tuple[int, int, int]:
    """``(blob count, stored bytes, uncompressed bytes)`` of the blobs ``snaps`` use."""
    repo.load_index()
    table = ordinals.load_table(repo)
    used = blob_ids(table, union(snapshot_usage(repo, snaps, table, progress=progress)))
    stored = uncompressed = 0
    for blob in used:
        loc = repo.index.lookup(blob)
        if loc is None:
            raise NotFoundError(f"blob {blob.hex()[:16]} is used by a snapshot but not in the "
                                "index; run `corestate check`")
        stored += loc.blob.length
        uncompressed += loc.blob.plaintext_length + OVERHEAD
    return len(used), stored, uncompressed


def repository_totals(repo: Repository) -> RepositoryTotals:
    repo.load_index()
    totals = RepositoryTotals()
    for info in repo.backend.list(Kind.DATA):
        totals.packs += 1
        totals.pack_bytes += info.size
    for blob in repo.index.blob_ids():
        loc = repo.index.lookup(blob)
        assert loc is not None
        totals.blobs += 1
        if loc.blob.type == BlobType.DATA:
            totals.data_blobs += 1
        else:
            totals.tree_blobs += 1
        totals.stored_bytes += loc.blob.length
        totals.uncompressed_bytes += loc.blob.plaintext_length + OVERHEAD
    return totals


def stats(repo: Repository, snaps: Iterable[Snapshot], mode: str = "restore-size",
          progress: ProgressFn = no_progress, on_error: OnError | None = None) -> Stats:
    """Stats of ``snaps`` in ``mode``, plus the repository totals (``on_error``: see
    :func:`restore_size`)."""
    if mode not in MODES:
        raise ValueError(f"unknown stats mode {mode!r}; use one of {', '.join(MODES)}")
    snaps = list(snaps)
    result = Stats(mode, snapshots_count=len(snaps))
    repo.load_index()
    if mode == "restore-size":
        result.total_size, result.total_file_count = restore_size(repo, snaps, progress, on_error)
    else:
        (result.total_blob_count, result.total_size,
         result.total_uncompressed_size) = raw_data(repo, snaps, progress)
    result.repository = repository_totals(repo)
    return result
