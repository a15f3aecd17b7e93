"""The chunk stage: file content in, blobs out. Content-defined chunking of a byte stream.

A *chunk* is a run of bytes whose boundaries depend only on the content around them
(FastCDC, from the compiled ``fastcdc`` library), so an insertion early in a file moves
only the chunks near it. Bounds follow restic: minimum 512 KiB, average 1 MiB, maximum
8 MiB. Each chunk becomes one data blob named by the SHA-256 of its bytes.

The stream is read into one reused buffer of :data:`WINDOW` bytes; the last chunk found
in a window is not final unless the stream ended or it has the maximum size (its end
may be a window edge, not a content boundary), so its bytes are moved to the front and
the window is refilled behind them. Memory is bounded by the window (at least the
maximum chunk size) whatever the file's size.

>>> import io, random
>>> data = random.Random(1).randbytes(5_000_000)
>>> chunks = list(chunk_stream(io.BytesIO(data)))
>>> b"".join(chunks) == data, all(MIN_SIZE <= len(c) <= MAX_SIZE for c in chunks[:-1])
(True, True)
>>> [len(c) for c in chunk_stream(io.BytesIO(data), window=1)] == [len(c) for c in chunks]
True
>>> [len(c) for c in chunk_stream(io.BytesIO(data), size_hint=10)] == [len(c) for c in chunks]
True
>>> [len(c) for c in chunk_stream(io.BytesIO(bytes(20_000_000)))]
[8388608, 8388608, 3222784]

The :class:`ChunkStage` turns files into :class:`~corestate.schemas.events.Chunk` events
(blob id and bytes, for the pack stage) and one
:class:`~corestate.schemas.events.FileManifest` per file (its metadata and ordered blob
ids, for the committer). A file's content reaches it in one of two ways:

- as capture events from an agent (distributed mode): ``FileBegin``, ``DataSegment`` s in
  order, ``FileEnd``; the stage spools a file's segments and chunks it at its end (a
  big file into fixed blocks, the same blobs a local read makes);
- as a :class:`~corestate.pipeline.jobs.ReadFile` job (embedded mode): the stage reads
  the file from the local disk consistently (:class:`~corestate.pipeline.capture.ConsistentRead`).
  A *big* file (at least ``block_threshold`` bytes) is cut into fixed blocks instead of
  content-defined chunks, so an unchanged block is always the same blob; with a block
  map of the parent's version (:mod:`corestate.kernel.blockmap`) only blocks whose xxh3
  digest changed are hashed and emitted, the others keep the parent's blob ids.

End markers of a snapshot are forwarded to every chunks partition and to ``files``
(``source_partition`` set to the partition they came in on): a forwarded marker follows
every chunk and manifest of the snapshot from that partition.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import xxhash
from fastcdc import fastcdc as _fastcdc  # type: ignore[import-untyped]  # Cython build

from corestate.kernel import blockmap
from corestate.kernel.blockmap import BlockMap, BlockMapStore
from corestate.pipeline.assemble import meta_from_node, node_from_meta
from corestate.pipeline.capture import ConsistentRead, EntryChanged, Sources
from corestate.pipeline.jobs import PreviousVersion, ReadFailed, ReadFile, Record
from corestate.pipeline.stage import Emit, Holds, RejectedEventError
from corestate.schemas.events import (Chunk, DataSegment, Delete, FileBegin, FileEnd,
                                      FileManifest, Rename, SnapshotMarker)

MIN_SIZE = 512 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 8 * 1024 * 1024
WINDOW = 8 * 1024 * 1024


def chunk_stream(stream: BinaryIO, window: int = WINDOW, size_hint: int | None = None
                 ) -> Iterator[bytes]:
    """Yield the chunks of ``stream`` in order; an empty stream yields nothing.

    ``size_hint`` (the file's size) only sizes the first buffer: small files do not
    get a whole window; a file that grows past the hint gets the full window."""
    window = max(window, MAX_SIZE)
    if size_hint is not None and size_hint < MIN_SIZE:
        # a small file is one chunk (FastCDC never cuts before MIN_SIZE): read it whole,
        # with no window to fill and no copy out of one, unless it grew meanwhile
        parts: list[bytes] = []
        total = 0
        while total <= size_hint:  # to EOF, or one byte past the hint
            part = stream.read(size_hint + 1 - total)
            if not part:
                break
            parts.append(part)
            total += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if total <= size_hint:
            if data:
                yield data
            return
        stream = _Prefixed(data, stream)  # type: ignore[assignment]  # readinto is all it needs
    buf = bytearray(window if size_hint is None else min(window, size_hint + 1))
    filled = 0
    eof = False
    while not eof:
        while True:  # fill the window (short reads are fine)
            if filled == len(buf):
                if len(buf) >= window:
                    break
                buf.extend(bytes(window - len(buf)))
            with memoryview(buf) as whole:
                n = stream.readinto(whole[filled:])  # type: ignore[attr-defined]
            if not n:
                eof = True
                break
            filled += n
        if filled == 0:
            return
        with memoryview(buf)[:filled] as view:
            cuts = [(c.offset, c.length) for c in
                    _fastcdc(view, min_size=MIN_SIZE, avg_size=AVG_SIZE, max_size=MAX_SIZE)]
            if not eof and cuts[-1][1] < MAX_SIZE:
                keep = cuts.pop()  # may end at the window edge, not at a content boundary
            else:
                keep = (filled, 0)
            for off, length in cuts:
                yield bytes(view[off:off + length])
        rest = filled - keep[0]
        buf[:rest] = buf[keep[0]:filled]  # carry the unfinished chunk to the front
        filled = rest


class _Prefixed:
    """A stream that first yields ``head``, then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readinto(self, into: memoryview) -> int:
        if self._head:
            n = min(len(into), len(self._head))
            into[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._stream.readinto(into)  # type: ignore[attr-defined, no-any-return]


_SPOOL = 8 << 20  # a file's bytes stay in memory up to this size, then go to a temp file
BLOCK_THRESHOLD = 64 * 1024 * 1024


@dataclass
class _OpenFile:
    begin: FileBegin
    spool: tempfile.SpooledTemporaryFile[bytes]
    next_seq: int = 0


@dataclass
class ReadReport:
    """What the local reads of a chunk stage found: counts, and the files that changed
    while read (``inconsistent``) or could not be read (``errors``: path, reason)."""

    files_new: int = 0
    files_changed: int = 0
    bytes_read: int = 0
    inconsistent: list[bytes] = field(default_factory=list)
    errors: list[tuple[bytes, str]] = field(default_factory=list)


class ChunkStage:
    """Turns file content into chunks and manifests (see the module docstring).

    State: the files begun and not yet ended, per partition (each holds its partition
    from its ``FileBegin``: until its end, it would have to be replayed). ``report``
    counts what local reads found. ``block_store`` keeps big files' block maps."""

    def __init__(self, chunk_partitions: int, block_threshold: int = BLOCK_THRESHOLD,
                 block_size: int = blockmap.DEFAULT_BLOCK_SIZE,
                 block_store: BlockMapStore | None = None) -> None:
        self.chunk_partitions = chunk_partitions
        self.block_threshold = block_threshold
        self.block_size = block_size
        self.block_store = block_store
        self.report = ReadReport()
        self.sources: Sources | None = None  # of the run in progress (its begin marker)
        self._open: dict[tuple[int, str, bytes], _OpenFile] = {}
        self._holds = Holds()

    def settled(self, partition: int) -> int | None:
        return self._holds.settled(partition)

    def flush(self) -> Iterator[Emit]:
        return iter(())

    def tick(self, now: float) -> Iterator[Emit]:
        return iter(())

    def reset(self) -> None:
        """Forget every open file (partitions were revoked: they will be replayed)."""
        for f in self._open.values():
            f.spool.close()
        self._open.clear()
        self._holds.clear()

    def close(self) -> None:
        self.reset()

    def handle(self, partition: int, position: int, event: Record) -> Iterator[Emit]:
        self._holds.seen(partition, position)
        if isinstance(event, ReadFile):
            yield from self._read(partition, event)
        elif isinstance(event, FileBegin):
            key = (partition, event.host, event.path)
            old = self._open.pop(key, None)
            if old is not None:  # the agent restarted this file
                old.spool.close()
            self._open[key] = _OpenFile(event, tempfile.SpooledTemporaryFile(max_size=_SPOOL))
            self._holds.hold(partition, key, position)
        elif isinstance(event, DataSegment):
            f = self._open.get((partition, event.host, event.path))
            where = f"{event.host}:{os.fsdecode(event.path)}"
            if f is None:
                raise RejectedEventError(f"DataSegment of {where} without a FileBegin")
            if event.seq == 0:  # a re-read of a file that changed underfoot starts over
                f.spool.seek(0)
                f.spool.truncate()
                f.next_seq = 0
            if event.seq != f.next_seq:
                raise RejectedEventError(f"DataSegment {event.seq} of {where}: expected "
                                         f"{f.next_seq}")
            f.spool.write(event.data)
            f.next_seq += 1
        elif isinstance(event, FileEnd):
            yield from self._end(partition, event)
        elif isinstance(event, SnapshotMarker):
            if event.kind == "begin":
                self.sources = Sources(event.paths)
            elif event.kind == "end":
                fwd = replace(event, source_partition=partition)
                for p in range(self.chunk_partitions):
                    yield Emit("chunks", fwd, partition=p)
                yield Emit("files", fwd, key=event.snapshot_id.encode("utf-8"))
        elif isinstance(event, Delete):
            # A file that could not be read after its FileBegin is withdrawn.
            key = (partition, event.host, event.path)
            old = self._open.pop(key, None)
            if old is not None:
                old.spool.close()
            self._holds.release(key, partition)
        elif isinstance(event, Rename):
            pass  # only a watching agent sends them; a full scan never does
        else:
            raise RejectedEventError(f"{type(event).__name__} does not belong on captures")

    # -- content from an agent ------------------------------------------------------------
    def _end(self, partition: int, end: FileEnd) -> Iterator[Emit]:
        key = (partition, end.host, end.path)
        f = self._open.pop(key, None)
        self._holds.release(key, partition)
        where = f"{end.host}:{os.fsdecode(end.path)}"
        if f is None:
            raise RejectedEventError(f"FileEnd of {where} without a FileBegin")
        with f.spool:
            size = f.spool.tell()
            if end.segments != f.next_seq or end.size != size:
                raise RejectedEventError(
                    f"FileEnd of {where}: {end.segments} segments, {end.size} bytes announced, "
                    f"{f.next_seq} segments, {size} bytes received")
            node = f.begin.node
            blobs: list[bytes] = []
            if node.type == "file":
                f.spool.seek(0)
                if size >= self.block_threshold:  # fixed blocks, as a local read cuts it
                    pieces: Iterator[bytes] = iter(lambda: f.spool.read(self.block_size), b"")
                else:
                    pieces = chunk_stream(f.spool, size_hint=size)  # type: ignore[arg-type]
                for data in pieces:
                    blob_id = hashlib.sha256(data).digest()
                    blobs.append(blob_id)
                    yield Emit("chunks", Chunk(blob_id=blob_id, snapshot_id=end.snapshot_id,
                                               data=data, source_partition=partition))
                node = replace(node, size=size)
        yield Emit("files", FileManifest(snapshot_id=end.snapshot_id, path=end.path, node=node,
                                         blobs=tuple(blobs)))

    # -- content from the local disk ------------------------------------------------------
    def _read(self, partition: int, job: ReadFile) -> Iterator[Emit]:
        """Read a file consistently and chunk it. The file read is the one the scan
        found (:class:`~corestate.pipeline.capture.ConsistentRead`); one that was
        replaced meanwhile is taken as what it is now (another file's content, or a
        symlink, fifo or device node recorded as such); a failure is a
        :class:`ReadFailed`."""
        big = job.node.size >= self.block_threshold
        blobs: list[bytes] = []
        new_map: BlockMap | None = None
        scanned = node_from_meta(os.path.basename(job.path), job.node)
        reading = ConsistentRead(job.path, job.node.device_id, scanned, self.sources)
        try:
            for fd, st in reading:
                if big:
                    fresh: dict[int, bytes] = {}
                    new_map = yield from self._blocks(partition, job, fd, st, fresh)
                    blobs = block_ids(new_map, job.previous, fresh)
                    continue
                blobs = []
                for data in chunk_stream(io.FileIO(fd, closefd=False), size_hint=st.st_size):
                    chunk = self._chunk(job, partition, data)
                    blobs.append(chunk.blob_id)
                    yield Emit("chunks", chunk)
        except OSError as exc:
            if isinstance(exc, EntryChanged) and exc.node is not None:
                yield Emit("files", FileManifest(snapshot_id=job.snapshot_id, path=job.path,
                                                 node=meta_from_node(exc.node), blobs=()))
                return
            vanished = isinstance(exc, FileNotFoundError)
            reason = exc.strerror if exc.strerror else str(exc)
            if not vanished:
                self.report.errors.append((job.path, reason))
            yield Emit("files", ReadFailed(job.snapshot_id, job.path, reason, vanished))
            return
        outcome = reading.outcome
        assert outcome is not None
        st = outcome.st
        if new_map is not None and outcome.consistent and self.block_store is not None:
            self.block_store.save(replace(new_map, size=st.st_size, mtime_ns=st.st_mtime_ns))
        report = self.report
        if not outcome.consistent:
            report.inconsistent.append(job.path)
        if job.previous is None:
            report.files_new += 1
        else:
            report.files_changed += 1
        report.bytes_read += st.st_size
        meta = meta_from_node(scanned) if outcome.replaced else job.node
        node = replace(meta, size=st.st_size, mtime=st.st_mtime_ns, ctime=st.st_ctime_ns)
        yield Emit("files", FileManifest(snapshot_id=job.snapshot_id, path=job.path, node=node,
                                         blobs=tuple(blobs)))

    @staticmethod
    def _chunk(job: ReadFile, partition: int, data: bytes) -> Chunk:
        return Chunk(blob_id=hashlib.sha256(data).digest(), snapshot_id=job.snapshot_id,
                     data=data, source_partition=partition)

    def _blocks(self, partition: int, job: ReadFile, fd: int, st: os.stat_result,
                fresh: dict[int, bytes]) -> Generator[Emit, None, BlockMap]:
        """A big file as fixed-size blocks: yields the chunks of the blocks read (their
        ids into ``fresh`` by block index) and returns the file's new block map. With a
        map of the parent's version, only blocks whose xxh3 digest changed are read."""
        size = self.block_size
        prev = self.block_store.load(st.st_dev, st.st_ino) if self.block_store is not None else None
        old = job.previous
        usable = (prev is not None and old is not None and prev.block_size == size
                  and (old.device_id, old.inode) == (st.st_dev, st.st_ino)
                  and prev.size == old.size and prev.mtime_ns == old.mtime
                  and len(old.blobs) == blockmap.block_count(old.size, size))
        if usable:
            assert prev is not None
            block_map, changed = blockmap.scan(fd, size, prev)
            for i, data in blockmap.read_blocks(fd, size, changed):
                chunk = self._chunk(job, partition, data)
                fresh[i] = chunk.blob_id
                yield Emit("chunks", chunk)
            return block_map
        digests: list[int] = []
        total = 0
        for i in itertools.count():  # to the end, even if it moved since the stat
            data = next(blockmap.read_blocks(fd, size, [i]), (i, b""))[1]
            if not data:
                break
            digests.append(xxhash.xxh3_64_intdigest(data))
            chunk = self._chunk(job, partition, data)
            fresh[i] = chunk.blob_id
            yield Emit("chunks", chunk)
            total += len(data)
        return BlockMap(size, total, digests, st.st_dev, st.st_ino, st.st_mtime_ns)


def block_ids(block_map: BlockMap, previous: PreviousVersion | None,
              fresh: dict[int, bytes]) -> list[bytes]:
    """A big file's blob ids: block ``i`` is ``fresh[i]`` if it was read, else the
    parent's (unchanged since)."""
    old = previous.blobs if previous is not None else ()
    return [fresh[i] if i in fresh else old[i] for i in range(len(block_map.digests))]
