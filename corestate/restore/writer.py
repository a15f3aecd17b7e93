"""Writing restored files' content pack by pack, on every core.

Terms:

- a *placement* is one blob at one offset of one file being restored
  (``(file index, offset)``); a blob used by several files, or twice by one, has
  several;
- the *plan* maps every pack that holds a needed blob to those blobs and their
  placements; it is complete before anything is written, so each pack is read once;
- a *pack job* (:class:`PackJob`) is one pack of the plan; packs are handed to
  worker processes (:mod:`corestate.pipeline.workers`) one at a time, the costliest
  first (:attr:`PackJob.cost`), each worker holding at most two;
- a worker reads a pack's needed blobs in *runs*: neighbouring blobs are read with one
  request, the bytes between them too when the gap is under :data:`READ_GAP`; then
  each blob is decrypted, decompressed, checked against its id and written at each of
  its placements (``pwrite``); its *zero blocks* are skipped so holes stay holes
  (:func:`data_runs`);
- a *whole file* is a file the restorer hands over with its metadata
  (:meth:`Plan.add_file` with a :class:`~corestate.restore.metadata.Meta`) whose blobs
  are all in one pack: the worker that writes that pack creates it (exclusively, with
  its mode), writes it, truncates it to its size, sets its metadata and closes it, one
  ``open`` in all. Most small files are whole files;
- a *failure* is a blob that could not be read or checked: every file it is placed in
  is reported, with the reason, and the restorer deals with it (another copy of the
  blob may restore it); a whole file that could not be created is *lost* (reported,
  not written again).

Other files must exist before the plan runs (the restorer creates them) and are
truncated to size and given their metadata by the restorer after it.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from corestate.errors import CoreStateError
from corestate.pipeline.workers import InlineWorker, Replies, WorkerFailed, WorkerProcess, cores
from corestate.repository.backend import Kind
from corestate.repository.pack import PackedBlob, open_blob
from corestate.repository.repository import Repository
from corestate.restore import metadata
from corestate.restore.metadata import Meta

HOLE_BLOCK = 4096  # the unit of holes: zero blocks this size (file-aligned) are not written
_ZERO_BLOCK = bytes(HOLE_BLOCK)
READ_GAP = 256 * 1024  # read through a gap this small rather than make another request
PLACEMENT_COST = 32 << 10  # a placement costs about as much as writing this many bytes
INLINE_BYTES = 16 << 20  # a restore writing less than this stays in this process...
INLINE_FILES = 1000      # ... unless it has more files than this
FD_CACHE = 256
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

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


class Whole(NamedTuple):
    """A whole file of a pack job: its size, its metadata, and whether creating it gives
    it the right owner and mode already (see :mod:`corestate.restore.metadata`)."""

    size: int
    meta: Meta
    owner_ok: bool
    mode_ok: bool


@dataclass
class PackJob:
    """One pack, the placements of each of its blobs that is needed, the paths of the
    files they go to (file index -> path) and the whole files among them (file index
    -> :class:`Whole`). A worker learns a file's path from the jobs that write it."""

    pack: str
    blobs: list[tuple[PackedBlob, list[Placement]]] = field(default_factory=list)
    whole: dict[int, Whole] = field(default_factory=dict)
    paths: dict[int, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(entry.length for entry, _ in self.blobs)

    @property
    def cost(self) -> int:
        """The work of the job in bytes-equivalent: its bytes, and each placement (a
        pack of 10,000 small files costs far more than one of a few big ones)."""
        return self.size + PLACEMENT_COST * sum(len(places) for _, places in self.blobs)


@dataclass
class PackDone:
    """A worker's report on one pack: plaintext bytes written, the files that failed
    (file index, reason) and the bytes read from the pack; the whole files it finished,
    those it could not create (``lost``: file index, reason) and those whose metadata
    could not be set (``meta_errors``, file index, reason: the file is kept)."""

    pack: str
    written: int
    failed: list[tuple[int, str]]
    read: int
    finished: int = 0
    lost: list[tuple[int, str]] = field(default_factory=list)
    meta_errors: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class WriterJob:
    """What a worker needs: the repository, and whether the restore runs as root (an
    owner it cannot set is then an error); pickled to it."""

    repo: Repository
    is_root: bool = False

    def start(self) -> PackWriter:
        return PackWriter(self.repo, self.is_root)


class PackWriter:
    """Writes the blobs of pack jobs into the files, and finishes the whole files (the
    worker's handler)."""

    def __init__(self, repo: Repository, is_root: bool = False) -> None:
        self.repo = repo
        self._paths: dict[int, bytes] = {}  # the current job's files (a cached fd outlives it)
        self.is_root = is_root
        self._fds: dict[int, int] = {}  # file index -> fd, oldest first
        self._create: dict[int, int] = {}  # whole files of the job not created yet -> mode

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
            mode = self._create.get(index)
            if mode is None:
                fd = os.open(self._paths[index], os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            else:
                fd = os.open(self._paths[index], _CREATE, mode & 0o777)
                del self._create[index]
        self._fds[index] = fd  # most recently used last
        return fd

    def _pack(self, job: PackJob) -> PackDone:
        done = PackDone(job.pack, 0, [], 0)
        blobs = sorted(job.blobs, key=lambda b: b[0].offset)
        left = dict.fromkeys(job.whole, 0)  # whole file -> its placements not written yet
        for _, places in blobs:
            for index, _ in places:
                if index in left:
                    left[index] += 1
        self._create = {index: whole.meta.mode for index, whole in job.whole.items()}
        self._paths = job.paths
        try:
            for run in _runs(blobs):
                start = run[0][0].offset
                end = run[-1][0].offset + run[-1][0].length
                try:
                    data = self.repo.backend.read(Kind.DATA, job.pack, start, end - start)
                    done.read += len(data)
                except CoreStateError as exc:
                    self._fail(done, left, [(f, f"reading pack {job.pack[:16]}: {exc}")
                                            for _, places in run for f, _ in places])
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
                        self._fail(done, left, [(f, f"{exc} (in pack {job.pack[:16]})")
                                                for f, _ in places])
                        continue
                    for index, offset in places:
                        self._place(done, left, job, index, plain, offset)
                del view, data
        finally:
            for index in left:  # whole files not finished: the restorer deals with them
                fd = self._fds.pop(index, None)
                if fd is not None:
                    os.close(fd)
            self._create = {}
        return done

    @staticmethod
    def _fail(done: PackDone, left: dict[int, int], failures: list[tuple[int, str]]) -> None:
        done.failed += failures
        for index, _ in failures:
            left.pop(index, None)  # not finished here

    def _place(self, done: PackDone, left: dict[int, int], job: PackJob, index: int,
               plain: bytes, offset: int) -> None:
        """Write one placement; finish a whole file at its last one."""
        whole = index in job.whole
        if whole and index not in left:
            return  # failed or lost already
        try:
            self._write(index, plain, offset)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if index in self._create:  # a whole file that could not be created
                done.lost.append((index, f"creating file: {reason}"))
                left.pop(index)
                return
            self._fail(done, left, [(index, f"writing: {reason}")])
            return
        done.written += len(plain)
        if whole:
            left[index] -= 1
            if not left[index]:
                self._finish(index, job.whole[index], done)
                del left[index]

    def _finish(self, index: int, whole: Whole, done: PackDone) -> None:
        """Truncate a whole file to its size, set its metadata and close it."""
        try:
            fd = self._fd(index)  # created here if every block of it was a hole
        except OSError as exc:
            done.lost.append((index, f"creating file: {exc.strerror or exc}"))
            return
        del self._fds[index]
        try:
            os.ftruncate(fd, whole.size)
        except OSError as exc:
            os.close(fd)
            done.failed.append((index, f"writing: {exc.strerror or exc}"))
            return
        try:
            metadata.apply(self._paths[index], whole.meta, fd, whole.owner_ok, whole.mode_ok,
                           self.is_root)
        except OSError as exc:
            done.meta_errors.append((index, f"setting metadata: {exc.strerror or exc}"))
        finally:
            os.close(fd)
        done.finished += 1

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
    """The blobs to write, by pack, and the files that may be whole files (see the
    module docstring)."""

    def __init__(self) -> None:
        self.files: list[bytes] = []
        self._packs: dict[str, dict[bytes, tuple[PackedBlob, list[Placement]]]] = {}
        self._offered: dict[int, Whole] = {}  # files the workers may finish
        self._pack_of: dict[int, str] = {}  # offered file -> its one pack so far ("": more)
        self.bytes = 0

    def add_file(self, dest: bytes, whole: Whole | None = None) -> int:
        """A file to write, by index. With ``whole``, the restorer has not created it:
        a worker creates and finishes it if its blobs are all in one pack (else the
        restorer must, see :meth:`whole`)."""
        self.files.append(dest)
        index = len(self.files) - 1
        if whole is not None:
            self._offered[index] = whole
        return index

    def keep(self, index: int) -> None:
        """The restorer finishes this file itself (it could not plan all of it)."""
        self._offered.pop(index, None)

    def place(self, pack: str, entry: PackedBlob, index: int, offset: int) -> None:
        blobs = self._packs.setdefault(pack, {})
        item = blobs.get(entry.id)
        if item is None:
            item = blobs[entry.id] = (entry, [])
        item[1].append((index, offset))
        self.bytes += entry.plaintext_length
        if index in self._offered and self._pack_of.setdefault(index, pack) != pack:
            self._pack_of[index] = ""

    def whole(self, index: int) -> bool:
        """Whether a worker creates and finishes the file ``index``."""
        return index in self._offered and bool(self._pack_of.get(index))

    def jobs(self) -> list[PackJob]:
        wholes: dict[str, dict[int, Whole]] = {}
        for index, whole in self._offered.items():
            if self.whole(index):
                wholes.setdefault(self._pack_of[index], {})[index] = whole
        files = self.files
        return [PackJob(pack, list(blobs.values()), wholes.get(pack, {}),
                        {i: files[i] for _, places in blobs.values() for i, _ in places})
                for pack, blobs in sorted(self._packs.items())]


@dataclass
class Written:
    """What :func:`write` did: the files that failed (index -> reason: the restorer
    writes them again or removes them), the whole files lost (index -> reason: not
    created), the metadata that could not be set on whole files (index -> reason), and
    the bytes read per pack."""

    failed: dict[int, str] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)
    meta_errors: dict[int, str] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)


