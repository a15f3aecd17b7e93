"""Packs: files in ``data/`` that hold encrypted blobs.

A *blob* is one chunk of file content (a *data* blob) or one serialised directory (a
*tree* blob), named by the SHA-256 of its uncompressed plaintext. A *pack* is::

    blob_1 || ... || blob_n || encrypted header || header length (uint32 LE)

Each blob is stored as ``encrypt(plaintext)`` or, for the compressed types,
``encrypt(zstd(plaintext))``. The header lists, in order, one entry per blob: type byte,
stored (encrypted) length as uint32 LE, for compressed types the plaintext length as
uint32 LE, and the 32-byte blob id. Types: 0 data, 1 tree, 2 zstd data, 3 zstd tree.
A pack holds either data or tree blobs, never both. The pack's id is the SHA-256 of
its whole bytes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import zstandard

from corestate.errors import IntegrityError
from corestate.repository.crypto import OVERHEAD, Key


class BlobType(str, Enum):
    DATA = "data"
    TREE = "tree"


_PLAIN_TYPE = {BlobType.DATA: 0, BlobType.TREE: 1}
_ZSTD_TYPE = {BlobType.DATA: 2, BlobType.TREE: 3}
_FROM_BYTE = {0: (BlobType.DATA, False), 1: (BlobType.TREE, False),
              2: (BlobType.DATA, True), 3: (BlobType.TREE, True)}
PLAIN_ENTRY = 1 + 4 + 32
ZSTD_ENTRY = 1 + 4 + 4 + 32
TARGET_PACK_SIZE = 16 * 1024 * 1024


class PackedBlob(NamedTuple):
    """Where one blob lives in its pack. ``length`` is the stored (encrypted) length;
    ``uncompressed_length`` is 0 for an uncompressed blob. (A named tuple: an index
    holds one per blob, and it is built three times faster than a frozen dataclass.)"""

    id: bytes
    type: BlobType
    offset: int
    length: int
    uncompressed_length: int

    @property
    def compressed(self) -> bool:
        return self.uncompressed_length != 0

    @property
    def plaintext_length(self) -> int:
        return self.uncompressed_length or self.length - OVERHEAD


@dataclass(frozen=True)
class SealedBlob:
    """A blob ready to append to a pack: its stored bytes and header facts."""

    id: bytes
    type: BlobType
    data: bytes
    uncompressed_length: int


# zstd level 3 (restic's "auto"); contexts are per thread because they are not shareable.
_LEVEL = 3


def seal_blob(key: Key, blob_id: bytes, btype: BlobType, plaintext: bytes | memoryview,
              compressor: zstandard.ZstdCompressor | None) -> SealedBlob:
    """Compress (if ``compressor`` and it shrinks the blob) and encrypt one blob."""
    if compressor is not None and len(plaintext) > 64:
        packed = compressor.compress(plaintext)
        if len(packed) < len(plaintext):
            return SealedBlob(blob_id, btype, key.encrypt(packed), len(plaintext))
    return SealedBlob(blob_id, btype, key.encrypt(plaintext), 0)


def new_compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=_LEVEL)


def open_blob(key: Key, entry: PackedBlob, stored: bytes | memoryview, verify: bool = True) -> bytes:
    """Decrypt (and decompress) one blob; with ``verify``, check its id."""
    what = f"{entry.type.value} blob {entry.id.hex()[:16]}"
    plain = key.decrypt(stored, what)
    if entry.compressed:
        # A frame that declares its size is decompressed into a buffer of that size:
        # a damaged or hostile header must not make us allocate gigabytes.
        try:
            declared = zstandard.frame_content_size(plain)
            if declared not in (-1, entry.uncompressed_length):
                raise IntegrityError(f"{what}: its zstd frame declares {declared} bytes, "
                                     f"the index {entry.uncompressed_length}")
            plain = zstandard.ZstdDecompressor().decompress(
                plain, max_output_size=entry.uncompressed_length)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{what}: cannot decompress ({exc})") from None
        if len(plain) != entry.uncompressed_length:
            raise IntegrityError(f"{what}: decompressed size differs from the index")
    if verify and hashlib.sha256(plain).digest() != entry.id:
        raise IntegrityError(f"{what}: content does not match its id")
    return plain


class PackBuilder:
    """Accumulates sealed blobs of one type into one pack."""

    def __init__(self, btype: BlobType) -> None:
        self.type = btype
        self._data = bytearray()  # one growing buffer: finishing adds no copy of the pack
        self.entries: list[PackedBlob] = []
        self.size = 0

    def add(self, blob: SealedBlob) -> None:
        assert blob.type == self.type
        self.entries.append(PackedBlob(blob.id, blob.type, self.size, len(blob.data),
                                       blob.uncompressed_length))
        self._data += blob.data
        self.size += len(blob.data)

    def __len__(self) -> int:
        return len(self.entries)

    def finish(self, key: Key) -> tuple[str, bytearray, list[PackedBlob]]:
        """The pack's id, its bytes and its entries."""
        header = bytearray()
        for e in self.entries:
            if e.compressed:
                header += struct.pack("<BII", _ZSTD_TYPE[e.type], e.length, e.uncompressed_length)
            else:
                header += struct.pack("<BI", _PLAIN_TYPE[e.type], e.length)
            header += e.id
        enc_header = key.encrypt(bytes(header))
        data, self._data = self._data, bytearray()
        data += enc_header
        data += struct.pack("<I", len(enc_header))
        return hashlib.sha256(data).hexdigest(), data, self.entries


def parse_header(key: Key, pack_id: str, tail: bytes, pack_size: int) -> list[PackedBlob]:
    """Entries of a pack from its last bytes (``tail`` must cover header + length).

    Raises IntegrityError naming the pack if the header is damaged or inconsistent."""
    if len(tail) < 4 or pack_size < 4:
        raise IntegrityError(f"pack {pack_id[:16]}: truncated (no header length)")
    (hlen,) = struct.unpack("<I", tail[-4:])
    if hlen + 4 > len(tail) or hlen + 4 > pack_size or hlen < OVERHEAD:
        raise IntegrityError(f"pack {pack_id[:16]}: header length {hlen} is impossible "
                             f"for a pack of {pack_size} bytes (truncated?)")
    header = key.decrypt(tail[-4 - hlen:-4], f"pack {pack_id[:16]} header")
    entries = []
    pos = 0
    offset = 0
    while pos < len(header):
        kind = header[pos]
        if kind not in _FROM_BYTE:
            raise IntegrityError(f"pack {pack_id[:16]}: unknown blob type {kind}")
        btype, compressed = _FROM_BYTE[kind]
        if pos + (ZSTD_ENTRY if compressed else PLAIN_ENTRY) > len(header):
            raise IntegrityError(f"pack {pack_id[:16]}: header entry cut short")
        if compressed:
            _, length, ulen = struct.unpack_from("<BII", header, pos)
            pos += 9
        else:
            _, length = struct.unpack_from("<BI", header, pos)
            ulen = 0
            pos += 5
        blob_id = bytes(header[pos:pos + 32])
        pos += 32
        entries.append(PackedBlob(blob_id, btype, offset, length, ulen))
        offset += length
    if offset + hlen + 4 != pack_size:
        raise IntegrityError(f"pack {pack_id[:16]}: blobs and header do not add up to its "
                             f"size ({offset + hlen + 4} != {pack_size})")
    return entries


def header_size_bound(entries: int) -> int:
    """Upper bound of the encrypted header plus its length field for ``entries`` blobs."""
    return entries * ZSTD_ENTRY + OVERHEAD + 4
