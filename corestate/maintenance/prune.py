"""Prune: delete the data no snapshot uses any more, as ``restic prune`` does.

Terms:

- *used blob*: one in the live set, the union of every snapshot's blob bitmap
  (:mod:`.usage`; a snapshot without a valid bitmap has its trees walked instead, and the
  recomputed bitmap is stored).
- *keeper*: the one stored copy of a used blob that survives. It is chosen among the
  blob's locations: an intact indexed pack first, then an unindexed pack with a readable
  header, then a *damaged* pack (size differs from what the index implies) as a last
  resort to salvage from. The other copies are *duplicates* and count as unused.
- *unindexed pack*: in ``data/`` but in no index (left by an interrupted backup).
- Pack actions: *delete* a pack with no keeper; *keep* a pack whose blobs are all
  keepers and that is not small; *repack* the rest: copy their keepers' stored bytes
  (verified, not re-encrypted: blobs are encrypted one by one) into new packs, then
  delete them. A partly used pack is repacked when less than ``repack_below`` of its
  blob bytes are used, when it holds trees, or when it is small; fully used *small*
  packs (under ``small_pack``) are combined when there are two or more of a type.

Order of the steps, chosen so that killing prune at any point leaves a consistent
repository (at worst unindexed packs or superseded index files, both harmless):

1. take the exclusive lock (a running backup holds a shared one, so prune refuses);
2. compute the used blobs and choose keepers; abort if a used blob has no copy;
3. write the repacked blobs into new packs;
4. verify that every used blob is listed by the new index; abort otherwise;
5. write the new index, which ``supersedes`` every old index file;
6. delete the old index files;
7. delete the unused and repacked packs, stale ``.tmp-`` files and orphaned bitmaps.

In an immutable repository (S3 Object Lock) a file whose lock has not ended cannot be
deleted: such index files stay, and so does every pack they list (an index must never
name a missing pack); such packs stay too. The report counts them and says until when;
a later prune removes them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any
from dataclasses import dataclass, field

from corestate.errors import CoreStateError, ImmutableError, IntegrityError, NotFoundError
from corestate.maintenance import ProgressFn, no_progress
from corestate.maintenance.check import expected_pack_size
from corestate.maintenance.usage import blob_ids, snapshot_usage, union
from corestate.repository import ordinals
from corestate.repository.backend import Kind
from corestate.repository.index import MasterIndex, index_from_json, index_to_json
from corestate.repository.lock import STALE_AFTER_NS
from corestate.repository.pack import (TARGET_PACK_SIZE, BlobType, PackBuilder, PackedBlob,
                                       SealedBlob, open_blob)
from corestate.repository.repository import Repository

INDEX_MAX_BLOBS = 50_000  # per index file, as restic
SMALL_PACK = 1024 * 1024


@dataclass
class PruneOptions:
    dry_run: bool = False
    repack_below: float = 0.8
    small_pack: int = SMALL_PACK
    target_pack_size: int = TARGET_PACK_SIZE
    temporaries_older_than: float = STALE_AFTER_NS / 1e9


@dataclass
class PackInfo:
    """One stored or indexed pack and what prune does with it."""

    id: str
    size: int
    entries: list[PackedBlob]
    indexed: bool
    state: str = "ok"  # ok | damaged | missing | unreadable
    keepers: list[PackedBlob] = field(default_factory=list)
    action: str = "keep"  # keep | repack | delete | drop (missing: only leaves the index)

    @property
    def type(self) -> BlobType | None:
        return self.entries[0].type if self.entries else None

    @property
    def used_bytes(self) -> int:
        return sum(e.length for e in self.keepers)

    @property
    def blob_bytes(self) -> int:
        return sum(e.length for e in self.entries)


@dataclass
class PruneReport:
    dry_run: bool
    snapshots: int = 0
    used_blobs: int = 0
    bitmaps_recomputed: int = 0
    packs_before: int = 0
    bytes_before: int = 0
    packs_kept: int = 0
    packs_deleted: list[str] = field(default_factory=list)
    packs_repacked: list[str] = field(default_factory=list)
    packs_written: list[str] = field(default_factory=list)
    packs_damaged: list[str] = field(default_factory=list)
    packs_unindexed: list[str] = field(default_factory=list)
    blobs_repacked: int = 0
    blobs_removed: int = 0
    bytes_written: int = 0
    index_files_removed: int = 0
    index_files_written: int = 0
    temporaries_removed: int = 0
    bitmaps_removed: int = 0
    bytes_after: int = 0  # an estimate under dry_run
    packs_locked: list[str] = field(default_factory=list)  # S3 Object Lock: kept for now
    index_files_locked: int = 0
    locked_until: float = 0.0  # when the last of those locks ends

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.__dict__)
        out["bytes_freed"] = self.bytes_freed
        return out


class PruneAborted(IntegrityError):
    """Prune found that going on would lose data a snapshot needs; nothing was deleted."""


def _choose_keepers(used: set[bytes], packs: dict[str, PackInfo]) -> None:
    rank = {"ok": 0, "damaged": 2}
    by_blob: dict[bytes, list[tuple[int, str, PackedBlob]]] = {}
    for info in packs.values():
        if info.state not in rank:
            continue
        for e in info.entries:
            if e.id in used:
                score = rank[info.state] + (0 if info.indexed else 1)
                by_blob.setdefault(e.id, []).append((score, info.id, e))
    missing = used - set(by_blob)
    if missing:
        shown = ", ".join(sorted(b.hex()[:16] for b in missing)[:10])
        raise PruneAborted(f"{len(missing)} blobs used by snapshots are in no readable pack "
                           f"({shown}); nothing was deleted; run `corestate check`")
    for blob, candidates in by_blob.items():
        _, pack_id, entry = min(candidates, key=lambda c: (c[0], c[1]))
        packs[pack_id].keepers.append(entry)


def _decide(packs: dict[str, PackInfo], opts: PruneOptions) -> None:
    small: dict[BlobType | None, list[PackInfo]] = {}
    for info in packs.values():
        if info.state == "missing":
            info.action = "drop"
        elif not info.keepers:
            info.action = "delete"
        elif info.state != "ok" or len(info.keepers) < len(info.entries):
            partly = info.used_bytes < opts.repack_below * info.blob_bytes
            info.action = "repack" if (info.state != "ok" or partly or info.type == BlobType.TREE
                                       or info.size < opts.small_pack) else "keep"
        else:
            info.action = "keep"
            if info.size < opts.small_pack:
                small.setdefault(info.type, []).append(info)
    # Combine small packs when that makes fewer packs: two or more of a type, or one
    # that can join a new pack of its type written anyway.
    for btype, group in small.items():
        writing = any(p.action == "repack" and p.type == btype for p in packs.values())
        if len(group) + writing >= 2:
            for info in group:
                info.action = "repack"


def _survey(repo: Repository, progress: ProgressFn) -> dict[str, PackInfo]:
    """Every indexed and every stored pack, with its state."""
    stored = {f.name: f.size for f in repo.backend.list(Kind.DATA)}
    packs: dict[str, PackInfo] = {}
    for pack_id, entries in repo.index.packs.items():
        size = stored.get(pack_id)
        state = ("missing" if size is None
                 else "ok" if size == expected_pack_size(entries) else "damaged")
        packs[pack_id] = PackInfo(pack_id, size or 0, entries, True, state)
    orphans = sorted(set(stored) - set(packs))
    for done, pack_id in enumerate(orphans):
        progress("unindexed packs", done, len(orphans))
        try:
            entries = repo.read_pack_header(pack_id, stored[pack_id])
            packs[pack_id] = PackInfo(pack_id, stored[pack_id], entries, False)
        except (IntegrityError, NotFoundError):
            packs[pack_id] = PackInfo(pack_id, stored[pack_id], [], False, "unreadable")
    return packs


def _copies(repo: Repository, blob: bytes, packs: dict[str, PackInfo], skip: str
            ) -> Iterator[tuple[PackedBlob, bytes]]:
    """Other stored copies of ``blob`` (for when the keeper turns out damaged)."""
    for info in packs.values():
        if info.id == skip or info.state in ("missing", "unreadable"):
            continue
        for e in info.entries:
            if e.id == blob:
                with contextlib.suppress(CoreStateError):
                    yield e, repo.backend.read(Kind.DATA, info.id, e.offset, e.length)


def _repack(repo: Repository, packs: dict[str, PackInfo], opts: PruneOptions,
            report: PruneReport, progress: ProgressFn) -> dict[str, list[PackedBlob]]:
    """Copy the keepers of packs to repack into new packs; returns the new packs."""
    todo = sorted((p for p in packs.values() if p.action == "repack"), key=lambda p: p.id)
    builders: dict[BlobType, PackBuilder] = {}
    written: dict[str, list[PackedBlob]] = {}
    lost: list[bytes] = []

    def finish(builder: PackBuilder) -> None:
        pack_id, data, entries = builder.finish(repo.key)
        repo.backend.write(Kind.DATA, pack_id, bytes(data))
        written[pack_id] = list(entries)
        report.bytes_written += len(data)

    for done, info in enumerate(todo):
        progress("repack", done, len(todo))
        try:
            data = repo.backend.read(Kind.DATA, info.id)
        except CoreStateError:
            data = b""
        for entry in sorted(info.keepers, key=lambda e: e.offset):
            own = [(entry, data[entry.offset:entry.offset + entry.length])]
            good: tuple[PackedBlob, bytes] | None = None
            for e, stored in itertools.chain(own, _copies(repo, entry.id, packs, info.id)):
                try:
                    if len(stored) == e.length:
                        open_blob(repo.key, e, stored)
                        good = (e, stored)
                        break
                except IntegrityError:
                    continue
            if good is None:
                lost.append(entry.id)
                continue
            e, stored = good
            builder = builders.setdefault(e.type, PackBuilder(e.type))
            builder.add(SealedBlob(e.id, e.type, bytes(stored), e.uncompressed_length))
            if builder.size >= opts.target_pack_size:
                finish(builders.pop(e.type))
    for builder in builders.values():
        if len(builder):
            finish(builder)
    progress("repack", len(todo), len(todo))
    if lost:
        shown = ", ".join(b.hex()[:16] for b in lost[:10])
        raise PruneAborted(f"{len(lost)} used blobs have no intact copy ({shown}); nothing "
                           "was deleted; run `corestate check --read-data`")
    return written


def write_index(repo: Repository, packs: dict[str, list[PackedBlob]],
                supersedes: list[str]) -> list[str]:
    """Index files listing ``packs`` (at most INDEX_MAX_BLOBS blobs each), each
    superseding ``supersedes``; their names."""
    files: list[str] = []
    chunk: dict[str, list[PackedBlob]] = {}
    count = 0
    for pack_id in sorted(packs):
        chunk[pack_id] = packs[pack_id]
        count += len(packs[pack_id])
        if count >= INDEX_MAX_BLOBS:
            files.append(repo.save_json(Kind.INDEX, index_to_json(chunk, supersedes)))
            chunk, count = {}, 0
    if chunk:
        files.append(repo.save_json(Kind.INDEX, index_to_json(chunk, supersedes)))
    return files


def _backend_method(repo: Repository, name: str) -> Any:
    """A method only some backends have (found under the wrappers), or None."""
    backend: object = repo.backend
    while backend is not None:
        method = getattr(backend, name, None)
        if method is not None:
            return method
        backend = getattr(backend, "inner", None)
    return None


def _remove_temporaries(repo: Repository, older_than: float) -> int:
    remove = _backend_method(repo, "remove_stale_temporaries")
    return int(remove(older_than)) if remove is not None else 0


def _locked_index(repo: Repository, report: PruneReport) -> tuple[set[str], set[str]]:
    """Index files under retention (S3 Object Lock), and the packs they list."""
    locked_until = _backend_method(repo, "locked_until")
    files: set[str] = set()
    pinned: set[str] = set()
    for name in sorted(repo.index.files) if locked_until is not None else []:
        until = locked_until(Kind.INDEX, name)
        if until is not None:
            files.add(name)
            report.locked_until = max(report.locked_until, until)
            pinned.update(index_from_json(repo.load_json(Kind.INDEX, name))[0])
    return files, pinned


def _remove_orphan_bitmaps(repo: Repository, snapshot_ids: set[str]) -> int:
    removed = 0
    for name in repo.list_sidecar():
        if name.startswith("bitmap-") and name[len("bitmap-"):] not in snapshot_ids:
            with contextlib.suppress(NotFoundError):
                repo.backend.delete(Kind.SIDECAR, name)
                removed += 1
    return removed


def _rewrite(repo: Repository, packs: dict[str, PackInfo], kept: dict[str, list[PackedBlob]],
             used: set[bytes], opts: PruneOptions, report: PruneReport,
             progress: ProgressFn, locked_index: set[str]) -> None:
    """Steps 3 to 7 of the module doc: repack, verify, index, delete."""
    new_packs = _repack(repo, packs, opts, report, progress)
    report.packs_written = sorted(new_packs)
    final = {**kept, **new_packs}
    listed = {e.id for entries in final.values() for e in entries}
    if used - listed:
        raise PruneAborted(f"{len(used - listed)} used blobs would not be indexed after prune; "
                           "nothing was deleted")
    old_index = sorted(repo.index.files)
    progress("index", 0, 1)
    new_index = write_index(repo, final, old_index)
    report.index_files_written = len(new_index)
    pinned: set[str] = set()  # listed by an index file that stays: they stay too
    for name in old_index:
        if name in locked_index:
            continue
        if name not in new_index:
            try:
                with contextlib.suppress(NotFoundError):
                    repo.backend.delete(Kind.INDEX, name)
                report.index_files_removed += 1
            except ImmutableError as exc:
                report.index_files_locked += 1
                report.locked_until = max(report.locked_until, exc.until)
                pinned.update(index_from_json(repo.load_json(Kind.INDEX, name))[0])
    progress("index", 1, 1)
    doomed = report.packs_deleted + report.packs_repacked
    for done, pack_id in enumerate(doomed):
        progress("delete packs", done, len(doomed))
        try:
            if pack_id in pinned:
                report.packs_locked.append(pack_id)
                continue
            with contextlib.suppress(NotFoundError):
                repo.backend.delete(Kind.DATA, pack_id)
        except ImmutableError as exc:
            report.packs_locked.append(pack_id)
            report.locked_until = max(report.locked_until, exc.until)
    progress("delete packs", len(doomed), len(doomed))
    fresh = MasterIndex()
    for pack_id, entries in final.items():
        fresh.add_pack(pack_id, entries)
    fresh.files.update(new_index)
    repo.index = fresh


def prune(repo: Repository, opts: PruneOptions | None = None, progress: ProgressFn = no_progress,
          lock: bool = True) -> PruneReport:
    """Prune ``repo`` (see the module doc). With ``lock=False`` the caller must already
    hold the exclusive lock (forget --prune does)."""
    opts = opts or PruneOptions()
    if lock:
        with repo.locked(exclusive=True):
            return _prune(repo, opts, progress)
    return _prune(repo, opts, progress)


def _prune(repo: Repository, opts: PruneOptions, progress: ProgressFn) -> PruneReport:
    report = PruneReport(dry_run=opts.dry_run)
    repo.load_index()
    try:
        snaps = repo.list_snapshots()
    except IntegrityError as exc:  # what it uses is unknown: deleting anything could lose it
        raise IntegrityError(f"{exc}; nothing was deleted (if that snapshot is beyond repair, "
                             "`corestate forget ID` removes its file)") from None
    table = ordinals.load_table(repo)
    usages = snapshot_usage(repo, snaps, table, store=not opts.dry_run, progress=progress)
    used = blob_ids(table, union(usages))
    report.snapshots, report.used_blobs = len(snaps), len(used)
    report.bitmaps_recomputed = sum(u.recomputed for u in usages)

    packs = _survey(repo, progress)
    present = [p for p in packs.values() if p.state != "missing"]
    report.packs_before = len(present)
    report.bytes_before = sum(p.size for p in present)
    report.packs_damaged = sorted(p.id for p in packs.values() if p.state in ("damaged", "unreadable"))
    report.packs_unindexed = sorted(p.id for p in packs.values() if not p.indexed)
    _choose_keepers(used, packs)
    _decide(packs, opts)
    locked_index, pinned = _locked_index(repo, report)
    report.index_files_locked = len(locked_index)
    for pack_id in sorted(pinned):  # a kept index file must not name a missing pack
        info = packs.get(pack_id)
        if info is not None and info.action in ("delete", "repack"):
            info.action = "keep"
            report.packs_locked.append(pack_id)
    kept = {p.id: p.entries for p in packs.values() if p.action == "keep"}
    report.packs_kept = len(kept)
    report.packs_deleted = sorted(p.id for p in packs.values() if p.action == "delete")
    report.packs_repacked = sorted(p.id for p in packs.values() if p.action == "repack")
    report.blobs_repacked = sum(len(p.keepers) for p in packs.values() if p.action == "repack")
    report.blobs_removed = sum(len(p.entries) for p in packs.values()
                               if p.action in ("delete", "repack")) - sum(
        len(p.keepers) for p in packs.values() if p.action == "repack")
    if opts.dry_run:
        moved = sum(p.used_bytes for p in packs.values() if p.action == "repack")
        report.bytes_after = sum(p.size for p in packs.values() if p.action == "keep") + moved
        return report

    if any(p.action != "keep" or not p.indexed for p in packs.values()):
        _rewrite(repo, packs, kept, used, opts, report, progress, locked_index)
    report.temporaries_removed = _remove_temporaries(repo, opts.temporaries_older_than)
    report.bitmaps_removed = _remove_orphan_bitmaps(repo, {s.id for s in snaps})
    report.bytes_after = sum(f.size for f in repo.backend.list(Kind.DATA))
    return report
