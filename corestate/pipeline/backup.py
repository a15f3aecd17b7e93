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
import io
import itertools
import os
import queue
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import xxhash
from pyroaring import BitMap

from corestate.errors import CoreStateError
from corestate.kernel import blockmap
from corestate.kernel.blockmap import BlockMap, BlockMapStore
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
    # Directories whose listing or direct entries changed since the parent snapshot
    # (from a watcher). None: scan everything. Directories with no dirty directory at
    # or below them are taken from the parent snapshot without being read.
    dirty_dirs: frozenset[bytes] | None = None
    # With dirty_dirs: subtrees to scan whole all the same (not watched, or unsure).
    rescan: frozenset[bytes] = frozenset()
    # Files this big are stored as fixed-size blocks (an unchanged block is the same
    # blob); with a block store, only blocks whose xxh3 changed are hashed and stored.
    block_threshold: int = 64 * 1024 * 1024
    block_size: int = blockmap.DEFAULT_BLOCK_SIZE
    block_store: BlockMapStore | None = None


@dataclass
class BackupSummary:
    """restic's backup summary fields, plus what went wrong."""

    snapshot_id: str = ""
    parent: str | None = None
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    data_added: int = 0  # bytes of new data blobs
    tree_added: int = 0  # bytes of new tree blobs (restic counts them in its data_added)
    data_added_packed: int = 0  # new data and tree blobs as stored: compressed, encrypted
    total_files_processed: int = 0
    total_bytes_processed: int = 0
    total_duration: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors


Progress = Callable[[BackupSummary, str], None]


# A finished entry: its node and the ordinals of every blob it references (for a
# directory, everything below it and its own tree; None when it references nothing).
_Entry = tuple[Node, BitMap | None]
_Child = _Entry | Future[_Entry | None]


@dataclass
class _DirJob:
    """A directory whose node waits for its children's entries."""

    node: Node
    children: list[_Child]
    done: Future[_Entry | None]
    old_tree: bytes | None = None  # the directory's tree in the parent snapshot


@dataclass
class BackupCache:
    """What consecutive backups of the same paths (``corestate protect``) carry over,
    so that a snapshot costs what changed, not what exists: the blob bitmap of every
    tree of the last snapshot (an unchanged subtree is reused without loading it), the
    ordinal table and dedup index, and the last snapshot (the next one's parent).

    The index is refreshed at every backup; if prune rewrote it, everything cached
    about blobs is dropped and rebuilt."""

    subtree_bitmaps: dict[bytes, BitMap] = field(default_factory=dict)
    table: dedupmod.OrdinalTable | None = None
    dedup: dedupmod.DedupIndex | None = None
    parent: Snapshot | None = None


