"""The index: which pack holds which blob.

An *index file* (in ``index/``) is encrypted JSON listing packs and their blobs::

    {"supersedes": [...], "packs": [{"id": <pack>, "blobs": [{"id", "type", "offset",
      "length", "uncompressed_length"?}]}]}

``length`` is the stored (encrypted) length. The *master index* is the union of every
index file, held in memory as a dict from blob id to :class:`Location`. When index files
are rewritten (prune), the new file lists the old ones it *supersedes*.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from corestate.repository.pack import BlobType, PackedBlob


@dataclass(frozen=True, slots=True)
class Location:
    """A blob's place: pack id (hex) plus its :class:`PackedBlob` entry."""

    pack: str
    blob: PackedBlob


class MasterIndex:
    """All known blobs; a blob stored in several packs keeps every location."""

    def __init__(self) -> None:
        self._by_id: dict[bytes, Location] = {}
        self._dupes: dict[bytes, list[Location]] = {}
        self.packs: dict[str, list[PackedBlob]] = {}
        self.files: set[str] = set()

    def add_pack(self, pack_id: str, blobs: Iterable[PackedBlob]) -> None:
        blist = list(blobs)
        if pack_id in self.packs:
            return
        self.packs[pack_id] = blist
        for b in blist:
            loc = Location(pack_id, b)
            old = self._by_id.get(b.id)
            if old is None:
                self._by_id[b.id] = loc
            else:
                self._dupes.setdefault(b.id, []).append(loc)

    def remove_pack(self, pack_id: str) -> None:
        for b in self.packs.pop(pack_id, []):
            locs = [loc for loc in self.all_locations(b.id) if loc.pack != pack_id]
            if locs:
                self._by_id[b.id] = locs[0]
                if len(locs) > 1:
                    self._dupes[b.id] = locs[1:]
                else:
                    self._dupes.pop(b.id, None)
            else:
                self._by_id.pop(b.id, None)
                self._dupes.pop(b.id, None)

    def lookup(self, blob_id: bytes) -> Location | None:
        return self._by_id.get(blob_id)

    def all_locations(self, blob_id: bytes) -> list[Location]:
        first = self._by_id.get(blob_id)
        if first is None:
            return []
        return [first, *self._dupes.get(blob_id, [])]

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def blob_ids(self) -> Iterator[bytes]:
        return iter(self._by_id)

    def has_type(self, blob_id: bytes, btype: BlobType) -> bool:
        loc = self._by_id.get(blob_id)
        return loc is not None and loc.blob.type == btype


def index_to_json(packs: dict[str, list[PackedBlob]], supersedes: Iterable[str] = ()) -> dict[str, object]:
    out = []
    for pack_id, blobs in packs.items():
        entries: list[dict[str, object]] = []
        for b in blobs:
            e: dict[str, object] = {"id": b.id.hex(), "type": b.type.value, "offset": b.offset,
                                    "length": b.length}
            if b.uncompressed_length:
                e["uncompressed_length"] = b.uncompressed_length
            entries.append(e)
        out.append({"id": pack_id, "blobs": entries})
    doc: dict[str, object] = {"packs": out}
    sup = list(supersedes)
    if sup:
        doc["supersedes"] = sup
    return doc


def index_from_json(doc: object) -> tuple[dict[str, list[PackedBlob]], list[str]]:
    """Packs and superseded index ids from an index file's JSON (also restic's legacy
    format, a bare list of packs)."""
    sup: list[str]
    if isinstance(doc, list):
        packs_doc, sup = doc, []
    else:
        assert isinstance(doc, dict)
        packs_doc, sup = doc.get("packs") or [], doc.get("supersedes") or []
    packs: dict[str, list[PackedBlob]] = {}
    for p in packs_doc:
        packs[p["id"]] = [
            PackedBlob(bytes.fromhex(b["id"]), BlobType(b["type"]), int(b["offset"]),
                       int(b["length"]), int(b.get("uncompressed_length") or 0))
            for b in p["blobs"]
        ]
    return packs, list(sup)
