"""The pack stage: seal blobs and fill packs.

*Sealing* a blob compresses it with zstd (kept only when it shrinks the blob) and
encrypts it (:func:`corestate.repository.pack.seal_blob`). The *packer* appends sealed
blobs to one open pack per blob type and, when a pack reaches the target size
(~16 MiB), finishes it and hands it to the repository, which writes it and queues its
index entry. Finished packs are written by one *writer* thread behind a queue of
:data:`WRITE_QUEUE` packs, so sealing goes on while a pack is fsynced.
:meth:`Packer.flush` finishes every open pack and waits for the writer; after it
returns, every blob given to :meth:`Packer.add` is durable. A pack the store would not
take (an outage outlasting the backend's retries) is kept, finished, and written again by
the next :meth:`Packer.flush`, which raises the store's error until it succeeds: a caller
that retries the flush loses nothing.
"""

from __future__ import annotations

import queue
import threading

import zstandard

from corestate.repository.pack import (TARGET_PACK_SIZE, BlobType, PackBuilder, PackedBlob,
                                       SealedBlob, new_compressor, seal_blob)
from corestate.repository.repository import Repository

_local = threading.local()
WRITE_QUEUE = 1
Finished = tuple[str, bytearray, list[PackedBlob]]  # PackBuilder.finish: id, bytes, entries


def _compressor() -> zstandard.ZstdCompressor:
    comp: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if comp is None:
        comp = _local.zstd = new_compressor()
    return comp


class Packer:
    """Thread-safe: any thread may add; full packs are written by the writer thread."""

    def __init__(self, repo: Repository, target_size: int = TARGET_PACK_SIZE,
                 compress: bool = True) -> None:
        self._repo = repo
        self._target = target_size
        self._compress = compress
        self._open: dict[BlobType, PackBuilder] = {}
        self._lock = threading.Lock()
        self.blobs_added = 0
        self.bytes_stored = 0
        self._queue: queue.Queue[PackBuilder | None] = queue.Queue(WRITE_QUEUE)
        self._error: BaseException | None = None
        self._unwritten: list[Finished] = []  # finished packs the store did not take
        self._unwritten_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_loop, name="pack-writer", daemon=True)
        self._writer.start()

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
            self._queue.put(full)

    def add_plain(self, blob_id: bytes, btype: BlobType, plaintext: bytes) -> None:
        self.add(self.seal(blob_id, btype, plaintext))

    def _write_loop(self) -> None:
        while True:
            builder = self._queue.get()
            try:
                if builder is not None:
                    finished = builder.finish(self._repo.key)
                    if self._error is None:
                        self._write(finished)
                    else:  # the store is failing: kept for the next flush
                        with self._unwritten_lock:
                            self._unwritten.append(finished)
            except BaseException as exc:  # reported by flush
                self._error = exc
            finally:
                self._queue.task_done()
            if builder is None:
                return

    def _write(self, finished: Finished) -> None:
        try:
            self._repo.add_pack(*finished)
        except BaseException as exc:
            with self._unwritten_lock:
                self._unwritten.append(finished)
            self._error = exc

    def flush(self) -> None:
        """Write every open pack, and every pack an earlier flush could not, and wait
        until all packs are stored; raise the store's error if one still is not."""
        with self._lock:
            builders, self._open = list(self._open.values()), {}
        for b in builders:
            if len(b):
                self._queue.put(b)
        self._queue.join()
        if self._error is None:
            return
        with self._unwritten_lock:
            unwritten, self._unwritten = self._unwritten, []
        self._error = None
        for finished in unwritten:
            if self._error is None:
                self._write(finished)
            else:
                with self._unwritten_lock:
                    self._unwritten.append(finished)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the writer thread (after :meth:`flush`)."""
        self._queue.put(None)
        self._writer.join()
