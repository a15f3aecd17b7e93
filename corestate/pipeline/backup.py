"""The embedded backup runner: capture, chunk, dedup, pack and commit in one process.

The runner walks the source paths in a *walker* thread, hands each regular file to a
pool of *file workers* (read consistently, chunk, hash, dedup) and each new chunk to a
pool of *sealers* (zstd, encrypt, append to a pack). Bounded semaphores cap the files
and chunks in flight, so memory stays bounded whatever the tree or file size. The
calling thread assembles *directory jobs* in post-order: once every child of a
directory is known, its tree blob is built and packed, and its id completes the
directory's node in the parent.

Unchanged files (same size, mtime, ctime and inode as in the parent snapshot) are not
read: their content list is copied from the parent, as restic does.

The snapshot tree nests each absolute source path from the root (``/home/u/docs`` is
``home`` -> ``u`` -> ``docs``), as restic's do.

Commit order: wait for every chunk to be sealed, flush open packs, write the index,
store the ordinal table segment, then the snapshot, then its blob bitmap.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pyroaring import BitMap

from corestate.errors import CoreStateError
from corestate.pipeline import dedup as dedupmod
from corestate.pipeline.capture import (ExcludeMatcher, node_from_stat, read_consistently,
                                        unchanged)
from corestate.pipeline.chunk import chunk_stream
from corestate.pipeline.packer import Packer
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.timefmt import now_ns
from corestate.repository.tree import Node, encode_tree


INLINE_SEAL = 256 * 1024


@dataclass
class BackupOptions:
    paths: list[str]
    excludes: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    hostname: str = field(default_factory=socket.gethostname)
    parent: str | None = None  # snapshot id; None = latest for host + paths
    force: bool = False  # read every file even if unchanged
    workers: int = 3
    time_ns: int | None = None


@dataclass
class BackupSummary:
    """restic's backup summary fields, plus what went wrong."""

    snapshot_id: str = ""
    parent: str | None = None
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    data_added: int = 0
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    total_duration: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors


Progress = Callable[[BackupSummary, str], None]


@dataclass
class _DirJob:
    """A directory whose node waits for its children's nodes."""

    node: Node
    children: list[Node | Future[Node]]
    done: Future[Node]


