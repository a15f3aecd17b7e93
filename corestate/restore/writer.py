"""Writing restored files' content pack by pack, on every core.

Terms:

- a *placement* is one blob at one offset of one file being restored
  (``(file index, offset)``); a blob used by several files, or twice by one, has
  several;
- the *plan* maps every pack that holds a needed blob to those blobs and their
  placements; it is complete before anything is written, so each pack is read once;
- a *pack job* (:class:`PackJob`) is one pack of the plan; packs are handed to
  worker processes (:mod:`corestate.pipeline.workers`), the least busy first, a few
  at a time;
- a worker reads a pack's needed blobs in *runs*: neighbouring blobs are read with one
  request, the bytes between them too when the gap is under :data:`READ_GAP`; then
  each blob is decrypted, decompressed, checked against its id and written at each of
  its placements (``pwrite``); its *zero blocks* are skipped so holes stay holes
  (:func:`data_runs`);
- a *failure* is a blob that could not be read or checked: every file it is placed in
  is reported, with the reason, and the restorer deals with it (another copy of the
  blob may restore it).

Files must exist before the plan runs (the restorer creates them) and are truncated
to size after it.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from corestate.errors import CoreStateError
from corestate.pipeline.workers import InlineWorker, Replies, WorkerFailed, WorkerProcess, cores
from corestate.repository.backend import Kind
from corestate.repository.pack import PackedBlob, open_blob
from corestate.repository.repository import Repository

HOLE_BLOCK = 4096  # the unit of holes: zero blocks this size (file-aligned) are not written
_ZERO_BLOCK = bytes(HOLE_BLOCK)
READ_GAP = 256 * 1024  # read through a gap this small rather than make another request
BATCH_PACKS = 4
INLINE_BYTES = 16 << 20  # a restore writing less than this stays in this process...
INLINE_FILES = 1000      # ... unless it has more files than this
FD_CACHE = 256

Placement = tuple[int, int]  # (file index, offset in the file)


def data_runs(data: bytes, offset: int) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` ranges of ``data`` (a blob that starts at file ``offset``)
    that must be written: all of it but its zero blocks, so a hole that shares a blob
    with data comes back as a hole. Blocks are :data:`HOLE_BLOCK` bytes at multiples of
    it in the file, so what is skipped is whole file system blocks.

    >>> block = bytes(HOLE_BLOCK)
    >>> list(data_runs(b"ab" + block + block + b"cd", HOLE_BLOCK - 2))
    [(0, 2), (8194, 8196)]
    >>> list(data_runs(b"x" * 10, 0))
    [(0, 10)]
    >>> list(data_runs(bytes(10), 0))
    []
    """
    length = len(data)
    if data.find(_ZERO_BLOCK) < 0 and (length >= HOLE_BLOCK or any(data)):
        yield 0, length  # no zero block anywhere: the common case, found in C
        return
    view = memoryview(data)
    run_start = -1
    start = 0
    while start < length:
        end = min(length, start + HOLE_BLOCK - (offset + start) % HOLE_BLOCK)
        if view[start:end] == _ZERO_BLOCK[:end - start]:
            if run_start >= 0:
                yield run_start, start
                run_start = -1
        elif run_start < 0:
            run_start = start
        start = end
    if run_start >= 0:
        yield run_start, length


