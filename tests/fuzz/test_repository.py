"""Fuzz targets for the repository-format decoders: pack headers and blobs, unpacked
files (index, snapshot, lock JSON), trees, key files and the master key inside them,
the config, and CoreState's sidecar (ordinal table segments, blob bitmaps).

Encrypted formats are fuzzed both as raw bytes (the MAC refuses nearly all) and as
plaintext that the target encrypts with a fixed key first, so that the parser behind
the MAC is what gets exercised. See :mod:`tests.fuzz.harness` for the contract.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import orjson
import zstandard
from hypothesis import HealthCheck, given, settings
from pyroaring import BitMap

from corestate.maintenance.listing import long_line, node_json
from corestate.repository import ordinals
from corestate.repository import keys as keyfiles
from corestate.repository.config import Config
from corestate.repository.crypto import Key
from corestate.repository.index import index_from_json, index_to_json
from corestate.repository.lock import lock_document, parse_lock
from corestate.repository.pack import (BlobType, PackBuilder, PackedBlob, open_blob,
                                       parse_header, seal_blob)
from corestate.repository.repository import decode_unpacked
from corestate.repository.snapshot import Snapshot
from corestate.repository.tree import Node, decode_tree, encode_tree, name_problem
from tests.fuzz.harness import Target, json_mutated, mutated, run

KEY = Key.from_bytes(bytes(range(64)))
PACK_ID = "f" * 64
SALT = bytes(range(64))
PASSWORD = b"fuzz"
USER_KEY = keyfiles._derive(PASSWORD, SALT, 2, 1, 1)  # cheap parameters: fast to try


def pack_tail(data: bytes) -> None:
    """Raw bytes as the end of a pack (nearly always refused by the MAC)."""
    parse_header(KEY, PACK_ID, data, len(data))


def pack_header(data: bytes) -> None:
    """The first two bytes give the blobs' total size, the rest is the plaintext
    header, encrypted and framed as a pack's end."""
    enc = KEY.encrypt(data[2:])
    tail = enc + struct.pack("<I", len(enc))
    parse_header(KEY, PACK_ID, tail, len(tail) + int.from_bytes(data[:2], "little"))


def blob(data: bytes) -> None:
    """Byte 0 the type, bytes 1-4 the uncompressed length, the rest the plaintext of a
    stored blob (zstd frame for the compressed types)."""
    if len(data) < 5:
        data = data.ljust(5, b"\0")
    stored = KEY.encrypt(data[5:])
    entry = PackedBlob(bytes(32), BlobType.DATA if data[0] % 2 else BlobType.TREE, 0,
                       len(stored), int.from_bytes(data[1:5], "little") if data[0] & 2 else 0)
    open_blob(KEY, entry, stored, verify=bool(data[0] & 4))


def unpacked(data: bytes) -> None:
    decode_unpacked(data, "fuzz")


def index(data: bytes) -> None:
    packs, supersedes = index_from_json(decode_unpacked(data, "index"))
    index_to_json(packs, supersedes)


def snapshot(data: bytes) -> None:
    snap = Snapshot.from_json(decode_unpacked(data, "snapshot"), "0" * 64)
    snap.to_json()
    snap.summary()


def tree(data: bytes) -> None:
    """A tree blob, then what ls, check and a rewrite do with its nodes."""
    nodes = decode_tree(data)
    names = set()
    for node in nodes:
        node.to_json()
        name_problem(node.name)
        if not node.damage:
            node_json(b"/x/" + node.name, node)
            long_line(b"/x/" + node.name, node)
            if node.name not in names:
                names.add(node.name)
                node.stored_json = None
    encode_tree([n for n in nodes if not n.damage and n.stored_json is None])


def key_file(data: bytes) -> None:
    kf = keyfiles.parse_key_file("0" * 64, data)
    if kf.damage:
        return
    n, r, p = (int(str(kf.raw[k])) for k in ("N", "r", "p"))
    if n * r * p <= 1 << 8:  # deriving a costly key is not the decoder under test
        keyfiles._try_open(kf, PASSWORD)


def master_key(data: bytes) -> None:
    """The plaintext inside a key file's ``data``, encrypted under the fuzz password."""
    doc = {"kdf": "scrypt", "N": 2, "r": 1, "p": 1,
           "salt": base64.b64encode(SALT).decode(),
           "data": base64.b64encode(USER_KEY.encrypt(data)).decode()}
    keyfiles._try_open(keyfiles.parse_key_file("0" * 64, orjson.dumps(doc)), PASSWORD)


def lock(data: bytes) -> None:
    parse_lock("0" * 64, data).describe()


def config(data: bytes) -> None:
    Config.from_bytes(data)


def _table() -> ordinals.OrdinalTable:
    table = ordinals.OrdinalTable()
    table.extend_segment(0, [bytes([i]) * 32 for i in range(5)])
    return table


def bitmap(data: bytes) -> None:
    bm = ordinals.parse_bitmap(data, _table())
    if bm is not None:
        _table().resolve(bm)


