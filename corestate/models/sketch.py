"""A cheap look at a file's content, and a small memory of what each file looked like.

Terms:

- *sample*: at most two regions of a file: the first ``region`` bytes (the *head*,
  64 KiB by default) and, for a larger file, ``region`` bytes from the middle (its
  offset aligned down to a block); plus its *tail*, the last 4 KiB, where some types
  keep an end marker (:func:`corestate.models.magic.intact`). Never more than
  ``2 * region`` + 4 KiB bytes are read, whatever the file's size, so looking at a
  changed VM image costs what a small file does.
- *entropy*: Shannon entropy of the byte distribution, in bits per byte, 0 (one byte
  value) to 8 (uniform). Text is about 4-5; compressed, media and *encrypted* data 7.9+.
- *compression ratio*: zstd level 1 output size / input size of the sample; near or
  above 1.0 means incompressible (compressed or encrypted data).
- *block hashes*: xxh3-64 of each aligned 4 KiB block of the sample, as a set. The share
  of a new version's blocks missing from the previous version's set is its *dedup miss*
  (what the dedup stage would have to store again).
- *MinHash*: a bottom-k sketch (the ``k`` smallest hashes) of the set of 8-byte
  shingles of the sample. Unlike block hashes it does not care where content moved, so an
  insertion in a document keeps it similar. *Similarity* of two sketches estimates the
  Jaccard similarity of their shingle sets: 1.0 the same content, 0.0 nothing in common.
- *sketch*: what is kept per path between versions: size, type (see
  :mod:`corestate.models.magic`), whether it is intact, entropy of the sample and of the first 4 KiB, block
  hashes and MinHash; about 0.8 KiB. :class:`SketchCache` holds them in LRU order.

>>> round(shannon_entropy(bytes(4096)), 3), round(shannon_entropy(bytes(range(256)) * 16), 3)
(0.0, 8.0)
>>> a = sketch_of(Sample(b"the quick brown fox jumps over the lazy dog " * 300, b"", 13200))
>>> b = sketch_of(Sample(b"A NEW HEADLINE. " + b"the quick brown fox jumps over the lazy dog " * 300, b"", 13216))
>>> similarity(a, b) > 0.9, dedup_miss(b, a)
(True, 1.0)
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import xxhash
import zstandard

from corestate.models.magic import TAIL, intact, sniff

REGION = 64 * 1024
BLOCK = 4 * 1024
MINHASH_K = 64

_SHINGLE = 8
_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_compressor = threading.local()


@dataclass(frozen=True, slots=True)
class Sample:
    """The sampled regions of one file version; ``size`` is the whole file's size."""

    head: bytes
    middle: bytes
    size: int
    tail: bytes | None = None  # the last bytes (None: the end of ``head`` is the end)

    @property
    def data(self) -> bytes:
        return self.head + self.middle

    def __len__(self) -> int:
        return len(self.head) + len(self.middle)


def read_sample(path: bytes | str, region: int = REGION) -> Sample | None:
    """Read the sample of a regular file; None if it is gone, unreadable or not a file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        head = os.pread(fd, region, 0)
        middle = b""
        if st.st_size > 2 * region:
            offset = (st.st_size // 2) // BLOCK * BLOCK
            middle = os.pread(fd, region, offset)
        tail = os.pread(fd, TAIL, max(0, st.st_size - TAIL)) if st.st_size > len(head) else None
        return Sample(head, middle, max(st.st_size, len(head)), tail)
    except OSError:
        return None
    finally:
        os.close(fd)


def shannon_entropy(data: bytes) -> float:
    """Bits per byte of ``data``'s byte distribution (0.0 for no data)."""
    if not data:
        return 0.0
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    p = counts[counts > 0] / len(data)
    return max(0.0, float(-(p * np.log2(p)).sum()))


def compress_ratio(data: bytes) -> float:
    """zstd level-1 compressed size / size (1.0 for no data)."""
    if not data:
        return 1.0
    comp = getattr(_compressor, "c", None)
    if comp is None:
        comp = _compressor.c = zstandard.ZstdCompressor(level=1)
    return len(comp.compress(data)) / len(data)


