"""Blob ordinals and snapshot blob bitmaps: CoreState's sidecar beside the restic data.

An *ordinal* is a dense integer given to every blob id the first time it is seen, in an
append-only *ordinal table*. A snapshot's *blob bitmap* is the roaring bitmap of the
ordinals of every blob it references (data and tree). The union of live snapshots'
bitmaps is what prune keeps; the difference of two is what one added.

Both are stored encrypted in the sidecar directory ``corestate/`` (restic ignores it;
everything here can be rebuilt from the restic data):

- ``ord-<base>-<hash>``: a *segment* ``CSO1 || blob ids (32 bytes each)`` extending the
  table from length ``base``. Segments load in base order; one whose base is not the
  current length (two writers raced) is ignored; indexed blobs that still have no
  ordinal then get one, in sorted order, so two readers agree.
- ``bitmap-<snapshot id>``: ``CSB1 || table length (u64 LE) || chained digest || roaring
  bitmap``. The digest chains SHA-256 over the table's segments, so a bitmap computed
  against a table that lost a race is detected and recomputed from the trees instead
  of trusted.

>>> table = OrdinalTable()
>>> [table.assign(bytes([i]) * 32) for i in (1, 2, 1)]
[0, 1, 0]
>>> sorted(table.ordinals([bytes([2]) * 32, bytes([3]) * 32]))
[1, 2]
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable

from pyroaring import BitMap

from corestate.errors import CoreStateError
from corestate.repository.repository import Repository


class OrdinalTable:
    """Blob id <-> dense ordinal; append-only. ``segments`` records, for each stored
    segment boundary, the table length and the chained digest up to it."""

    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self._ordinal: dict[bytes, int] = {}
        self.boundaries: dict[int, bytes] = {0: b"\0" * 32}
        self.stored_len = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, blob_id: bytes) -> int | None:
        return self._ordinal.get(blob_id)

    def assign(self, blob_id: bytes) -> int:
        with self._lock:
            n = self._ordinal.get(blob_id)
            if n is None:
                n = len(self.ids)
                self.ids.append(blob_id)
                self._ordinal[blob_id] = n
            return n

    def ordinals(self, blob_ids: Iterable[bytes]) -> BitMap:
        """The bitmap of ``blob_ids``, assigning ordinals to new ones (one lock)."""
        if not isinstance(blob_ids, list):
            blob_ids = list(blob_ids)
        with self._lock:
            try:  # every one known, the common case: mapped at C speed
                return BitMap(list(map(self._ordinal.__getitem__, blob_ids)))
            except KeyError:
                pass
            out = []
            for blob_id in blob_ids:
                n = self._ordinal.get(blob_id)
                if n is None:
                    n = len(self.ids)
                    self.ids.append(blob_id)
                    self._ordinal[blob_id] = n
                out.append(n)
        return BitMap(out)

    def extend(self, blob_ids: Iterable[bytes]) -> None:
        """Give ordinals, in order, to those of ``blob_ids`` that have none (one lock;
        ids all new and distinct, the common case, are added at C speed)."""
        ids = list(blob_ids)
        with self._lock:
            ordinal, known = self._ordinal, self.ids
            if len(set(ids)) == len(ids) and ordinal.keys().isdisjoint(ids):
                ordinal.update(zip(ids, range(len(known), len(known) + len(ids))))
                known.extend(ids)
                return
            for blob_id in ids:
                if blob_id not in ordinal:
                    ordinal[blob_id] = len(known)
                    known.append(blob_id)

    def missing(self, blob_ids: Iterable[bytes]) -> list[bytes]:
        """Those of ``blob_ids`` without an ordinal, sorted."""
        return sorted(set(blob_ids).difference(self._ordinal))

    def extend_segment(self, base: int, ids: list[bytes]) -> bool:
        """Append a stored segment if it starts where the table ends; else ignore it."""
        if base != self.stored_len or base != len(self.ids):
            return False
        self.extend(ids)
        self.stored_len = len(self.ids)
        self.boundaries[self.stored_len] = self.chain_digest(base, ids)
        return True

    def chain_digest(self, base: int, ids: Iterable[bytes]) -> bytes:
        h = hashlib.sha256(self.boundaries[base])
        for blob_id in ids:
            h.update(blob_id)
        return h.digest()

    def unstored(self) -> tuple[int, list[bytes]]:
        """The base and ids not yet in a stored segment."""
        return self.stored_len, self.ids[self.stored_len:]

    def mark_stored(self, base: int, ids: list[bytes]) -> None:
        self.boundaries[base + len(ids)] = self.chain_digest(base, ids)
        self.stored_len = base + len(ids)

    def resolve(self, bitmap: BitMap) -> list[bytes]:
        return [self.ids[i] for i in bitmap]


_SEGMENT = b"CSO1"
_BITMAP = b"CSB1"


def load_table(repo: Repository) -> OrdinalTable:
    """The stored ordinal table; segments that lost a race (wrong base) are skipped,
    then every indexed blob still without an ordinal gets one (sorted, so two readers
    agree)."""
    table = OrdinalTable()
    segments = []
    for name in repo.list_sidecar():
        if name.startswith("ord-"):
            try:
                segments.append((int(name.split("-")[1]), name))
            except (IndexError, ValueError):
                continue
    for base, name in sorted(segments):
        try:
            ids = parse_segment(repo.load_sidecar(name))
        except CoreStateError:
            continue
        if ids is not None:
            table.extend_segment(base, ids)
    table.extend(table.missing(repo.index.blob_ids()))
    return table


def parse_segment(payload: bytes) -> list[bytes] | None:
    """The blob ids of a stored table segment; None if it is not one."""
    if payload[:4] != _SEGMENT or (len(payload) - 4) % 32:
        return None
    return [payload[i:i + 32] for i in range(4, len(payload), 32)]


def parse_bitmap(payload: bytes, table: OrdinalTable) -> BitMap | None:
    """A stored blob bitmap if it is one and valid against ``table``; None otherwise
    (the caller recomputes it from the trees)."""
    if payload[:4] != _BITMAP or len(payload) < 44:
        return None
    length = int.from_bytes(payload[4:12], "little")
    if table.boundaries.get(length) != payload[12:44]:
        return None
    try:
        bitmap = BitMap.deserialize(payload[44:])
    except (ValueError, IndexError, OverflowError, MemoryError):  # pyroaring's refusals
        return None
    return bitmap if not bitmap or bitmap.max() < length else None


def store_table(repo: Repository, table: OrdinalTable) -> str | None:
    """Write a segment holding the ordinals assigned since the last stored one.

    Best effort, like every sidecar write: a segment that cannot be written (disk full)
    is only a warning, returned (the table is rebuilt from the index when loaded)."""
    base, ids = table.unstored()
    if not ids:
        return None
    payload = _SEGMENT + b"".join(ids)
    try:
        repo.save_sidecar(f"ord-{base:012d}-{hashlib.sha256(payload).hexdigest()[:16]}", payload)
    except CoreStateError as exc:
        return f"the blob ordinal table was not saved ({exc}); it is rebuilt when needed"
    table.mark_stored(base, ids)
    return None


def save_bitmap(repo: Repository, snap_id: str, bitmap: BitMap, table: OrdinalTable) -> str | None:
    """Store a snapshot's blob bitmap; call after :func:`store_table`. Best effort: a
    warning is returned if it cannot be stored (prune recomputes it from the trees)."""
    length = table.stored_len
    why = None
    if len(bitmap) and bitmap.max() >= length:
        why = "its ordinals were not saved"  # a bitmap against an unsaved table would lie
    else:
        payload = (_BITMAP + length.to_bytes(8, "little") + table.boundaries[length]
                   + bitmap.serialize())
        try:
            repo.save_sidecar(f"bitmap-{snap_id}", payload)
        except CoreStateError as exc:
            why = str(exc)
    if why is None:
        return None
    return (f"snapshot {snap_id[:8]} was saved, but not its blob bitmap ({why}); it is "
            "recomputed from the trees when needed")


def load_bitmap(repo: Repository, snap_id: str, table: OrdinalTable) -> BitMap | None:
    """A snapshot's stored bitmap if it is valid against ``table``; None otherwise."""
    try:
        return parse_bitmap(repo.load_sidecar(f"bitmap-{snap_id}"), table)
    except CoreStateError:
        return None

