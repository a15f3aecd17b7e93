"""A backup: scan the source paths, read and store what changed, commit a snapshot.

This is the embedded mode's entry point, used by ``corestate backup`` and, once per
consistency point, by ``corestate protect``. It wires the stages together:

1. the *scan* (:mod:`.scan`) compares the disk with the *parent* snapshot (the latest
   of the same host and paths, or ``parent``) and captures only what is new or changed;
2. the *embedded runner* (:mod:`.embedded`) hands each file to read to a lane (chunk
   stage → pack stage, in worker processes when there is enough to read);
3. the *commit stage* (:mod:`.commit`) assembles the trees onto the parent's and writes
   the snapshot and its blob bitmap — the same stage distributed mode runs.

A run is always *incremental* in the commit stage's sense when it has a parent: unchanged
files are not captured and keep their parent node, and an entry the parent had that is
gone is *removed*. The snapshot tree nests each absolute source path from the root
(``/home/u/docs`` is ``home`` -> ``u`` -> ``docs``), as restic's do.

The scan reads the parent's trees from this host's *listing cache* (:mod:`.listings`)
where it has them, and the run leaves the new snapshot's trees there: an unchanged
re-backup decodes no tree.

A :class:`BackupCache` carries, from one backup of the same paths to the next, the
runner (its worker processes), the commit stage (its memo of tree bitmaps and file
counts), the listings in memory (with the nodes of the trees the last commit built,
from which the next commit rebuilds a directory that changed again) and the last
snapshot; ``corestate protect`` keeps one. When a prune rewrote the index, everything
cached about blobs is dropped.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from corestate.errors import CoreStateError
from corestate.kernel import blockmap
from corestate.kernel.blockmap import BlockMapStore
from corestate.pipeline.capture import ExcludeMatcher, Sources, inside_repository
from corestate.pipeline.chunk import BLOCK_THRESHOLD
from corestate.pipeline.commit import CommitStage, marker_time
from corestate.pipeline.embedded import EmbeddedRunner
from corestate.pipeline.jobs import ReadFailed, Record
from corestate.pipeline.listings import ListingCache, cache_file
from corestate.pipeline.scan import Scanner
from corestate.pipeline.workers import cores
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.timefmt import now_ns
from corestate.schemas.events import FileManifest, SnapshotMarker


@dataclass
class BackupOptions:
    paths: list[str]
    excludes: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    hostname: str = field(default_factory=socket.gethostname)
    parent: str | None = None  # snapshot id; None = latest for host + paths
    force: bool = False  # read every file even if unchanged
    workers: int | None = None  # worker processes; None: one per core
    time_ns: int | None = None
    # Directories whose listing or direct entries changed since the parent snapshot
    # (from a watcher). None: scan everything. Directories with no dirty directory at
    # or below them are taken from the parent snapshot without being read.
    dirty_dirs: frozenset[bytes] | None = None
    # With dirty_dirs: subtrees to scan whole all the same (not watched, or unsure).
    rescan: frozenset[bytes] = frozenset()
    # With dirty_dirs: the paths the watcher's events named, and those of them created
    # or moved in (fresh). A dirty directory whose changes they name is not listed: only
    # the named entries are looked at (:mod:`.scan`). None: dirty directories are listed.
    named: frozenset[bytes] | None = None
    fresh: frozenset[bytes] = frozenset()
    # Files this big are stored as fixed-size blocks (an unchanged block is the same
    # blob); with a block store, only blocks whose xxh3 changed are hashed and stored.
    block_threshold: int = BLOCK_THRESHOLD
    block_size: int = blockmap.DEFAULT_BLOCK_SIZE
    block_store: BlockMapStore | None = None
    # Save no snapshot if the tree equals the parent's (protect: no snapshot without a change).
    skip_unchanged: bool = False
    # Where this host keeps the listing caches of the repository (None: none on disk).
    listings: str | None = None


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
    warnings: list[str] = field(default_factory=list)
    full_scan: bool = True  # every directory was listed (no dirty set, or not trusted)
    skipped: bool = False  # skip_unchanged and nothing changed: snapshot_id is the parent's

    @property
    def complete(self) -> bool:
        return not self.errors


Progress = Callable[[BackupSummary, str], None]


@dataclass
class BackupCache:
    """What consecutive backups of the same paths carry over (see the module doc).

    ``made`` is the id of the last snapshot made with this cache: the dirty directories
    a watcher reports are changes since it, so if the parent found is another (it was
    forgotten and pruned), they say nothing and the backup lists every directory."""

    runner: EmbeddedRunner | None = None
    commit: CommitStage | None = None
    parent: Snapshot | None = None
    made: str | None = None
    carried: bool = True  # False for the one-off cache of a single backup
    listings: ListingCache | None = None
    saved: float | None = None  # when the listings were last written (monotonic)

    SAVE_EVERY = 600.0  # a carried cache writes its listings at most this often

    def close(self) -> None:
        """Stop the runner's worker processes."""
        if self.runner is not None:
            self.runner.close()
            self.runner = None


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
    decides the exit code (3, as restic). With ``cache`` (updated in place) the worker
    processes and what is known about the last snapshot live on for the next backup;
    without one they are stopped before returning."""
    started = time.monotonic()
    paths = [os.path.abspath(p) for p in opts.paths]
    for p in paths:
        if not os.path.lexists(p):
            raise CoreStateError(f"{p}: no such file or directory")
        if inside_repository(p, repo.backend.location()):
            raise CoreStateError(f"{p} is inside the repository {repo.backend.location()}: "
                                 "a repository cannot hold a backup of its own directory")
    own = cache is None
    cache = cache if cache is not None else BackupCache(carried=False)
    try:
        with repo.locked(exclusive=False):
            return _run(repo, opts, paths, progress, cache, started)
    finally:
        if own:
            cache.close()


def _run(repo: Repository, opts: BackupOptions, paths: list[str], progress: Progress | None,
         cache: BackupCache, started: float) -> BackupSummary:
    if repo.refresh_index() or cache.commit is None:
        repo.adopt_orphan_packs()  # packs of a killed backup: reuse their blobs
        cache.commit, cache.parent = None, None
    if cache.commit is None:
        cache.commit = CommitStage(repo, replay_safe=False)
    if cache.runner is None:
        store = opts.block_store.directory if opts.block_store is not None else None
        workers = cores() if opts.workers is None else opts.workers
        cache.runner = EmbeddedRunner(repo, workers, opts.block_threshold, opts.block_size,
                                      store)
    parent = cache.parent if cache.parent is not None and not opts.parent \
        and cache.parent.paths == paths else find_parent(repo, opts, paths)
    if opts.dirty_dirs is not None and (parent is None or parent.id != cache.made):
        opts = _full(opts)  # the watcher's changes are relative to a snapshot now gone

    summary = BackupSummary(parent=parent.id if parent else None,
                            full_scan=opts.dirty_dirs is None)
    last_progress = [0.0]

    def on_result(item: FileManifest | ReadFailed) -> None:
        if isinstance(item, FileManifest):
            summary.total_files_processed += 1
            summary.total_bytes_processed += item.node.size
        if progress is not None and time.monotonic() - last_progress[0] > 0.1:
            last_progress[0] = time.monotonic()
            progress(summary, "")

    run_id = f"{opts.hostname}-{secrets.token_hex(8)}"
    begin = SnapshotMarker(host=opts.hostname, snapshot_id=run_id, kind="begin",
                           paths=tuple(paths), partition_count=1,
                           time=marker_time(opts.time_ns or now_ns()), tags=tuple(opts.tags),
                           parent=parent.id if parent else None,
                           excludes=tuple(opts.excludes))
    repo_path = os.fsencode(os.path.realpath(repo.backend.location()))
    listings = _listings(repo, opts, paths, cache)
    cache.commit.listings = listings
    scanner = Scanner(run_id, lambda record: None, repo.load_tree,
                      ExcludeMatcher(opts.excludes), Sources(paths), force=opts.force,
                      dirty=opts.dirty_dirs if parent else None, rescan=opts.rescan,
                      skip=repo_path, summaries=cache.commit, listings=listings,
                      named=opts.named, fresh=opts.fresh)

    def scan(sink: Callable[[Record], None]) -> list[bytes]:
        scanner.sink = sink
        scanner.run(paths, parent.tree if parent else None)
        return scanner.report.removed

    runner = cache.runner
    runner.on_result = on_result
    cache.commit.skip_unchanged = opts.skip_unchanged
    result = runner.run(cache.commit, begin, scan)
    report = scanner.report
    commit = result.commit
    summary.snapshot_id = commit.snapshot.id
    summary.skipped = commit.skipped
    summary.files_unmodified = report.files_unmodified
    summary.total_files_processed += report.files_unmodified
    summary.total_bytes_processed += report.bytes_unmodified
    summary.dirs = max(0, report.dirs - 1)  # the root is not a directory of the source
    summary.dirs_new, summary.dirs_changed = report.dirs_new, report.dirs_changed
    summary.dirs_unmodified = report.dirs_unmodified
    summary.errors = [(os.fsdecode(p), m) for p, m in report.errors]
    for lane in result.reports:
        summary.files_new += lane.read.files_new
        summary.files_changed += lane.read.files_changed
        summary.data_blobs += lane.blobs_stored
        summary.data_added += lane.bytes_added
        summary.data_added_packed += lane.bytes_packed
        summary.inconsistent += [os.fsdecode(p) for p in lane.read.inconsistent]
        summary.errors += [(os.fsdecode(p), m) for p, m in lane.read.errors]
    summary.tree_blobs = commit.tree_blobs
    summary.tree_added = commit.tree_bytes
    summary.data_added_packed += commit.tree_packed
    summary.warnings = list(commit.warnings)
    summary.total_duration = time.monotonic() - started
    cache.parent = commit.snapshot
    cache.made = commit.snapshot.id
    if listings is not None:
        listings.forget_run(full_scan=scanner.dirty is None)
        now = time.monotonic()
        if not cache.carried or cache.saved is None or now - cache.saved > cache.SAVE_EVERY:
            listings.save()
            cache.saved = now
    return summary


def _listings(repo: Repository, opts: BackupOptions, paths: list[str],
              cache: BackupCache) -> ListingCache | None:
    """The listing cache of this run: the carried one, else the one on disk (with
    ``opts.listings``), else a new one in memory if the cache is carried; None when
    nothing would read it again. A carried cache keeps the nodes its last commit built
    (:class:`ListingCache` ``keep_nodes``): at 1000 changes/s nearly every directory is
    dirty, and decoding their trees again was 44% of protect's main process."""
    if cache.listings is None:
        if opts.listings is not None:
            # made before the scan: a directory made after it would change the metadata
            # of a directory above the source paths (which the snapshot records) and
            # make the next run of protect save a snapshot without a change
            try:
                os.makedirs(opts.listings, mode=0o700, exist_ok=True)
            except OSError:
                pass  # the cache is not written; the backup goes on
            cache.listings = ListingCache.load(
                repo.key, cache_file(opts.listings, opts.hostname, paths), cache.carried)
        elif cache.carried:
            cache.listings = ListingCache(repo.key, keep_nodes=True)
    return cache.listings


def _full(opts: BackupOptions) -> BackupOptions:
    return replace(opts, dirty_dirs=None, rescan=frozenset(), named=None, fresh=frozenset())
