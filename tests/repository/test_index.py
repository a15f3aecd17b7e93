"""Reading index files: the fast path for well-formed entries and the checked path that
names what is wrong give the same result, and a bad entry anywhere is refused."""

from __future__ import annotations

import copy

import pytest

from corestate.errors import IntegrityError
from corestate.repository.index import index_from_json, index_to_json
from corestate.repository.pack import BlobType, PackedBlob

PACK = "ab" * 32


def _doc() -> dict[str, object]:
    blobs = [PackedBlob(bytes([i]) * 32, BlobType.DATA if i % 2 else BlobType.TREE,
                        i * 100, 100, 250 if i % 3 else 0) for i in range(5)]
    return index_to_json({PACK: blobs}, supersedes=["cd" * 32])


def test_a_well_formed_index_reads_back_as_written() -> None:
    packs, supersedes = index_from_json(_doc())
    assert supersedes == ["cd" * 32]
    assert index_to_json(packs, supersedes) == _doc()
    assert packs[PACK][1] == PackedBlob(b"\x01" * 32, BlobType.DATA, 100, 100, 250)


@pytest.mark.parametrize("field, value, message", [
    ("id", "ab" * 31 + " " + "c", "blob id"),  # 64 characters, one of them whitespace
    ("id", "zz" * 32, "blob id"),
    ("id", 7, "blob id"),
    ("offset", -1, "offset"),
    ("offset", True, "offset"),
    ("length", 1 << 32, "length"),
    ("length", "100", "length"),
    ("uncompressed_length", 1.5, "uncompressed_length"),
    ("type", "blob", "not a valid BlobType"),
    ("type", ["data"], "not a valid BlobType"),
])
def test_a_bad_entry_after_good_ones_is_refused_with_what_is_wrong(field: str, value: object,
                                                                   message: str) -> None:
    doc = copy.deepcopy(_doc())
    doc["packs"][0]["blobs"][3][field] = value  # type: ignore[index]
    with pytest.raises(IntegrityError, match=message):
        index_from_json(doc)
