"""Blob usage: which blobs a snapshot references.

A snapshot *uses* every tree blob reachable from its root tree (the root included) and
every data blob named in the ``content`` of a file node below it. Its *blob bitmap*
(:mod:`corestate.repository.ordinals`) is the roaring bitmap of the *ordinals* of those blobs
in the repository's ordinal table; the *live set* is the union of the bitmaps of every
snapshot that exists.

A stored bitmap is *trusted* only when :func:`~corestate.repository.ordinals.load_bitmap`
accepts it (it was computed against the table as loaded now) and every ordinal in it
exists in the table. Otherwise the set is *recomputed* by walking the snapshot's trees;
with ``store=True`` the recomputed bitmap is saved so the next reader can trust it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pyroaring import BitMap

from corestate.errors import IntegrityError, NotFoundError
from corestate.maintenance import ProgressFn, no_progress
from corestate.repository import ordinals
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot


def tree_blob_ids(repo: Repository, root: bytes) -> set[bytes]:
    """Every blob id reachable from the tree ``root``, ``root`` included.

    Each distinct subtree is loaded once. Raises IntegrityError/NotFoundError if a tree
    cannot be loaded: a set missing a subtree's blobs must never be mistaken for the
    whole (prune would delete blobs still in use). Damaged nodes count with whatever
    content and subtree could be read from them, whatever their type, so that
    `repair snapshots` can still salvage them.
    """
    blobs = {root}
    stack = [root]
    while stack:
        for node in repo.load_tree(stack.pop(), damaged=True):
            if node.type == "file" or node.damage:
                blobs.update(node.content or ())
            if (node.type == "dir" or node.damage) and node.subtree is not None \
                    and node.subtree not in blobs:
                blobs.add(node.subtree)
                if node.type == "dir":
                    stack.append(node.subtree)
    return blobs


@dataclass
class SnapshotUsage:
    """The blobs one snapshot uses, as ordinals; ``recomputed`` if its stored bitmap was
    missing or invalid and the trees were walked instead."""

    snapshot: Snapshot
    bitmap: BitMap
    recomputed: bool


def _trusted_bitmap(repo: Repository, snap: Snapshot, table: ordinals.OrdinalTable) -> BitMap | None:
    bitmap = ordinals.load_bitmap(repo, snap.id, table)
    if bitmap is None:
        return None
    if len(bitmap) and bitmap.max() >= len(table):
        return None
    return bitmap


def snapshot_usage(repo: Repository, snaps: Iterable[Snapshot], table: ordinals.OrdinalTable,
                   store: bool = False, progress: ProgressFn = no_progress) -> list[SnapshotUsage]:
    """The usage of each snapshot, from its bitmap or, failing that, its trees.

    The repository's index must be loaded and ``table`` loaded after it. With ``store``,
    new ordinals are written to the table and recomputed bitmaps are saved (call this
    only under a lock that keeps backups out, as prune does).
    """
    snaps = list(snaps)
    out: list[SnapshotUsage] = []
    for done, snap in enumerate(snaps):
        progress("snapshots", done, len(snaps))
        bitmap = _trusted_bitmap(repo, snap, table)
        if bitmap is not None:
            out.append(SnapshotUsage(snap, bitmap, False))
        else:
            try:
                blobs = tree_blob_ids(repo, snap.tree)
            except (IntegrityError, NotFoundError) as exc:
                raise IntegrityError(f"snapshot {snap.short_id}: cannot tell which blobs it "
                                     f"uses: {exc}") from exc
            out.append(SnapshotUsage(snap, table.ordinals(blobs), True))
    progress("snapshots", len(snaps), len(snaps))
    recomputed = [u for u in out if u.recomputed]
    if store and recomputed:
        ordinals.store_table(repo, table)
        for usage in recomputed:
            ordinals.save_bitmap(repo, usage.snapshot.id, usage.bitmap, table)
    return out


def union(usages: Iterable[SnapshotUsage]) -> BitMap:
    """The ordinals used by any of ``usages`` (the live set when given every snapshot)."""
    return BitMap.union(BitMap(), *(u.bitmap for u in usages))


def blob_ids(table: ordinals.OrdinalTable, bitmap: BitMap) -> set[bytes]:
    """The blob ids of a bitmap's ordinals."""
    return set(table.resolve(bitmap))