@dataclass
class PackJob:
    """One pack and the placements of each of its blobs that is needed."""

    pack: str
    blobs: list[tuple[PackedBlob, list[Placement]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(entry.length for entry, _ in self.blobs)


@dataclass
class PackDone:
    """A worker's report on one pack: plaintext bytes written, the files that failed
    (file index, reason) and the bytes read from the pack."""

    pack: str
    written: int
    failed: list[tuple[int, str]]
    read: int


@dataclass(frozen=True)
class WriterJob:
    """What a worker needs: the repository and the files, by index (pickled to it)."""

    repo: Repository
    files: list[bytes]

    def start(self) -> PackWriter:
        return PackWriter(self.repo, self.files)


class PackWriter:
    """Writes the blobs of pack jobs into the files (the worker's handler)."""

    def __init__(self, repo: Repository, files: list[bytes]) -> None:
        self.repo = repo
        self.files = files
        self._fds: dict[int, int] = {}  # file index -> fd, oldest first

    def process(self, batch: list[PackJob]) -> list[PackDone]:
        return [self._pack(job) for job in batch]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, index: int) -> int:
        fd = self._fds.pop(index, None)
        if fd is None:
            if len(self._fds) >= FD_CACHE:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = os.open(self.files[index], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._fds[index] = fd  # most recently used last
        return fd

    def _pack(self, job: PackJob) -> PackDone:
        done = PackDone(job.pack, 0, [], 0)
        blobs = sorted(job.blobs, key=lambda b: b[0].offset)
        for run in _runs(blobs):
            start = run[0][0].offset
            end = run[-1][0].offset + run[-1][0].length
            try:
                data = self.repo.backend.read(Kind.DATA, job.pack, start, end - start)
                done.read += len(data)
            except CoreStateError as exc:
                done.failed += [(f, f"reading pack {job.pack[:16]}: {exc}")
                                for _, places in run for f, _ in places]
                continue
            view = memoryview(data)
            for entry, places in run:
                stored = view[entry.offset - start:entry.offset - start + entry.length]
                try:
                    if len(stored) != entry.length:
                        raise CoreStateError(f"pack {job.pack[:16]}: truncated, blob "
                                             f"{entry.id.hex()[:16]} is cut off")
                    plain = open_blob(self.repo.key, entry, stored)
                except CoreStateError as exc:
                    done.failed += [(f, f"{exc} (in pack {job.pack[:16]})") for f, _ in places]
                    continue
                for index, offset in places:
                    try:
                        self._write(index, plain, offset)
                    except OSError as exc:
                        done.failed.append((index, f"writing: {exc.strerror or exc}"))
                    done.written += len(plain)
            del view, data
        return done

    def _write(self, index: int, plain: bytes, offset: int) -> None:
        fd = None
        view = memoryview(plain)
        for start, end in data_runs(plain, offset):
            fd = self._fd(index) if fd is None else fd
            while start < end:
                start += os.pwrite(fd, view[start:end], offset + start)


def _runs(blobs: list[tuple[PackedBlob, list[Placement]]]
          ) -> Iterator[list[tuple[PackedBlob, list[Placement]]]]:
    """Neighbouring blobs (sorted by offset) grouped into runs read with one request."""
    run: list[tuple[PackedBlob, list[Placement]]] = []
    for item in blobs:
        if run and item[0].offset - (run[-1][0].offset + run[-1][0].length) > READ_GAP:
            yield run
            run = []
        run.append(item)
    if run:
        yield run


class Plan:
    """The blobs to write, by pack (see the module docstring)."""

    def __init__(self) -> None:
        self.files: list[bytes] = []
        self._packs: dict[str, dict[bytes, tuple[PackedBlob, list[Placement]]]] = {}
        self.bytes = 0

    def add_file(self, dest: bytes) -> int:
        self.files.append(dest)
        return len(self.files) - 1

    def place(self, pack: str, entry: PackedBlob, index: int, offset: int) -> None:
        blobs = self._packs.setdefault(pack, {})
        item = blobs.get(entry.id)
        if item is None:
            item = blobs[entry.id] = (entry, [])
        item[1].append((index, offset))
        self.bytes += entry.plaintext_length

    def jobs(self) -> list[PackJob]:
        return [PackJob(pack, list(blobs.values())) for pack, blobs in sorted(self._packs.items())]


def write(repo: Repository, plan: Plan, workers: int | None = None,
          progress: Callable[[int], None] | None = None) -> tuple[dict[int, str], dict[str, int]]:
    """Run the plan: every pack read once, across ``workers`` worker processes (one per
    core by default; a small plan stays in this process). Returns the files that failed
    (index -> reason) and the bytes read per pack; ``progress(bytes)`` is told of
    plaintext bytes written as packs complete."""
    jobs = plan.jobs()
    failed: dict[int, str] = {}
    reads: dict[str, int] = {}
    if not jobs:
        return failed, reads
    count = cores() if workers is None else max(0, workers)
    small = plan.bytes < INLINE_BYTES and len(plan.files) < INLINE_FILES
    replies: Replies = queue.SimpleQueue()
    job = WriterJob(repo, plan.files)
    handles: list[WorkerProcess | InlineWorker]
    if count == 0 or small:
        handles = [InlineWorker(0, job, replies)]
    else:
        handles = [WorkerProcess(i, job, replies, "restore") for i in range(count)]
    busy = {h.index: 0 for h in handles}  # batches in flight
    todo = sorted(jobs, key=lambda j: j.size)  # popped from the end: big packs first
    try:
        while todo or any(busy.values()):
            for h in handles:
                while todo and busy[h.index] < 2:
                    batch = [todo.pop() for _ in range(min(BATCH_PACKS, len(todo)))]
                    busy[h.index] += 1
                    h.send(batch)
            index, out = replies.get()
            busy[index] -= 1
            for item in out:
                if isinstance(item, WorkerFailed):
                    raise item.error()
                assert isinstance(item, PackDone)
                reads[item.pack] = reads.get(item.pack, 0) + item.read
                for f, why in item.failed:
                    failed.setdefault(f, why)
                if progress is not None:
                    progress(item.written)
    finally:
        for h in handles:
            h.stop()
    return failed, reads
