"""Diff: what changed between two snapshots, as ``restic diff`` reports it.

Terms:

- *change*: a snapshot path with a *modifier*: ``+`` added, ``-`` removed, ``M`` a file
  whose content (its list of data blobs) differs, ``T`` the node type changed, ``U``
  only metadata changed (reported with ``metadata=True``, as restic's ``--metadata``;
  unlike restic, the access time is ignored, since reading a file changes it).
  Directory paths end with ``/``. Everything inside an added or removed directory is
  listed too; subtrees with the same id are not descended into.
- *counts* (restic's): files, directories and other nodes added and removed, and files
  changed.
- *blob summary*: from the snapshots' blob bitmaps (:mod:`.usage`): data and tree
  blobs referenced by the second snapshot but not the first (*added*) and the reverse
  (*removed*), with their plaintext bytes (what restic prints as Added/Removed) and
  stored bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Union

from pyroaring import BitMap

from corestate.errors import IntegrityError
from corestate.maintenance.listing import json_text
from corestate.maintenance.usage import snapshot_usage
from corestate.repository import ordinals
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.tree import Node
from corestate.repository.walk import OnError, walk


@dataclass
class Change:
    path: bytes
    modifier: str

    def to_json(self) -> dict[str, object]:
        return {"path": json_text(self.path), "modifier": self.modifier}


@dataclass
class Counts:
    files: int = 0
    dirs: int = 0
    others: int = 0

    def add(self, node: Node) -> None:
        if node.type == "file":
            self.files += 1
        elif node.type == "dir":
            self.dirs += 1
        else:
            self.others += 1


@dataclass
class BlobDelta:
    data_blobs: int = 0
    tree_blobs: int = 0
    bytes: int = 0  # plaintext
    stored_bytes: int = 0


@dataclass
class DiffResult:
    source: Snapshot
    target: Snapshot
    changes: list[Change] = field(default_factory=list)
    changed_files: int = 0
    added: Counts = field(default_factory=Counts)
    removed: Counts = field(default_factory=Counts)
    blobs_added: BlobDelta = field(default_factory=BlobDelta)
    blobs_removed: BlobDelta = field(default_factory=BlobDelta)

    def to_json(self) -> dict[str, object]:
        """The changes plus restic's ``statistics`` message fields."""
        def side(c: Counts, b: BlobDelta) -> dict[str, object]:
            return {"files": c.files, "dirs": c.dirs, "others": c.others,
                    "data_blobs": b.data_blobs, "tree_blobs": b.tree_blobs,
                    "bytes": b.bytes, "stored_bytes": b.stored_bytes}

        return {"source_snapshot": self.source.id, "target_snapshot": self.target.id,
                "changes": [c.to_json() for c in self.changes],
                "changed_files": self.changed_files,
                "added": side(self.added, self.blobs_added),
                "removed": side(self.removed, self.blobs_removed)}


_Step = Union[Change, Iterator["_Step"]]
"""What a tree level yields: a change, or the level below to walk next."""


def _join(prefix: bytes, name: bytes) -> bytes:
    return prefix.rstrip(b"/") + b"/" + name


def _label(path: bytes, node: Node) -> bytes:
    return path + b"/" if node.type == "dir" else path


def _same_metadata(a: Node, b: Node) -> bool:
    keys = ("mode", "mtime", "ctime", "uid", "gid", "user", "group", "inode", "device_id",
            "size", "links", "linktarget", "device", "xattrs")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _whole(repo: Repository, modifier: str, path: bytes, node: Node,
           counts: Counts, on_error: OnError | None) -> Iterator[Change]:
    """A node added or removed, with everything below it."""
    yield Change(_label(path, node), modifier)
    counts.add(node)
    if node.type == "dir" and node.subtree is not None:
        for child_path, child in walk(repo, node.subtree, path, on_error=on_error):
            counts.add(child)
            yield Change(_label(child_path, child), modifier)


def tree_changes(repo: Repository, result: DiffResult, tree1: bytes, tree2: bytes,
                 metadata: bool = False, on_error: OnError | None = None) -> Iterator[Change]:
    """The changes between two trees, in restic's order (depth first, by name).
    Damaged entries of either tree go to ``on_error`` (else raise), as in
    :func:`~corestate.repository.walk.walk`, and are left out of the comparison."""
    # An explicit stack of generators: trees can nest deeper than the recursion limit.
    stack: list[Iterator[_Step]] = [_level(repo, result, b"/", tree1, tree2, metadata, on_error)]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
        elif isinstance(item, Change):
            yield item
        else:
            stack.append(item)


def _intact(repo: Repository, prefix: bytes, tree_id: bytes,
            on_error: OnError | None) -> dict[bytes, Node]:
    """A tree's intact nodes by name; damaged ones are reported (see tree_changes)."""
    nodes = {}
    for node in repo.load_tree(tree_id, damaged=True):
        if node.damage:
            path = _join(prefix, node.name)
            error = IntegrityError(f"damaged entry skipped: {node.damage}")
            if on_error is None:
                raise IntegrityError(f"{json_text(path)}: {error.message}")
            on_error(path, error)
        else:
            nodes[node.name] = node
    return nodes


def _level(repo: Repository, result: DiffResult, prefix: bytes, tree1: bytes, tree2: bytes,
           metadata: bool, on_error: OnError | None) -> Iterator[_Step]:
    nodes1 = _intact(repo, prefix, tree1, on_error)
    nodes2 = _intact(repo, prefix, tree2, on_error)
    for name in sorted(nodes1.keys() | nodes2.keys()):
        a, b = nodes1.get(name), nodes2.get(name)
        path = _join(prefix, name)
        if a is not None and b is not None:
            mod = "T" if a.type != b.type else ""
            if a.type == "file" and b.type == "file" and a.content != b.content:
                mod += "M"
                result.changed_files += 1
            elif metadata and not mod and not _same_metadata(a, b):
                mod = "U"
            if mod:
                yield Change(_label(path, b), mod)
            if (a.type == "dir" and b.type == "dir" and a.subtree is not None
                    and b.subtree is not None and a.subtree != b.subtree):
                yield _level(repo, result, path, a.subtree, b.subtree, metadata, on_error)
        elif a is not None:
            yield from _whole(repo, "-", path, a, result.removed, on_error)
        elif b is not None:
            yield from _whole(repo, "+", path, b, result.added, on_error)


def _delta(repo: Repository, table: ordinals.OrdinalTable, bitmap: BitMap) -> BlobDelta:
    delta = BlobDelta()
    for blob in table.resolve(bitmap):
        loc = repo.index.lookup(blob)
        if loc is None:
            continue  # check reports it; the summary counts what can be found
        if loc.blob.type == BlobType.DATA:
            delta.data_blobs += 1
        else:
            delta.tree_blobs += 1
        delta.bytes += loc.blob.plaintext_length
        delta.stored_bytes += loc.blob.length
    return delta


def diff(repo: Repository, source: Snapshot, target: Snapshot, metadata: bool = False,
         on_error: OnError | None = None) -> DiffResult:
    """Everything that changed from ``source`` to ``target`` (see the module doc;
    ``on_error``: see :func:`tree_changes`)."""
    repo.load_index()
    result = DiffResult(source, target)
    result.changes = list(tree_changes(repo, result, source.tree, target.tree, metadata,
                                       on_error))
    table = ordinals.load_table(repo)
    before, after = (u.bitmap for u in snapshot_usage(repo, [source, target], table))
    result.blobs_added = _delta(repo, table, after - before)
    result.blobs_removed = _delta(repo, table, before - after)
    return result
