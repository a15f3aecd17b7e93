"""Encryption and the pack format, in memory."""

from __future__ import annotations

import hashlib
import os

import pytest

from corestate.errors import IntegrityError
from corestate.repository.crypto import Key
from corestate.repository.pack import BlobType, PackBuilder, new_compressor, open_blob, parse_header, seal_blob


def test_encrypt_round_trip_and_layout():
    key = Key.random()
    for size in (0, 1, 15, 16, 17, 1 << 20):
        plain = os.urandom(size)
        sealed = key.encrypt(plain)
        assert len(sealed) == size + 32  # IV + tag
        assert key.decrypt(sealed) == plain
    assert key.encrypt(b"x")[:16] != key.encrypt(b"x")[:16], "IV must be fresh"


@pytest.mark.parametrize("where", [0, 16, 20, -1])
def test_any_flipped_bit_is_detected(where):
    key = Key.random()
    sealed = bytearray(key.encrypt(b"important data" * 10))
    sealed[where] ^= 0x01
    with pytest.raises(IntegrityError, match="MAC"):
        key.decrypt(bytes(sealed))


def test_wrong_key_is_detected():
    with pytest.raises(IntegrityError):
        Key.random().decrypt(Key.random().encrypt(b"secret"))


def test_master_key_json_round_trip():
    key = Key.random()
    again = Key.from_json(key.to_json())
    assert again.decrypt(key.encrypt(b"abc")) == b"abc"


def test_pack_header_round_trip_and_compression_choice():
    key = Key.random()
    comp = new_compressor()
    text = b"compress me " * 5000
    noise = os.urandom(5000)
    builder = PackBuilder(BlobType.DATA)
    for blob in (text, noise):
        builder.add(seal_blob(key, hashlib.sha256(blob).digest(), BlobType.DATA, blob, comp))
    pack_id, data, entries = builder.finish(key)
    assert hashlib.sha256(data).hexdigest() == pack_id
    parsed = parse_header(key, pack_id, data, len(data))
    assert parsed == entries
    assert parsed[0].compressed and parsed[0].length < len(text) // 10
    assert not parsed[1].compressed, "incompressible blob must be stored uncompressed"
    for entry, blob in zip(parsed, (text, noise)):
        assert open_blob(key, entry, data[entry.offset:entry.offset + entry.length]) == blob


def test_truncated_pack_is_named():
    key = Key.random()
    builder = PackBuilder(BlobType.TREE)
    builder.add(seal_blob(key, hashlib.sha256(b"{}").digest(), BlobType.TREE, b"{}", None))
    pack_id, data, _ = builder.finish(key)
    with pytest.raises(IntegrityError, match=pack_id[:16]):
        parse_header(key, pack_id, data[:-10], len(data) - 10)