def write(repo: Repository, plan: Plan, workers: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> Written:
    """Run the plan: every pack read once, across ``workers`` worker processes (one per
    core by default; a small plan stays in this process). ``progress(files, bytes)`` is
    told of the whole files finished and the plaintext bytes written as packs complete."""
    jobs = plan.jobs()
    out = Written()
    if not jobs:
        return out
    count = cores() if workers is None else max(0, workers)
    small = plan.bytes < INLINE_BYTES and len(plan.files) < INLINE_FILES
    replies: Replies = queue.SimpleQueue()
    job = WriterJob(repo, os.geteuid() == 0)
    handles: list[WorkerProcess | InlineWorker]
    if count == 0 or small:
        handles = [InlineWorker(0, job, replies)]
    else:
        handles = [WorkerProcess(i, job, replies, "restore") for i in range(count)]
    busy = {h.index: 0 for h in handles}  # packs in flight
    todo = sorted(jobs, key=lambda j: j.cost)  # popped from the end: costliest first
    try:
        while todo or any(busy.values()):
            for h in handles:
                while todo and busy[h.index] < 2:
                    busy[h.index] += 1
                    h.send([todo.pop()])
            index, reply = replies.get()
            busy[index] -= 1
            for item in reply:
                if isinstance(item, WorkerFailed):
                    raise item.error()
                assert isinstance(item, PackDone)
                out.reads[item.pack] = out.reads.get(item.pack, 0) + item.read
                for f, why in item.failed:
                    out.failed.setdefault(f, why)
                out.lost.update(item.lost)
                out.meta_errors.update(item.meta_errors)
                if progress is not None:
                    progress(item.finished, item.written)
    finally:
        for h in handles:
            h.stop()
    return out
