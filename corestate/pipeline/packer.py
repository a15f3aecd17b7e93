"""The pack stage: seal blobs and fill packs.

*Sealing* a blob compresses it with zstd (kept only when it shrinks the blob) and
encrypts it (:func:`corestate.repository.pack.seal_blob`). The *packer* appends sealed
blobs to one open pack per blob type and, when a pack reaches the target size
(~16 MiB), finishes it and hands it to the repository, which writes it and queues its
index entry. :meth:`Packer.flush` finishes every open pack; after it returns, every
blob given to :meth:`Packer.add` is durable.
"""

from __future__ import annotations

import threading

import zstandard

from corestate.repository.pack import (TARGET_PACK_SIZE, BlobType, PackBuilder, SealedBlob,
                                       new_compressor, seal_blob)
from corestate.repository.repository import Repository

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    comp: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if comp is None:
        comp = _local.zstd = new_compressor()
    return comp


class Packer:
    """Thread-safe: any thread may add; full packs are written by the adding thread."""

    def __init__(self, repo: Repository, target_size: int = TARGET_PACK_SIZE,
                 compress: bool = True) -> None:
        self._repo = repo
        self._target = target_size
        self._compress = compress
        self._open: dict[BlobType, PackBuilder] = {}
        self._lock = threading.Lock()
        self.blobs_added = 0
        self.bytes_stored = 0

    def seal(self, blob_id: bytes, btype: BlobType, plaintext: bytes) -> SealedBlob:
        return seal_blob(self._repo.key, blob_id, btype, plaintext,
                         _compressor() if self._compress else None)

    def add(self, blob: SealedBlob) -> None:
        full = None
        with self._lock:
            builder = self._open.get(blob.type)
            if builder is None:
                builder = self._open[blob.type] = PackBuilder(blob.type)
            builder.add(blob)
            self.blobs_added += 1
            self.bytes_stored += len(blob.data)
            if builder.size >= self._target:
                full = self._open.pop(blob.type)
        if full is not None:
            self._write(full)

    def add_plain(self, blob_id: bytes, btype: BlobType, plaintext: bytes) -> None:
        self.add(self.seal(blob_id, btype, plaintext))

    def _write(self, builder: PackBuilder) -> None:
        pack_id, data, entries = builder.finish(self._repo.key)
        self._repo.add_pack(pack_id, data, entries)

    def flush(self) -> None:
        with self._lock:
            builders, self._open = list(self._open.values()), {}
        for b in builders:
            if len(b):
                self._write(b)
