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
from typing import NamedTuple

from corestate.errors import IntegrityError
from corestate.repository.pack import BlobType, PackedBlob


class Location(NamedTuple):
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
    format, a bare list of packs). IntegrityError saying what is wrong if it is not an
    index: every id is 64 hex digits, offsets and lengths are integers in range.

    >>> index_from_json({"packs": [{"id": "ab", "blobs": []}]})
    Traceback (most recent call last):
    corestate.errors.IntegrityError: not an index: pack id 'ab' is not 64 hex digits
    """
    try:
        return _index_from_json(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        why = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise IntegrityError(f"not an index: {why}") from None


def _hex_id(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not _is_hex(value):
        raise ValueError(f"{what} {value!r:.80} is not 64 hex digits")
    return value


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return text.isascii()


def _uint(value: object, what: str, limit: int = 1 << 32) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
        raise ValueError(f"{what} {value!r:.80} is not an integer in range")
    return value


def _index_from_json(doc: object) -> tuple[dict[str, list[PackedBlob]], list[str]]:
    packs_doc: object
    sup: object
    if isinstance(doc, list):
        packs_doc, sup = doc, []
    elif isinstance(doc, dict):
        packs_doc, sup = doc.get("packs") or [], doc.get("supersedes") or []
    else:
        raise TypeError(f"a JSON {type(doc).__name__}, not an object")
    if not isinstance(packs_doc, list) or not isinstance(sup, list):
        raise TypeError("packs and supersedes must be lists")
    packs: dict[str, list[PackedBlob]] = {}
    for p in packs_doc:
        pack_id = _hex_id(p["id"], "pack id")
        blobs = p["blobs"]
        if not isinstance(blobs, list):
            raise TypeError(f"blobs of pack {pack_id[:16]} are not a list")
        try:
            packs[pack_id] = _blobs_fast(blobs)
        except (_Irregular, KeyError, TypeError, ValueError, AttributeError):
            packs[pack_id] = [  # the same, checked field by field to say what is wrong
                PackedBlob(bytes.fromhex(_hex_id(b["id"], "blob id")), BlobType(b["type"]),
                           _uint(b["offset"], "offset", 1 << 63), _uint(b["length"], "length"),
                           _uint(b.get("uncompressed_length") or 0, "uncompressed_length"))
                for b in blobs
            ]
    return packs, [_hex_id(s, "superseded index") for s in sup]


class _Irregular(Exception):
    """An index entry the fast path does not take (the checked path says why)."""


_TYPES = {t.value: t for t in BlobType}


def _blobs_fast(blobs: list[object]) -> list[PackedBlob]:
    """A pack's blob entries when every one is well formed (an index of 100,000 blobs is
    read by every backup: this is the common case, written out)."""
    out: list[PackedBlob] = []
    append = out.append
    for b in blobs:
        if type(b) is not dict:
            raise _Irregular
        bid, off, length = b["id"], b["offset"], b["length"]
        ulen = b.get("uncompressed_length") or 0
        if not (type(bid) is str and len(bid) == 64 and type(off) is type(length)
                is type(ulen) is int and 0 <= off < 1 << 63 and 0 <= length < 1 << 32
                and 0 <= ulen < 1 << 32):
            raise _Irregular
        raw = bytes.fromhex(bid)
        if len(raw) != 32:
            raise _Irregular  # whitespace, which fromhex skips
        append(PackedBlob(raw, _TYPES[b["type"]], off, length, ulen))
    return out
