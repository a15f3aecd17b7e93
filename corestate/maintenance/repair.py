"""Repair: mend a damaged repository, as ``restic repair index|snapshots`` (0.16+) do.

Terms:

- *repair index*: rebuild the index from the packs. Index files that do not load are
  dropped; a stored pack that no index lists, or whose size differs from what its index
  entries imply, is indexed from its own header; an indexed pack that is gone is
  forgotten; a pack whose header cannot be read is skipped (its blobs stay unindexed,
  and prune removes it). With *read all packs*, the old index files are ignored and
  every pack's header is read. The new index files supersede every old one; the old
  ones are deleted only after the new ones are written.
- *repair snapshots*: rewrite snapshots so they reference only what the index holds.
  For each tree, as restic does: a file's data blobs that are not indexed are removed
  from its content (its size becomes what is left); a subdirectory whose tree cannot be
  loaded becomes an empty directory; a snapshot whose root tree cannot be loaded is
  deleted. Beyond restic: entries a restore must refuse (damaged, unsafe or duplicate
  names, see :mod:`.check`) are dropped, the first of duplicates kept. A snapshot that
  changed is saved anew with the tag ``repaired`` and ``original`` pointing at the
  first snapshot of its line; with *forget* the old snapshot file is deleted.
- *lost*: what a repair took away, as ``(snapshot, path, what)`` lines to show.

Both take the exclusive lock (the caller holds it). Run ``repair index`` first: repair
snapshots trusts the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from dataclasses import dataclass, field

from corestate.errors import CoreStateError, IntegrityError, NotFoundError
from corestate.maintenance import ProgressFn, no_progress
from corestate.maintenance.check import expected_pack_size
from corestate.maintenance.listing import json_text
from corestate.maintenance.prune import write_index
from corestate.repository.backend import Kind
from corestate.repository.index import index_from_json
from corestate.repository.pack import (TARGET_PACK_SIZE, BlobType, PackBuilder, PackedBlob,
                                       seal_blob)
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.tree import Node, encode_tree, name_problem

REPAIRED_TAG = "repaired"


@dataclass
class IndexReport:
    index_files_dropped: list[str] = field(default_factory=list)  # did not load
    packs_added: list[str] = field(default_factory=list)  # stored, in no index
    packs_reindexed: list[str] = field(default_factory=list)  # size differed from the index
    packs_forgotten: list[str] = field(default_factory=list)  # indexed, not stored
    packs_skipped: list[str] = field(default_factory=list)  # header unreadable
    index_files_written: int = 0
    index_files_removed: int = 0

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def repair_index(repo: Repository, read_all_packs: bool = False,
                 progress: ProgressFn = no_progress) -> IndexReport:
    """Rebuild the index from the packs (see the module doc)."""
    report = IndexReport()
    old_files = sorted(f.name for f in repo.backend.list(Kind.INDEX))
    known: dict[str, list[PackedBlob]] = {}
    if not read_all_packs:
        for name in old_files:
            try:
                packs, _ = index_from_json(repo.load_json(Kind.INDEX, name))
            except CoreStateError:
                report.index_files_dropped.append(name)
                continue
            for pack_id, entries in packs.items():
                known.setdefault(pack_id, entries)
    stored = {f.name: f.size for f in repo.backend.list(Kind.DATA)}
    final: dict[str, list[PackedBlob]] = {}
    todo = []
    for pack_id, size in sorted(stored.items()):
        entries = known.get(pack_id)
        if entries is not None and expected_pack_size(entries) == size:
            final[pack_id] = entries
        else:
            todo.append(pack_id)
            (report.packs_reindexed if entries is not None else report.packs_added).append(pack_id)
    report.packs_forgotten = sorted(set(known) - set(stored))
    for done, pack_id in enumerate(todo):
        progress("read pack headers", done, len(todo))
        try:
            final[pack_id] = repo.read_pack_header(pack_id, stored[pack_id])
        except (IntegrityError, NotFoundError):
            report.packs_skipped.append(pack_id)
    progress("read pack headers", len(todo), len(todo))
    if report.packs_skipped:  # not added after all
        skipped = set(report.packs_skipped)
        report.packs_added = [p for p in report.packs_added if p not in skipped]
        report.packs_reindexed = [p for p in report.packs_reindexed if p not in skipped]
    new_files = write_index(repo, final, old_files)
    report.index_files_written = len(new_files)
    for name in old_files:
        if name not in new_files:
            with contextlib.suppress(NotFoundError):
                repo.backend.delete(Kind.INDEX, name)
            report.index_files_removed += 1
    repo.reload_index()
    return report


@dataclass
class SnapshotsReport:
    dry_run: bool
    snapshots: int = 0
    modified: list[tuple[str, str]] = field(default_factory=list)  # (old id, new id)
    removed: list[str] = field(default_factory=list)  # root tree unreadable
    forgotten: list[str] = field(default_factory=list)
    lost: list[tuple[str, bytes, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # snapshot files

    def to_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "snapshots": self.snapshots,
                "unreadable": [{"snapshot": s, "error": e} for s, e in self.unreadable],
                "modified": [{"snapshot": o, "new": n} for o, n in self.modified],
                "removed": self.removed, "forgotten": self.forgotten,
                "lost": [{"snapshot": s, "path": json_text(p), "what": w}
                         for s, p, w in self.lost]}


class _TreeMender:
    """Rewrites trees bottom up, each distinct tree once; new trees are packed."""

    def __init__(self, repo: Repository, dry_run: bool) -> None:
        self.repo = repo
        self.dry_run = dry_run
        # tree id -> (mended id or None if unloadable, what was lost, relative paths)
        self.done: dict[bytes, tuple[bytes | None, list[tuple[bytes, str]]]] = {}
        self.builder = PackBuilder(BlobType.TREE)
        self.packed: set[bytes] = set()
        self.empty: bytes | None = None

    def store(self, nodes: list[Node]) -> bytes:
        blob = encode_tree(nodes)
        tree_id = hashlib.sha256(blob).digest()
        if not self.dry_run and not self.repo.has_blob(tree_id, BlobType.TREE) \
                and tree_id not in self.packed:
            self.builder.add(seal_blob(self.repo.key, tree_id, BlobType.TREE, blob, None))
            self.packed.add(tree_id)
            if self.builder.size >= TARGET_PACK_SIZE:
                self.flush()
        return tree_id

    def mend(self, tree_id: bytes, path: bytes) -> tuple[bytes | None, list[tuple[bytes, str]]]:
        """The id of the mended tree (None if it cannot be loaded) and what was lost,
        as paths below ``path``. Recursive, one level per directory level."""
        if tree_id not in self.done:
            self.done[tree_id] = self._mend(tree_id)
        new_id, lost = self.done[tree_id]
        return new_id, [(path.rstrip(b"/") + p, w) for p, w in lost]

    def _mend(self, tree_id: bytes) -> tuple[bytes | None, list[tuple[bytes, str]]]:
        if not self.repo.has_blob(tree_id, BlobType.TREE):
            return None, [(b"", "directory contents lost: its tree is not in the index")]
        try:
            nodes = self.repo.load_tree(tree_id, damaged=True)
        except CoreStateError as exc:
            return None, [(b"", f"directory contents lost: {exc}")]
        lost: list[tuple[bytes, str]] = []  # paths relative to this tree, starting with /
        kept: list[Node] = []
        seen: set[bytes] = set()
        changed = False
        for node in nodes:
            rel = b"/" + node.name
            why = node.damage or name_problem(node.name) or (
                "a second entry of that name" if node.name in seen else None)
            if why:
                lost.append((rel, f"entry dropped: {why}"))
                changed = True
                continue
            seen.add(node.name)
            if node.type == "file":
                indexed = [b for b in node.content or [] if self.repo.has_blob(b, BlobType.DATA)]
                if node.content is None or len(indexed) != len(node.content):
                    lost.append((rel, f"{len(node.content or []) - len(indexed)} data blobs "
                                      "not in the index removed from the content"))
                    node.content = indexed
                    node.size = sum(self._plain_size(b) for b in indexed)
                    node.stored_json = None
                    changed = True
            elif node.type == "dir":
                sub, below = (None, [(b"", "directory has no subtree")]) if node.subtree is None \
                    else self.mend(node.subtree, b"")
                lost += [(rel + p, w) for p, w in below]
                if sub is None:
                    sub = self.empty_tree()
                if sub != node.subtree:
                    node.subtree = sub
                    node.stored_json = None
                    changed = True
            kept.append(node)
        return (self.store(kept) if changed else tree_id), lost

    def empty_tree(self) -> bytes:
        if self.empty is None:
            self.empty = self.store([])
        return self.empty

    def _plain_size(self, blob: bytes) -> int:
        loc = self.repo.index.lookup(blob)
        return 0 if loc is None else loc.blob.plaintext_length

    def flush(self) -> None:
        if len(self.builder):
            pack_id, data, entries = self.builder.finish(self.repo.key)
            self.repo.add_pack(pack_id, data, entries)
            self.builder = PackBuilder(BlobType.TREE)
        self.repo.flush_index()


def repair_snapshots(repo: Repository, snapshot_ids: list[str] | None = None,
                     forget: bool = False, dry_run: bool = False,
                     progress: ProgressFn = no_progress) -> SnapshotsReport:
    """Rewrite snapshots to reference only indexed data (see the module doc). Without
    ``snapshot_ids``, every snapshot that can be loaded."""
    repo.load_index()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))  # one level per directory
    report = SnapshotsReport(dry_run)
    if snapshot_ids:
        snaps = [repo.find_snapshot(ref) for ref in snapshot_ids]
    else:
        snaps = repo.list_snapshots(
            on_damaged=lambda snap_id, exc: report.unreadable.append((snap_id, str(exc))))
    report.snapshots = len(snaps)
    mender = _TreeMender(repo, dry_run)
    for done, snap in enumerate(snaps):
        progress("snapshots", done, len(snaps))
        root, lost = mender.mend(snap.tree, b"/")
        report.lost += [(snap.id, p or b"/", w) for p, w in lost]
        if root is None:
            report.removed.append(snap.id)
            if not dry_run:
                repo.backend.delete(Kind.SNAPSHOTS, snap.id)
            continue
        if root == snap.tree:
            continue
        if dry_run:
            report.modified.append((snap.id, ""))
            continue
        mender.flush()  # trees before the snapshot that names them
        new = Snapshot(time=snap.time, tree=root, paths=snap.paths, hostname=snap.hostname,
                       username=snap.username, uid=snap.uid, gid=snap.gid,
                       tags=sorted({*snap.tags, REPAIRED_TAG}), excludes=snap.excludes,
                       parent=snap.parent, original=snap.original or snap.id,
                       extra=dict(snap.extra))
        report.modified.append((snap.id, repo.save_snapshot(new)))
        if forget:
            repo.backend.delete(Kind.SNAPSHOTS, snap.id)
            report.forgotten.append(snap.id)
    progress("snapshots", len(snaps), len(snaps))
    if not dry_run:
        mender.flush()
    return report