class _Run:
    def __init__(self, repo: Repository, opts: BackupOptions, progress: Progress | None,
                 cache: BackupCache) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.summary = BackupSummary()
        self.excludes = ExcludeMatcher(opts.excludes)
        self.packer = Packer(repo)
        if cache.table is None or cache.dedup is None:
            cache.table = dedupmod.load_table(repo)
            cache.dedup = dedupmod.DedupIndex(repo.index, cache.table, repo.index.blob_ids())
        self.table = cache.table
        self.dedup = cache.dedup
        self._old_bitmaps = cache.subtree_bitmaps
        self.bitmaps: dict[bytes, BitMap] = {}  # tree id -> bitmap, for the next run
        self.dirty_dirs = opts.dirty_dirs
        self.dirty_prefixes: set[bytes] | None = None
        if opts.dirty_dirs is not None:
            self.dirty_prefixes = {b"/"}
            for d in opts.dirty_dirs | opts.rescan:
                parts = d.rstrip(b"/").split(b"/")
                self.dirty_prefixes.update(b"/".join(parts[:i]) for i in range(2, len(parts) + 1))
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
    def _subtree_bitmap(self, tree_id: bytes) -> BitMap:
        """Ordinals of every blob below (and including) a stored tree: from the last
        run's cache, else by loading the trees."""
        bm = self.bitmaps.get(tree_id) or self._old_bitmaps.get(tree_id)
        if bm is None:
            parts = [self.table.ordinals([tree_id])]
            for n in self.repo.load_tree(tree_id):
                if n.type == "file" and n.content:
                    parts.append(self.table.ordinals(n.content))
                elif n.type == "dir" and n.subtree is not None:
                    parts.append(self._subtree_bitmap(n.subtree))
            bm = BitMap.union(*parts)
        self.bitmaps[tree_id] = bm
        return bm

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

    def _unchanged(self, old: Node) -> _Entry:
        """An unchanged file keeps its parent-snapshot node whole (content, and the
        stored JSON, so its tree need not be re-encoded)."""
        with self._stats_lock:
            self.summary.files_unmodified += 1
            self.summary.total_files_processed += 1
            self.summary.total_bytes_processed += old.size
        return old, self.table.ordinals(old.content) if old.content else None

    def _reuse(self, old: Node) -> _Entry:
        """An entry of a directory whose listing did not change, kept as it was."""
        if old.type == "file":
            return self._unchanged(old)
        if old.type == "dir" and old.subtree is not None:
            return old, self._subtree_bitmap(old.subtree)
        return old, None

    def _blob(self, data: bytes) -> bytes:
        """Hash a piece of file content and store it if it is new; its blob id."""
        bid = hashlib.sha256(data).digest()
        if self.dedup.claim(bid):
            with self._stats_lock:
                self.summary.data_blobs += 1
                self.summary.data_added += len(data)
            self._store(bid, BlobType.DATA, data)
        return bid

    def _file(self, path: bytes, node: Node, old: Node | None) -> _Entry | None:
        """Read, chunk and store a new or changed file; None if it cannot be read."""
        ids: list[bytes] = []
        big = node.size >= self.opts.block_threshold
        new_map: list[BlockMap] = []

        def consume(fd: int, st: os.stat_result) -> None:
            ids.clear()
            new_map.clear()
            if big:
                block_map, ids[:] = self._blocks(fd, st, old)
                new_map.append(block_map)
            else:
                ids.extend(self._blob(c) for c in chunk_stream(
                    io.FileIO(fd, closefd=False), size_hint=st.st_size))

        try:
            outcome = read_consistently(path, consume, node.device_id)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                return None  # deleted since it was listed
            self._error(path, exc)
            return None
        st = outcome.st
        node.content = ids
        node.size, node.mtime, node.ctime = st.st_size, st.st_mtime_ns, st.st_ctime_ns
        if new_map and outcome.consistent and self.opts.block_store is not None:
            self.opts.block_store.save(replace(new_map[0], size=st.st_size,
                                               mtime_ns=st.st_mtime_ns))
        with self._stats_lock:
            if not outcome.consistent:
                self.summary.inconsistent.append(os.fsdecode(path))
            if old is None:
                self.summary.files_new += 1
            else:
                self.summary.files_changed += 1
            self.summary.total_files_processed += 1
            self.summary.total_bytes_processed += node.size
        return node, self.table.ordinals(ids) if ids else None

    def _blocks(self, fd: int, st: os.stat_result, old: Node | None
                ) -> tuple[BlockMap, list[bytes]]:
        """A big file as fixed-size blocks. With a block map of the version in the parent
        snapshot, only blocks whose xxh3 changed are hashed and stored; the others keep
        their blob ids from the parent."""
        size = self.opts.block_size
        store = self.opts.block_store
        prev = store.load(st.st_dev, st.st_ino) if store is not None else None
        usable = (prev is not None and old is not None and old.content is not None
                  and prev.block_size == size and prev.size == old.size
                  and prev.mtime_ns == old.mtime
                  and len(old.content) == blockmap.block_count(old.size, size))
        if usable:
            assert old is not None and old.content is not None
            block_map, changed = blockmap.scan(fd, size, prev)
            ids = list(old.content[:len(block_map.digests)])
            ids += [b""] * (len(block_map.digests) - len(ids))
            for i, data in blockmap.read_blocks(fd, size, changed):
                ids[i] = self._blob(data)
            return block_map, [i for i in ids if i]
        digests: list[int] = []
        ids = []
        total = 0
        for i in itertools.count():  # to the end, even if it moved since the stat
            data = next(blockmap.read_blocks(fd, size, [i]), (i, b""))[1]
            if not data:
                break
            digests.append(xxhash.xxh3_64_intdigest(data))
            ids.append(self._blob(data))
            total += len(data)
        return BlockMap(size, total, digests, st.st_dev, st.st_ino, st.st_mtime_ns), ids

    def _submit_file(self, path: bytes, node: Node, old: Node | None) -> Future[_Entry | None]:
        self._files_in_flight.acquire()

        def work() -> _Entry | None:
            try:
                return self._file(path, node, old)
            finally:
                self._files_in_flight.release()

        return self.files.submit(work)

    # -- walking (walker thread) ------------------------------------------------------------
    def _old_children(self, old: Node | None) -> dict[bytes, Node] | None:
        """The parent snapshot's entries of a directory; None if unknown or unreadable."""
        if old is None or old.type != "dir" or old.subtree is None:
            return None
        try:
            return {n.name: n for n in self.repo.load_tree(old.subtree)}
        except CoreStateError:
            return None  # a damaged parent only costs re-reading

    def _clean(self, path: bytes) -> bool:
        """No dirty directory at or below ``path`` (always False without a dirty set)."""
        return (self.dirty_prefixes is not None and path not in self.dirty_prefixes
                and not self._rescanned(path))

    def _rescanned(self, path: bytes) -> bool:
        """``path`` is at or below one of the subtrees to scan whole."""
        rescan = self.opts.rescan
        while rescan:
            if path in rescan:
                return True
            if path in (b"/", b""):
                return False
            path = path.rsplit(b"/", 1)[0] or b"/"
        return False

    def _walk_dir(self, path: bytes, node: Node, old: Node | None,
                  only: dict[bytes, dict] | None) -> Future[_Entry | None]:  # type: ignore[type-arg]
        """Queue jobs for a directory's entries, then the directory itself.

        ``only`` limits the entries to the given names (the virtual directories above
        the backed-up paths), each with its own ``only`` (None = everything below).
        A directory on the way to a dirty one but not dirty itself has the same
        listing as in the parent snapshot: only its entries on the dirty path are
        looked at again."""
        old_children = self._old_children(old)
        children: list[_Child] = []
        if only is None and self.dirty_dirs is not None and old is not None \
                and path not in self.dirty_dirs and old_children is not None \
                and not self._rescanned(path):
            for name, old_child in sorted(old_children.items()):
                full = path.rstrip(b"/") + b"/" + name
                if full in self.dirty_prefixes:  # type: ignore[operator]
                    entry = self._entry(full, name, old_child, None)
                    if entry is not None:
                        children.append(entry)
                else:
                    children.append(self._reuse(old_child))
        else:
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
                full = path.rstrip(b"/") + b"/" + name
                entry = self._entry(full, name, (old_children or {}).get(name),
                                    None if only is None else only[name])
                if entry is not None:
                    children.append(entry)
        done: Future[_Entry | None] = Future()
        self.jobs.put(_DirJob(node, children, done, old.subtree if old is not None else None))
        return done

    def _entry(self, full: bytes, name: bytes, old: Node | None,
               only: dict[bytes, dict] | None) -> _Child | None:  # type: ignore[type-arg]
        """The job (or finished entry) for one directory entry; None to leave it out."""
        if self.excludes.excluded(full) or full == self._repo_path:
            return None
        try:
            st = os.lstat(full)
            child = node_from_stat(name, full, st)
        except FileNotFoundError:
            return None  # vanished since it was listed: it is simply not there any more
        except OSError as exc:
            self._error(full, exc)
            return None
        if stat.S_ISSOCK(st.st_mode):
            return None  # restic records no sockets: they cannot be restored meaningfully
        if stat.S_ISDIR(st.st_mode):
            if only is None and self._clean(full) and old is not None \
                    and old.type == "dir" and old.subtree is not None:
                child.subtree = old.subtree  # fresh metadata, unchanged contents
                return child, self._subtree_bitmap(old.subtree)
            return self._walk_dir(full, child, old, only)
        if stat.S_ISREG(st.st_mode):
            if old is not None and not self.opts.force and unchanged(old, child):
                return self._unchanged(old)
            return self._submit_file(full, child, old)
        return child, None

    def walk(self, roots: dict[bytes, dict], root_old: Node | None) -> None:  # type: ignore[type-arg]
        try:
            root = Node(name=b"", type="dir")
            self._walk_dir(b"/", root, root_old, roots)
        except BaseException as exc:
            self.jobs.put(exc)
        finally:
            self.jobs.put(None)

    # -- directory assembly (calling thread) --------------------------------------------
    def assemble(self) -> tuple[Node, BitMap]:
        """Complete directory jobs in post-order; returns the root's entry."""
        root: tuple[Node, BitMap] | None = None
        while True:
            job = self.jobs.get()
            if job is None:
                break
            if isinstance(job, BaseException):
                raise job
            nodes = []
            bitmaps = []
            for child in job.children:
                result = child.result() if isinstance(child, Future) else child
                if result is not None:
                    nodes.append(result[0])
                    if result[1] is not None:
                        bitmaps.append(result[1])
            blob = encode_tree(nodes)
            tree_id = hashlib.sha256(blob).digest()
            if self.dedup.claim(tree_id):
                self.summary.tree_blobs += 1
                self.summary.tree_added += len(blob)
                self._store(tree_id, BlobType.TREE, blob)
            bitmap = BitMap.union(self.table.ordinals([tree_id]), *bitmaps)
            self.bitmaps[tree_id] = bitmap
            job.node.subtree = tree_id
            job.node.content = None
            self.summary.dirs += 1
            state = ("dirs_new" if job.old_tree is None else
                     "dirs_unmodified" if job.old_tree == tree_id else "dirs_changed")
            setattr(self.summary, state, getattr(self.summary, state) + 1)
            root = (job.node, bitmap)
            job.done.set_result(root)
            if self.progress is not None and time.monotonic() - self._last_progress > 0.1:
                self._last_progress = time.monotonic()
                self.progress(self.summary, "")
        self.summary.dirs -= 1  # the root is not a directory of the source
        setattr(self.summary, state, getattr(self.summary, state) - 1)
        assert root is not None
        return root


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