class _Run:
    def __init__(self, repo: Repository, opts: BackupOptions, progress: Progress | None) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.summary = BackupSummary()
        self.excludes = ExcludeMatcher(opts.excludes)
        self.packer = Packer(repo)
        repo.load_index()
        self.table = dedupmod.load_table(repo)
        self.dedup = dedupmod.DedupIndex(repo.index, self.table, repo.index.blob_ids())
        self.bitmap = BitMap()
        self._bitmap_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        workers = max(1, opts.workers)
        self.files = ThreadPoolExecutor(workers, thread_name_prefix="file")
        self.sealers = ThreadPoolExecutor(2, thread_name_prefix="seal")
        self._files_in_flight = threading.BoundedSemaphore(workers * 16)
        self._chunks_in_flight = threading.BoundedSemaphore(8)
        self._seal_error: BaseException | None = None
        self._pending_seals = 0
        self._seals_done = threading.Condition()
        self.jobs: queue.Queue[_DirJob | BaseException | None] = queue.Queue()
        self._last_progress = 0.0
        self._repo_path = os.fsencode(os.path.realpath(repo.backend.location()))

    # -- blobs -------------------------------------------------------------------------
    def _reference(self, ids: list[bytes]) -> None:
        ords = [self.table.assign(b) for b in ids]
        with self._bitmap_lock:
            self.bitmap.update(ords)

    def _store(self, blob_id: bytes, btype: BlobType, plaintext: bytes) -> None:
        """Seal and pack a new blob: small ones right here (a hand-off would cost more
        than the work), others on the sealer pool (bounded)."""
        if len(plaintext) < INLINE_SEAL:
            self.packer.add_plain(blob_id, btype, plaintext)
            return
        self._chunks_in_flight.acquire()
        with self._seals_done:
            self._pending_seals += 1

        def work() -> None:
            try:
                self.packer.add_plain(blob_id, btype, plaintext)
            except BaseException as exc:  # surfaced by wait_sealed
                self._seal_error = exc
            finally:
                self._chunks_in_flight.release()
                with self._seals_done:
                    self._pending_seals -= 1
                    self._seals_done.notify_all()

        self.sealers.submit(work)

    def wait_sealed(self) -> None:
        with self._seals_done:
            while self._pending_seals:
                self._seals_done.wait()
        if self._seal_error is not None:
            raise self._seal_error

    # -- files -----------------------------------------------------------------------------
    def _error(self, path: bytes, exc: OSError | CoreStateError) -> None:
        msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        with self._stats_lock:
            self.summary.errors.append((os.fsdecode(path), msg))

    def _unchanged(self, old: Node) -> Node:
        """An unchanged file keeps its parent-snapshot node whole (content, and the
        stored JSON, so its tree need not be re-encoded)."""
        self._reference(old.content or [])
        with self._stats_lock:
            self.summary.files_unmodified += 1
            self.summary.total_files_processed += 1
            self.summary.total_bytes_processed += old.size
        return old

    def _file(self, path: bytes, node: Node, old: Node | None) -> Node | None:
        """Read, chunk and store a new or changed file; None if it cannot be read."""
        ids: list[bytes] = []

        def consume(chunks: Iterator[bytes]) -> None:
            ids.clear()
            for chunk in chunks:
                bid = hashlib.sha256(chunk).digest()
                ids.append(bid)
                if self.dedup.claim(bid):
                    with self._stats_lock:
                        self.summary.data_blobs += 1
                        self.summary.data_added += len(chunk)
                    self._store(bid, BlobType.DATA, chunk)

        try:
            outcome = read_consistently(path, consume, chunk_stream)
        except OSError as exc:
            self._error(path, exc)
            return None
        st = outcome.st
        node.content = ids
        node.size, node.mtime, node.ctime = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        with self._stats_lock:
            if not outcome.consistent:
                self.summary.inconsistent.append(os.fsdecode(path))
            if old is None:
                self.summary.files_new += 1
            else:
                self.summary.files_changed += 1
        self._reference(node.content)
        with self._stats_lock:
            self.summary.total_files_processed += 1
            self.summary.total_bytes_processed += node.size
        return node

    def _submit_file(self, path: bytes, node: Node, old: Node | None) -> Future[Node | None]:
        self._files_in_flight.acquire()

        def work() -> Node | None:
            try:
                return self._file(path, node, old)
            finally:
                self._files_in_flight.release()

        return self.files.submit(work)

    # -- walking (walker thread) ------------------------------------------------------------
    def _old_children(self, old: Node | None) -> dict[bytes, Node]:
        if old is None or old.type != "dir" or old.subtree is None:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(old.subtree)}
        except CoreStateError:
            return {}  # a damaged parent only costs re-reading

    def _walk_dir(self, path: bytes, node: Node, old: Node | None,
                  only: dict[bytes, dict] | None) -> Future[Node]:  # type: ignore[type-arg]
        """Queue jobs for a directory's entries, then the directory itself.

        ``only`` limits the entries to the given names (the virtual directories above
        the backed-up paths), each with its own ``only`` (None = everything below)."""
        old_children = self._old_children(old)
        children: list[Node | Future[Node]] = []
        if only is None:
            try:
                with os.scandir(path) as it:
                    names = sorted(e.name for e in it)
            except OSError as exc:
                self._error(path, exc)
                names = []
        else:
            names = sorted(only)
        for name in names:
            full = (path.rstrip(b"/") + b"/" + name)
            if self.excludes.excluded(full) or full == self._repo_path:
                continue
            try:
                st = os.lstat(full)
                child = node_from_stat(name, full, st)
            except OSError as exc:
                self._error(full, exc)
                continue
            old_child = old_children.get(name)
            if stat.S_ISSOCK(st.st_mode):
                continue  # restic records no sockets: they cannot be restored meaningfully
            if stat.S_ISDIR(st.st_mode):
                children.append(self._walk_dir(full, child, old_child,
                                               None if only is None else only[name]))
            elif stat.S_ISREG(st.st_mode):
                if old_child is not None and not self.opts.force and unchanged(old_child, child):
                    children.append(self._unchanged(old_child))
                else:
                    children.append(self._submit_file(full, child, old_child))  # type: ignore[arg-type]
            else:
                children.append(child)
        done: Future[Node] = Future()
        self.jobs.put(_DirJob(node, children, done))
        return done

    def walk(self, roots: dict[bytes, dict], root_old: Node | None) -> None:  # type: ignore[type-arg]
        try:
            root = Node(name=b"", type="dir")
            self._walk_dir(b"/", root, root_old, roots)
        except BaseException as exc:
            self.jobs.put(exc)
        finally:
            self.jobs.put(None)

    # -- directory assembly (calling thread) --------------------------------------------
    def assemble(self) -> bytes:
        root_tree = b""
        while True:
            job = self.jobs.get()
            if job is None:
                break
            if isinstance(job, BaseException):
                raise job
            nodes = []
            for child in job.children:
                result = child.result() if isinstance(child, Future) else child
                if result is not None:
                    nodes.append(result)
            blob = encode_tree(nodes)
            tree_id = hashlib.sha256(blob).digest()
            if self.dedup.claim(tree_id):
                self.summary.tree_blobs += 1
                self._store(tree_id, BlobType.TREE, blob)
            self._reference([tree_id])
            job.node.subtree = tree_id
            job.node.content = None
            self.summary.dirs += 1
            job.done.set_result(job.node)
            root_tree = tree_id
            if self.progress is not None and time.monotonic() - self._last_progress > 0.1:
                self._last_progress = time.monotonic()
                self.progress(self.summary, "")
        self.summary.dirs -= 1  # the root is not a directory of the source
        return root_tree


