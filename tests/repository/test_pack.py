"""Pack blobs whose stored bytes lie about themselves (found by fuzzing)."""

from __future__ import annotations

import pytest
import zstandard

from corestate.errors import IntegrityError
from corestate.repository.crypto import Key
from corestate.repository.pack import BlobType, PackedBlob, open_blob


def test_a_zstd_frame_declaring_a_huge_size_is_refused_before_allocating():
    key = Key.random()
    frame = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(b"y" * 100))
    # content size field (8 bytes with this frame header descriptor) claims ~100 PB
    frame[4] = 0xE0
    frame[5:5] = (10**17).to_bytes(8, "little")[:7]
    stored = key.encrypt(bytes(frame))
    entry = PackedBlob(bytes(32), BlobType.DATA, 0, len(stored), 100)
    with pytest.raises(IntegrityError, match="declares"):
        open_blob(key, entry, stored, verify=False)


def test_garbage_in_a_compressed_blob_is_an_integrity_error():
    key = Key.random()
    stored = key.encrypt(b"not zstd at all")
    with pytest.raises(IntegrityError, match="cannot decompress"):
        open_blob(key, PackedBlob(bytes(32), BlobType.TREE, 0, len(stored), 10), stored)