def segment(data: bytes) -> None:
    ids = ordinals.parse_segment(data)
    if ids is not None:
        ordinals.OrdinalTable().extend_segment(0, ids)


TARGETS: dict[str, Target] = {
    "pack-tail": pack_tail, "pack-header": pack_header, "blob": blob, "unpacked": unpacked,
    "index": index, "snapshot": snapshot, "tree": tree, "key-file": key_file,
    "master-key": master_key, "lock": lock, "config": config, "bitmap": bitmap,
    "segment": segment,
}


def _seeds() -> dict[str, list[bytes]]:
    builder = PackBuilder(BlobType.DATA)
    for plain in (b"hello", b"x" * 300):
        builder.add(seal_blob(KEY, bytes(32), BlobType.DATA, plain, zstandard.ZstdCompressor()))
    _, pack, entries = builder.finish(KEY)
    header = b"".join(struct.pack("<BI", 0, e.length) + e.id if not e.compressed else
                      struct.pack("<BII", 2, e.length, e.uncompressed_length) + e.id
                      for e in entries)
    blobs_size = sum(e.length for e in entries).to_bytes(2, "little")
    zstd_plain = zstandard.ZstdCompressor().compress(b"y" * 100)
    index_doc = orjson.dumps(index_to_json({"a" * 64: entries}, ["b" * 64]))
    snap_doc = orjson.dumps(Snapshot(time=1_700_000_000_123_456_789, tree=bytes(32),
                                     paths=["/home"], tags=["t"], parent="c" * 64).to_json())
    nodes = [Node(name=b"caf\xe9 \"q\"", type="file", mode=0o644, content=[bytes(32)], size=5,
                  mtime=1_700_000_000_000_000_001, xattrs=[("user.a", b"\x00v")]),
             Node(name=b"d", type="dir", mode=(1 << 31) | 0o755, subtree=bytes(32)),
             Node(name=b"l", type="symlink", linktarget=b"\xff/target"),
             Node(name=b"n", type="chardev", device=259, mode=(1 << 26) | (1 << 21) | 0o600)]
    key_doc = {"created": "2026-01-01T00:00:00Z", "username": "u", "hostname": "h",
               "kdf": "scrypt", "N": 2, "r": 1, "p": 1, "salt": base64.b64encode(SALT).decode(),
               "data": base64.b64encode(USER_KEY.encrypt(orjson.dumps(KEY.to_json()))).decode()}
    table = _table()
    bitmap_payload = (b"CSB1" + (5).to_bytes(8, "little") + table.boundaries[5]
                      + BitMap([0, 3, 4]).serialize())
    return {
        "pack-tail": [bytes(pack)],
        "pack-header": [blobs_size + header],
        "blob": [b"\x03" + (100).to_bytes(4, "little") + zstd_plain, b"\x01\0\0\0\0plain"],
        "unpacked": [index_doc, b"\x02" + zstandard.ZstdCompressor().compress(index_doc)],
        "index": [index_doc, b"\x02" + zstandard.ZstdCompressor().compress(index_doc)],
        "snapshot": [snap_doc],
        "tree": [encode_tree(nodes)],
        "key-file": [orjson.dumps(key_doc)],
        "master-key": [orjson.dumps(KEY.to_json())],
        "lock": [lock_document(True)],
        "config": [Config(2, "ab" * 32, 0x3DA3358B4DC173).to_bytes()],
        "bitmap": [bitmap_payload],
        "segment": [b"CSO1" + bytes(range(32)) * 2],
    }


SEEDS = _seeds()
JSON_TARGETS = {"index", "snapshot", "tree", "key-file", "master-key", "lock", "config",
                "unpacked"}


def test_every_seed_decodes():
    from corestate.errors import CoreStateError

    for name, seeds in SEEDS.items():
        for seed in seeds:
            try:
                TARGETS[name](seed)
            except CoreStateError as exc:
                raise AssertionError(f"seed of {name} is refused: {exc}") from None


CRASHES = Path(__file__).parent / "crashes"


def test_crashes_found_by_fuzzing_stay_fixed():
    """Every input a fuzz run crashed on (saved as ``crashes/repository--TARGET--what``)
    is now refused with the project's own error or accepted."""
    found = sorted(CRASHES.glob("repository--*"))
    assert found
    for path in found:
        _, target, _ = path.name.split("--", 2)
        run(TARGETS[target], path.read_bytes())


_SHORT = settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _short_test(name: str):  # type: ignore[no-untyped-def]
    strategy = json_mutated(SEEDS[name]) if name in JSON_TARGETS else mutated(SEEDS[name])

    @_SHORT
    @given(strategy)
    def test(data: bytes) -> None:
        run(TARGETS[name], data)

    test.__name__ = f"test_fuzz_{name.replace('-', '_')}"
    return test


for _name in TARGETS:
    globals()[f"test_fuzz_{_name.replace('-', '_')}"] = _short_test(_name)