def block_hashes(data: bytes) -> bytes:
    """The sorted, distinct xxh3-64 hashes of ``data``'s 4 KiB blocks, packed as uint64."""
    hashes = {xxhash.xxh3_64_intdigest(data[i:i + BLOCK]) for i in range(0, len(data), BLOCK)}
    return np.array(sorted(hashes), dtype=np.uint64).tobytes()


def minhash(data: bytes, k: int = MINHASH_K) -> bytes:
    """The bottom-``k`` sketch of ``data``'s 8-byte shingles, packed as sorted uint64."""
    if len(data) < _SHINGLE:
        data = data.ljust(_SHINGLE, b"\0") if data else b""
        if not data:
            return b""
    a = np.frombuffer(data, np.uint8).astype(np.uint64)
    n = len(a) - _SHINGLE + 1
    h = np.zeros(n, np.uint64)
    for j in range(_SHINGLE):
        h = h * _PRIME + a[j:j + n]
    h ^= h >> np.uint64(30)  # splitmix64 finaliser: spreads the polynomial hash uniformly
    h *= _MIX1
    h ^= h >> np.uint64(27)
    h *= _MIX2
    h ^= h >> np.uint64(31)
    m = 4 * k
    if n > m:
        h = np.partition(h, m - 1)[:m]
    return np.unique(h)[:k].tobytes()


@dataclass(frozen=True, slots=True)
class Sketch:
    """What is remembered of one version of a file (see the module docstring)."""

    size: int
    ftype: str
    entropy: float
    head_entropy: float
    blocks: bytes
    minhash: bytes
    intact: bool | None = None  # its type's end marker is there (None: a type without)


def sketch_of(sample: Sample) -> Sketch:
    data = sample.data
    ftype = sniff(sample.head[:4096])
    tail = sample.tail if sample.tail is not None else sample.head[-TAIL:]
    return Sketch(size=sample.size, ftype=ftype,
                  entropy=shannon_entropy(data), head_entropy=shannon_entropy(sample.head[:BLOCK]),
                  blocks=block_hashes(data), minhash=minhash(data), intact=intact(ftype, tail))


def similarity(new: Sketch, old: Sketch) -> float:
    """Estimated Jaccard similarity of the two versions' shingle sets (0.0 to 1.0)."""
    a = np.frombuffer(new.minhash, np.uint64)
    b = np.frombuffer(old.minhash, np.uint64)
    if not len(a) and not len(b):
        return 1.0
    if not len(a) or not len(b):
        return 0.0
    k = min(max(len(a), len(b)), MINHASH_K)
    union_bottom = np.union1d(a, b)[:k]
    both = np.intersect1d(a, b, assume_unique=True)
    return float(np.isin(union_bottom, both, assume_unique=True).sum()) / len(union_bottom)


def dedup_miss(new: Sketch, old: Sketch) -> float:
    """Share of ``new``'s sampled blocks absent from ``old``'s (0.0: all found)."""
    a = np.frombuffer(new.blocks, np.uint64)
    if not len(a):
        return 0.0
    b = np.frombuffer(old.blocks, np.uint64)
    return 1.0 - float(np.isin(a, b, assume_unique=True).sum()) / len(a)


class SketchCache:
    """The latest :class:`Sketch` per path, least recently used dropped past ``capacity``.

    Thread-safe: a background scan primes it while the change stream updates it.
    """

    def __init__(self, capacity: int = 16384) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, Sketch] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: bytes) -> Sketch | None:
        with self._lock:
            sk = self._items.get(path)
            if sk is not None:
                self._items.move_to_end(path)
            return sk

    def put(self, path: bytes, sketch: Sketch, only_if_absent: bool = False) -> None:
        with self._lock:
            if only_if_absent and path in self._items:
                return
            self._items[path] = sketch
            self._items.move_to_end(path)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __getstate__(self) -> dict[str, object]:
        return {"capacity": self.capacity, "items": list(self._items.items())}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.capacity = int(state["capacity"])  # type: ignore[call-overload]
        items = state["items"]
        assert isinstance(items, list)
        self._items = OrderedDict(items)
        self._lock = threading.Lock()
