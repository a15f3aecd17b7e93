"""Bitmap-indexed deduplication: which blobs must be stored.

*Prefilter*: a roaring bitmap of the 32-bit *prefix* of every known blob's xxh3-64 hash
(taken over the blob id). A blob whose prefix is absent is certainly new, and the exact
index is not consulted; a present prefix may be a false positive, so the *exact index*
(anything answering ``blob_id in exact``: the repository's master index, a packer's
share of it, or a set of known ids) decides. A blob is *claimed* exactly once: the
claimer stores it.

>>> dedup = DedupIndex(exact=set())
>>> dedup.claim(b'\\x05' * 32), dedup.claim(b'\\x05' * 32)
(True, False)
>>> dedup.prefilter_misses >= 1
True
"""

from __future__ import annotations

import threading
from collections.abc import Container, Iterable

import xxhash
from pyroaring import BitMap


def prefix32(blob_id: bytes) -> int:
    """The 32-bit prefilter key of a blob id."""
    return xxhash.xxh3_64_intdigest(blob_id) >> 32


class DedupIndex:
    """Decides which blobs must be stored; thread-safe.

    ``exact`` is anything answering ``blob_id in exact`` (the master index)."""

    def __init__(self, exact: Container[bytes], known: Iterable[bytes] = ()) -> None:
        self._exact = exact
        self._prefilter = BitMap(prefix32(b) for b in known)
        self._claimed: set[bytes] = set()
        self._lock = threading.Lock()
        self.prefilter_misses = 0
        self.exact_lookups = 0

    def learn(self, blob_ids: Iterable[bytes]) -> None:
        """Blobs the exact index now holds (stored by others, or by the claimers since
        flushed): their prefixes join the prefilter and the claims are forgotten, since
        the exact index answers for them from now on."""
        with self._lock:
            self._prefilter.update(prefix32(b) for b in blob_ids)
            self._claimed.clear()

    def claim(self, blob_id: bytes) -> bool:
        """True exactly once per new blob: the caller must then store it."""
        key = prefix32(blob_id)
        with self._lock:
            if key not in self._prefilter:
                self.prefilter_misses += 1
                self._prefilter.add(key)
                self._claimed.add(blob_id)
                return True
            self.exact_lookups += 1
            if blob_id in self._claimed or blob_id in self._exact:
                return False
            self._claimed.add(blob_id)
            return True