def backup(repo: Repository, opts: BackupOptions, progress: Progress | None = None,
           cache: BackupCache | None = None) -> BackupSummary:
    """Back up ``opts.paths`` into ``repo`` and commit a snapshot; see the module doc.

    Files that cannot be read are listed in ``summary.errors`` and left out; the caller
    decides the exit code (3, as restic). ``cache`` carries subtree bitmaps from one
    backup to the next of the same paths; it is updated in place."""
    started = time.monotonic()
    paths = [os.path.abspath(p) for p in opts.paths]
    for p in paths:
        if not os.path.lexists(p):
            raise CoreStateError(f"{p}: no such file or directory")
    with repo.locked(exclusive=False):
        cache = cache if cache is not None else BackupCache()
        if repo.refresh_index() or cache.table is None:
            repo.adopt_orphan_packs()  # packs of a killed backup: reuse their blobs
            cache.subtree_bitmaps, cache.table, cache.dedup, cache.parent = {}, None, None, None
        run = _Run(repo, opts, progress, cache)
        parent = cache.parent if cache.parent is not None and not opts.parent \
            and cache.parent.paths == paths else find_parent(repo, opts, paths)
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
            (root_node, root_bitmap) = run.assemble()
            run.wait_sealed()
            run.packer.flush()
            repo.flush_index()
        finally:
            run.files.shutdown(wait=True, cancel_futures=True)
            run.sealers.shutdown(wait=True)
            run.packer.close()
            walker.join()
        dedupmod.store_table(repo, run.table)
        assert root_node.subtree is not None
        snap = Snapshot(time=opts.time_ns or now_ns(), tree=root_node.subtree, paths=paths,
                        hostname=opts.hostname, tags=list(opts.tags),
                        excludes=list(opts.excludes), parent=parent.id if parent else None)
        snap_id = repo.save_snapshot(snap)
        dedupmod.save_bitmap(repo, snap_id, root_bitmap, run.table)
        cache.subtree_bitmaps = run.bitmaps
        cache.parent = snap
    summary = run.summary
    summary.snapshot_id = snap_id
    summary.parent = snap.parent
    summary.total_duration = time.monotonic() - started
    summary.data_added_packed = run.packer.bytes_stored
    return summary