def _roots(paths: list[str]) -> dict[bytes, dict]:  # type: ignore[type-arg]
    """Nested dict of path components; a backed-up path maps to None (take it all)."""
    tree: dict[bytes, dict | None] = {}  # type: ignore[type-arg]
    for p in sorted(paths, key=len):
        parts = [c for c in os.fsencode(p).split(b"/") if c]
        level: dict | None = tree  # type: ignore[type-arg]
        for i, comp in enumerate(parts):
            if level is None:
                break  # an ancestor is already backed up whole
            if i == len(parts) - 1:
                level[comp] = None
            else:
                level = level.setdefault(comp, {})
    return tree  # type: ignore[return-value]


def find_parent(repo: Repository, opts: BackupOptions, paths: list[str]) -> Snapshot | None:
    if opts.parent:
        return repo.find_snapshot(opts.parent)
    try:
        return repo.find_snapshot("latest", host=opts.hostname, paths=paths)
    except CoreStateError:
        return None


def backup(repo: Repository, opts: BackupOptions, progress: Progress | None = None) -> BackupSummary:
    """Back up ``opts.paths`` into ``repo`` and commit a snapshot; see the module doc.

    Files that cannot be read are listed in ``summary.errors`` and left out; the caller
    decides the exit code (3, as restic)."""
    started = time.monotonic()
    paths = [os.path.abspath(p) for p in opts.paths]
    for p in paths:
        if not os.path.lexists(p):
            raise CoreStateError(f"{p}: no such file or directory")
    with repo.locked(exclusive=False):
        repo.adopt_orphan_packs()
        run = _Run(repo, opts, progress)
        parent = find_parent(repo, opts, paths)
        root_old = Node(name=b"", type="dir", subtree=parent.tree) if parent else None
        # The walk recurses once per directory level: give it room for trees nested as
        # deep as PATH_MAX allows (~2000 levels).
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
        old_stack = threading.stack_size(256 * 1024 * 1024)
        try:
            walker = threading.Thread(target=run.walk, args=(_roots(paths), root_old),
                                      name="walker", daemon=True)
            walker.start()
        finally:
            threading.stack_size(old_stack)
        try:
            root_tree = run.assemble()
            run.wait_sealed()
            run.packer.flush()
            repo.flush_index()
        finally:
            run.files.shutdown(wait=True, cancel_futures=True)
            run.sealers.shutdown(wait=True)
            run.packer.close()
            walker.join()
        dedupmod.store_table(repo, run.table)
        snap = Snapshot(time=opts.time_ns or now_ns(), tree=root_tree, paths=paths,
                        hostname=opts.hostname, tags=list(opts.tags),
                        excludes=list(opts.excludes), parent=parent.id if parent else None)
        snap_id = repo.save_snapshot(snap)
        dedupmod.save_bitmap(repo, snap_id, run.bitmap, run.table)
    summary = run.summary
    summary.snapshot_id = snap_id
    summary.parent = snap.parent
    summary.total_duration = time.monotonic() - started
    return summary
