"""Check: prove that a repository is complete and undamaged, as ``restic check`` does.

Terms:

- *error*: damage that loses or may lose data: an index file that does not load, an
  indexed pack that is missing or whose size differs from what its index entries imply,
  a snapshot or tree that does not load, a tree entry that is damaged or that a restore
  must refuse (an empty name, ``.``, ``..``, a name with ``/`` or NUL, a name twice in
  one tree, an unknown type), a blob a snapshot needs that no index lists, and
  (with *read data*) a pack whose bytes do not hash to its name, whose header does not
  parse or disagrees with the index, or a blob that does not decrypt, decompress or hash
  to its id.
- *note*: worth knowing but harmless: a pack no index lists (left by an interrupted
  backup; the next backup adopts it, prune removes it if unused).
- *expected size* of an indexed pack: its blobs' stored lengths plus the header, which
  is one entry per blob (37 bytes, 41 for a compressed blob) encrypted (+32) plus the
  4-byte header length.
- *users* of a damaged blob: up to :data:`MAX_USERS` ``(snapshot, path)`` pairs of files
  or directories that need it, found by a second walk only when something is damaged.

Steps: load every index file; compare the indexed packs with the stored ones; load every
snapshot and walk its trees (each distinct tree once) checking that every referenced
blob is indexed; with ``read_data``, read every indexed pack in full.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from corestate.errors import CoreStateError, IntegrityError, NotFoundError
from corestate.maintenance import ProgressFn, no_progress
from corestate.maintenance.listing import json_text
from corestate.repository.backend import Kind
from corestate.repository.crypto import OVERHEAD
from corestate.repository.index import index_from_json
from corestate.repository.pack import (PLAIN_ENTRY, ZSTD_ENTRY, BlobType, PackedBlob, open_blob,
                                       parse_header)
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.tree import NODE_TYPES, Node, name_problem

MAX_USERS = 3
READ_WORKERS = 2


@dataclass
class Problem:
    """One finding: ``kind`` is a short tag (``index``, ``pack-missing``, ``pack-size``,
    ``pack-hash``, ``pack-header``, ``blob``, ``snapshot``, ``tree``, ``node`` (an entry
    that is damaged, of an unknown type, or a file without content list), ``name`` (an
    unsafe or duplicate name), ``missing-blob``, ``unindexed-pack``)."""

    kind: str
    message: str
    pack: str | None = None
    blobs: list[bytes] = field(default_factory=list)
    snapshot: str | None = None
    path: bytes | None = None
    users: list[tuple[str, bytes]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "message": self.message, "pack": self.pack,
                "blobs": [b.hex() for b in self.blobs], "snapshot": self.snapshot,
                "path": None if self.path is None else json_text(self.path),
                "users": [{"snapshot": s, "path": json_text(p)}
                          for s, p in self.users]}


@dataclass
class CheckReport:
    errors: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    index_files: int = 0
    packs: int = 0
    snapshots: int = 0
    trees: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    blobs_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "num_errors": len(self.errors),
                "errors": [p.to_json() for p in self.errors],
                "notes": [p.to_json() for p in self.notes],
                "index_files": self.index_files, "packs": self.packs,
                "snapshots": self.snapshots, "trees": self.trees, "packs_read": self.packs_read,
                "bytes_read": self.bytes_read, "blobs_read": self.blobs_read}


def expected_pack_size(entries: list[PackedBlob]) -> int:
    """The size a pack holding ``entries`` must have (see the module doc)."""
    header = sum(ZSTD_ENTRY if e.compressed else PLAIN_ENTRY for e in entries)
    return sum(e.length for e in entries) + header + OVERHEAD + 4


def _short_list(blobs: list[bytes], limit: int = 5) -> str:
    shown = ", ".join(b.hex()[:16] for b in blobs[:limit])
    return shown + (f" and {len(blobs) - limit} more" if len(blobs) > limit else "")


def _load_indexes(repo: Repository, report: CheckReport) -> None:
    """Load every index file into ``repo.index``, reporting the ones that fail."""
    names = [f.name for f in repo.backend.list(Kind.INDEX)]
    report.index_files = len(names)
    try:
        repo.load_index()
        return
    except CoreStateError:
        pass  # find out which files are bad, keeping what the good ones say
    for name in names:
        try:
            packs, _ = index_from_json(repo.load_json(Kind.INDEX, name))
        except (CoreStateError, KeyError, ValueError, TypeError, AssertionError) as exc:
            report.errors.append(Problem("index", f"index {name[:16]}: cannot load: {exc}"))
            continue
        for pack_id, blobs in packs.items():
            repo.index.add_pack(pack_id, blobs)
        repo.index.files.add(name)


def _check_packs(repo: Repository, report: CheckReport) -> dict[str, int]:
    """Compare indexed packs with stored ones; returns the stored sizes."""
    stored = {f.name: f.size for f in repo.backend.list(Kind.DATA)}
    report.packs = len(stored)
    for pack_id, entries in sorted(repo.index.packs.items()):
        ids = [e.id for e in entries]
        if pack_id not in stored:
            report.errors.append(Problem(
                "pack-missing", f"pack {pack_id[:16]}: listed in the index but missing; "
                f"{len(ids)} blobs lost: {_short_list(ids)}", pack_id, ids))
            continue
        want = expected_pack_size(entries)
        if stored[pack_id] != want:
            report.errors.append(Problem(
                "pack-size", f"pack {pack_id[:16]}: size {stored[pack_id]} but the index "
                f"implies {want} (truncated or damaged); blobs affected: {_short_list(ids)}",
                pack_id, ids))
    for pack_id in sorted(set(stored) - set(repo.index.packs)):
        report.notes.append(Problem(
            "unindexed-pack", f"pack {pack_id[:16]} is not listed in any index (left by an "
            "interrupted backup; harmless, prune removes it if unused)", pack_id))
    return stored


def _check_snapshots(repo: Repository, report: CheckReport, progress: ProgressFn) -> None:
    """Load every snapshot and every tree; every referenced blob must be indexed."""
    names = sorted(f.name for f in repo.backend.list(Kind.SNAPSHOTS))
    report.snapshots = len(names)
    seen: set[bytes] = set()
    index = repo.index
    for done, name in enumerate(names):
        progress("snapshots", done, len(names))
        try:
            snap = repo.load_snapshot(name)
        except (CoreStateError, KeyError, ValueError, TypeError, AssertionError) as exc:
            report.errors.append(Problem("snapshot", f"snapshot {name[:8]}: cannot load: {exc}",
                                         snapshot=name))
            continue
        if snap.tree in seen:
            continue
        seen.add(snap.tree)
        stack = [(b"/", snap.tree)]
        while stack:
            path, tree_id = stack.pop()
            report.trees += 1
            if not index.has_type(tree_id, BlobType.TREE):
                report.errors.append(Problem(
                    "missing-blob", f"snapshot {name[:8]} {_show(path)}: tree "
                    f"{tree_id.hex()[:16]} is not in the index", blobs=[tree_id],
                    snapshot=name, path=path))
                continue
            try:
                nodes = repo.load_tree(tree_id, damaged=True)
            except CoreStateError as exc:
                report.errors.append(Problem(
                    "tree", f"snapshot {name[:8]} {_show(path)}: tree {tree_id.hex()[:16]} "
                    f"cannot be loaded: {exc}", blobs=[tree_id], snapshot=name, path=path))
                continue
            _check_names(report, name, path, tree_id, nodes)
            for node in nodes:
                child = path.rstrip(b"/") + b"/" + node.name
                if node.damage:
                    continue  # reported by _check_names
                if node.type == "file":
                    missing = [b for b in node.content or () if not index.has_type(b, BlobType.DATA)]
                    if missing:
                        report.errors.append(Problem(
                            "missing-blob", f"snapshot {name[:8]} file {_show(child)}: "
                            f"{len(missing)} data blobs not in the index: {_short_list(missing)}",
                            blobs=missing, snapshot=name, path=child))
                elif node.type == "dir":
                    if node.subtree is None:
                        report.errors.append(Problem(
                            "tree", f"snapshot {name[:8]} dir {_show(child)} has no subtree",
                            snapshot=name, path=child))
                    elif node.subtree not in seen:
                        seen.add(node.subtree)
                        stack.append((child, node.subtree))
    progress("snapshots", len(names), len(names))


def _check_names(report: CheckReport, snap: str, path: bytes, tree_id: bytes,
                 nodes: list[Node]) -> None:
    """Entries a restore would refuse or could not place: damaged ones, unsafe or
    duplicate names, unknown types, files without a content list."""
    where = f"snapshot {snap[:8]} {_show(path)}: tree {tree_id.hex()[:16]}"

    def problem(kind: str, what: str, node: Node) -> None:
        report.errors.append(Problem(kind, f"{where}: {what}", blobs=[tree_id], snapshot=snap,
                                     path=path.rstrip(b"/") + b"/" + node.name))

    seen: set[bytes] = set()
    for node in nodes:
        shown = node.name.decode("utf-8", "backslashreplace")
        if node.damage:
            problem("node", f"damaged entry {shown!r}: {node.damage}", node)
            continue
        unsafe = name_problem(node.name)
        if unsafe:
            problem("name", f"unsafe entry: {unsafe}", node)
        elif node.name in seen:
            problem("name", f"name {shown!r} appears more than once", node)
        seen.add(node.name)
        if node.type not in NODE_TYPES:
            problem("node", f"entry {shown!r} has the unknown type {node.type!r}", node)
        elif node.type == "file" and node.content is None:
            problem("node", f"file {shown!r} has no content list", node)


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")  # messages go to JSON too


def read_pack(repo: Repository, pack_id: str, entries: list[PackedBlob]) -> tuple[list[Problem], int]:
    """Read one pack in full and verify it; returns the problems and the bytes read."""
    problems: list[Problem] = []
    try:
        data = repo.backend.read(Kind.DATA, pack_id)
    except NotFoundError:
        return [], 0  # already reported as missing
    if hashlib.sha256(data).hexdigest() != pack_id:
        problems.append(Problem("pack-hash", f"pack {pack_id[:16]}: content does not match "
                                "its name (the file is damaged)", pack_id))
    try:
        header = parse_header(repo.key, pack_id, data, len(data))
    except IntegrityError as exc:
        problems.append(Problem("pack-header", f"pack {pack_id[:16]}: header: {exc}", pack_id))
    else:
        if sorted(header, key=lambda e: e.offset) != sorted(entries, key=lambda e: e.offset):
            problems.append(Problem("pack-header", f"pack {pack_id[:16]}: header does not match "
                                    "the index", pack_id))
    damaged: list[bytes] = []
    reasons: list[str] = []
    for entry in entries:
        stored = data[entry.offset:entry.offset + entry.length]
        try:
            if len(stored) != entry.length:
                raise IntegrityError(f"blob {entry.id.hex()[:16]} is cut off")
            open_blob(repo.key, entry, stored)
        except IntegrityError as exc:
            damaged.append(entry.id)
            reasons.append(str(exc))
    if damaged:
        problems.append(Problem(
            "blob", f"pack {pack_id[:16]}: {len(damaged)} damaged blobs: {_short_list(damaged)} "
            f"({reasons[0]})", pack_id, damaged))
    return problems, len(data)


def _read_data(repo: Repository, stored: dict[str, int], report: CheckReport,
               progress: ProgressFn) -> None:
    packs = sorted(p for p in repo.index.packs if p in stored)
    total = len(packs)
    progress("read data", 0, total)
    with ThreadPoolExecutor(READ_WORKERS, thread_name_prefix="check-read") as pool:
        results = pool.map(lambda p: read_pack(repo, p, repo.index.packs[p]), packs)
        for done, (problems, size) in enumerate(results, 1):
            report.errors.extend(problems)
            report.packs_read += 1
            report.bytes_read += size
            progress("read data", done, total)
    report.blobs_read = sum(len(repo.index.packs[p]) for p in packs)


def _users(repo: Repository, wanted: set[bytes]) -> dict[bytes, list[tuple[str, bytes]]]:
    """Up to MAX_USERS (snapshot id, path) pairs per wanted blob (each tree walked once)."""
    users: dict[bytes, list[tuple[str, bytes]]] = {}

    def note(blob: bytes, snap_id: str, path: bytes) -> None:
        found = users.setdefault(blob, [])
        if len(found) < MAX_USERS:
            found.append((snap_id, path))

    seen: set[bytes] = set()
    for snap in _loadable_snapshots(repo):
        stack = [(b"/", snap.tree)]
        while stack:
            path, tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            if tree_id in wanted:
                note(tree_id, snap.id, path)
            try:
                nodes = repo.load_tree(tree_id)
            except (CoreStateError, KeyError, ValueError, TypeError):
                continue
            for node in nodes:
                child = path.rstrip(b"/") + b"/" + node.name
                for blob in set(node.content or ()) & wanted:
                    note(blob, snap.id, child)
                if node.type == "dir" and node.subtree is not None:
                    stack.append((child, node.subtree))
    return users


def _loadable_snapshots(repo: Repository) -> Iterator[Snapshot]:
    for info in repo.backend.list(Kind.SNAPSHOTS):
        try:
            yield repo.load_snapshot(info.name)
        except (CoreStateError, KeyError, ValueError, TypeError, AssertionError):
            continue


def check(repo: Repository, read_data: bool = False,
          progress: ProgressFn = no_progress) -> CheckReport:
    """Check ``repo`` (see the module doc); never raises for damage, reports it."""
    report = CheckReport()
    progress("index", 0, 1)
    _load_indexes(repo, report)
    progress("index", 1, 1)
    stored = _check_packs(repo, report)
    _check_snapshots(repo, report, progress)
    if read_data:
        _read_data(repo, stored, report, progress)
    wanted = {b for p in report.errors if p.kind in ("pack-missing", "pack-size", "blob")
              for b in p.blobs}
    if wanted:
        users = _users(repo, wanted)
        for p in report.errors:
            for blob in p.blobs:
                for user in users.get(blob, []):
                    if user not in p.users and len(p.users) < MAX_USERS * 3:
                        p.users.append(user)
    return report
