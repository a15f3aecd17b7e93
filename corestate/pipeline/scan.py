"""The scan: what a backup run captures, decided by comparing the disk with the parent.

A *scan* walks the source paths and hands each entry that the snapshot must record
afresh to a *sink*; everything else the committer takes from the *parent* snapshot
(:mod:`.assemble`'s incremental runs). Per entry:

- a regular file whose size, mtime, ctime and inode equal its node in the parent
  (restic's rule) is *unchanged*: not captured, so its parent node is kept whole (its
  stored JSON too, so unchanged directories give byte-identical trees);
- any other regular file becomes a :class:`~corestate.pipeline.jobs.ReadFile` job;
- directories, symlinks, devices and fifos become a
  :class:`~corestate.schemas.events.FileManifest` with their fresh metadata;
- an entry of the parent that the directory no longer lists (deleted, now excluded) is
  *removed*; sockets are never recorded (they cannot be restored meaningfully).

Which directories are listed: without a *dirty set*, every one (a *full walk*). With
one (``corestate protect``: the directories a watcher saw change), only the dirty
directories are listed; a directory on the way to a dirty one is not (its listing did
not change) and only its entries on that way are looked at; every other subtree is the
parent's, untouched. Subtrees in ``rescan`` are walked fully all the same.

With the *named* entries too (the paths the watcher's events named), a dirty directory
is not even listed: only its named entries (and those on the way) are looked at, the
others are the parent's, as the distributed agent's runs trust the same names
(:func:`corestate.agents.agent.plan`). At 1000 changes a second nearly every directory
is dirty, and listing and ``lstat``-ing all of their entries was half of each snapshot.
A dirty directory is still listed whole when it is *fresh* (created or moved in, or
below such a path: what it holds was never named), rescanned, has no named entry, or
where a named entry is or was a hard link (its other names in the directory changed
link count and ctime without an event).

The walk is iterative (trees nest thousands deep). Errors (an unreadable directory, an
entry that cannot be stat-ed) are reported and the entry left out; the run goes on.

The virtual directories above the source paths (``/home`` and ``/home/u`` for
``/home/u/docs``) are captured like any directory, with only the entries on the way; a
symlink among them is recorded as the directory it leads to.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from pyroaring import BitMap

from corestate.errors import CoreStateError
from corestate.pipeline.assemble import meta_from_node
from corestate.pipeline.capture import (ExcludeMatcher, Sources, list_names, node_from_stat,
                                        unchanged)
from corestate.pipeline.jobs import PreviousVersion, ReadFile, Record
from corestate.pipeline.listings import Entry, ListingCache
from corestate.repository.tree import Node
from corestate.schemas.events import FileManifest

LoadTree = Callable[[bytes], list[Node]]
# An entry of the parent snapshot: its tree node, or its entry in the listing cache
Prev = Node | Entry
# A virtual directory's entries on the way to the source paths (None: the whole path).
Roots = dict[bytes, "Roots | None"]


@dataclass
class ScanReport:
    """What a scan found besides the entries it captured."""

    files_unmodified: int = 0
    bytes_unmodified: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unmodified: int = 0
    files_to_read: int = 0
    bytes_to_read: int = 0
    dirs: int = 0
    removed: list[bytes] = field(default_factory=list)
    errors: list[tuple[bytes, str]] = field(default_factory=list)


def roots_of(paths: list[str]) -> Roots:
    """Nested dict of path components; a source path maps to None (take it all).

    >>> roots_of(["/a/b", "/a/c/d", "/a/b/e"])
    {b'a': {b'b': None, b'c': {b'd': None}}}
    """
    tree: Roots = {}
    for p in sorted(paths, key=len):
        parts = [c for c in os.fsencode(p).split(b"/") if c]
        level: Roots | None = tree
        for i, comp in enumerate(parts):
            if level is None:
                break  # an ancestor is already backed up whole
            if i == len(parts) - 1:
                level[comp] = None
            else:
                level = level.setdefault(comp, {})
    return tree


def _join(path: bytes, name: bytes) -> bytes:
    return path.rstrip(b"/") + b"/" + name


def _split(path: bytes) -> tuple[bytes, bytes]:
    """A path's directory and name: ``b"/a/b"`` -> ``(b"/a", b"b")``; ``b"/a"`` ->
    ``(b"/", b"a")``."""
    up, _, name = path.rstrip(b"/").rpartition(b"/")
    return up or b"/", name


def _at_or_below(path: bytes, tops: frozenset[bytes]) -> bool:
    """Whether ``path`` is one of ``tops`` or lies below one."""
    while tops:
        if path in tops:
            return True
        if path in (b"/", b""):
            return False
        path = path.rsplit(b"/", 1)[0] or b"/"
    return False


def _same_node(prev: Prev, node: Node) -> bool:
    """Whether an entry's fresh node records what its parent node does (its access time
    aside: reading it changes that; content and subtrees are compared elsewhere)."""
    return (prev.type == node.type and prev.mode == node.mode and prev.mtime == node.mtime
            and prev.ctime == node.ctime and prev.uid == node.uid and prev.gid == node.gid
            and prev.user == node.user and prev.group == node.group
            and prev.inode == node.inode and prev.device_id == node.device_id
            and prev.links == node.links and prev.linktarget == node.linktarget
            and prev.device == node.device and prev.xattrs == node.xattrs
            and (node.type == "dir" or prev.size == node.size))


class Summaries(Protocol):
    """Where a scan hands what it learns of untouched subtrees (the commit stage): the
    file count and blob bitmap below a parent tree, so the committer need not load it."""

    def blob_ordinals(self, blob_ids: Iterable[bytes]) -> BitMap:
        ...

    def subtree(self, tree_id: bytes, files: int, bitmap: BitMap) -> None:
        ...

    def listing(self, tree_id: bytes, nodes: list[Node]) -> None:
        """A parent tree whose directory changed below, as the scan decoded it (not
        when its listing came from the cache: the commit loads that tree itself)."""


@dataclass(eq=False)
class _Dir:
    """A directory being scanned, until every subdirectory below it is done."""

    path: bytes
    node: Node | None  # its fresh node; None for the root
    prev: Prev | None  # its node in the parent snapshot
    parent: _Dir | None
    old: dict[bytes, Prev] | None  # the parent snapshot's entries of it
    tree: bytes | None  # the parent snapshot's tree of it (what ``old`` was decoded from)
    only: Roots | None  # the virtual directories above the sources: the entries on the way
    pending: int = 0  # subdirectories not done yet
    listed: bool = False
    clean: bool = True  # nothing at or below it captured or removed
    complete: bool = True  # every entry below it looked at (its summary can be made)
    files: int = 0
    blobs: list[bytes] = field(default_factory=list)  # of its unchanged files
    parts: list[BitMap] = field(default_factory=list)  # of its untouched subdirectories


class Scanner:
    """One scan (see the module docstring). ``load_tree`` loads the parent's trees,
    unless ``listings`` (:mod:`.listings`) has them, and adds those it loads to it;
    ``sources`` (:class:`~corestate.pipeline.capture.Sources`) is where the source paths
    really are: a directory is listed only if it still is the one the scan found, there
    (:func:`~corestate.pipeline.capture.list_names`); ``skip`` is a path never captured
    (the repository itself, when it lies below a source path)."""

    def __init__(self, snapshot_id: str, sink: Callable[[Record], None], load_tree: LoadTree,
                 excludes: ExcludeMatcher, sources: Sources | None = None, force: bool = False,
                 dirty: frozenset[bytes] | None = None, rescan: frozenset[bytes] = frozenset(),
                 skip: bytes | None = None, summaries: Summaries | None = None,
                 listings: ListingCache | None = None, named: frozenset[bytes] | None = None,
                 fresh: frozenset[bytes] = frozenset()) -> None:
        self.snapshot_id = snapshot_id
        self.sink = sink
        self.load_tree = load_tree
        self.listings = listings
        self.excludes = excludes
        self.sources = sources
        self.force = force
        self.dirty = dirty
        self.rescan = rescan
        self.skip = skip
        self.summaries = summaries
        self.report = ScanReport()
        self.fresh = fresh
        # every directory on the way to a dirty or rescanned one (and those themselves)
        self._on_way: set[bytes] | None = None
        # directory -> the names of its entries on that way
        self._way: dict[bytes, set[bytes]] = {}
        # dirty directory -> the names of its entries that events named
        self._named: dict[bytes, set[bytes]] | None = None
        if dirty is not None:
            self._on_way = {b"/"}
            for d in dirty | rescan:
                parts = d.rstrip(b"/").split(b"/")
                self._on_way.update(b"/".join(parts[:i]) for i in range(2, len(parts) + 1))
            for d in self._on_way:
                if d != b"/":
                    up, name = _split(d)
                    self._way.setdefault(up, set()).add(name)
            if named is not None:
                self._named = {}
                for p in named:
                    up, name = _split(p)
                    if name:
                        self._named.setdefault(up, set()).add(name)

    def run(self, paths: list[str], parent_tree: bytes | None) -> None:
        """Scan ``paths`` against the parent's root tree (None: no parent)."""
        root = _Dir(b"/", None, None, None, self._listing(parent_tree), parent_tree,
                    roots_of(paths))
        stack = [root]
        while stack:
            stack.extend(self._directory(stack.pop()))
        self._hand_over(root)  # the root is always assembled

    # -- one directory -----------------------------------------------------------------
    def _listing(self, tree_id: bytes | None) -> dict[bytes, Prev] | None:
        """The parent's entries of a directory by name; None if unknown or unreadable."""
        if tree_id is None:
            return None
        listings = self.listings
        cached = listings.get(tree_id) if listings is not None else None
        if cached is not None:
            return {e.name: e for e in cached}  # entries, or nodes protect kept
        try:
            nodes = self.load_tree(tree_id)
        except CoreStateError:
            return None  # a damaged parent only costs re-reading
        if listings is not None:
            listings.add(tree_id, nodes)
        return {n.name: n for n in nodes}

    def _rescanned(self, path: bytes) -> bool:
        """``path`` is at or below one of the subtrees to scan whole."""
        return _at_or_below(path, self.rescan)

    def _narrowed(self, path: bytes, old: dict[bytes, Prev] | None) -> list[bytes] | None:
        """The entries to look at in ``path`` if it is a dirty directory whose changes
        were all named (see the module docstring); None: list it whole."""
        named = self._named.get(path) if self._named is not None and old is not None else None
        if not named or self._rescanned(path) or _at_or_below(path, self.fresh):
            return None
        assert old is not None and self.dirty is not None
        if path not in self.dirty:
            return None
        for name in named:
            prev = old.get(name)
            if prev is not None:
                if prev.type == "file" and prev.links > 1:
                    return None
                continue
            try:
                st = os.lstat(_join(path, name))
            except OSError:
                continue  # gone again: nothing to record
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                return None
        return sorted(named | self._way.get(path, set()))

    def _full(self, path: bytes) -> bool:
        """Whether to list ``path`` whole: always in a full walk; else dirty or rescanned."""
        return self.dirty is None or path in self.dirty or self._rescanned(path)

    def _removed(self, d: _Dir, path: bytes) -> None:
        self.report.removed.append(path)
        d.clean = False

    def _directory(self, d: _Dir) -> Iterator[_Dir]:
        """Look at a directory's entries; yield its subdirectories to walk."""
        self.report.dirs += 1
        path, old, only = d.path, d.old, d.only
        if only is not None:
            names = sorted(only)
            d.complete = False
        elif (narrowed := self._narrowed(path, old)) is not None:
            names = narrowed
            d.complete = False  # the other entries are the parent's, not looked at
        elif self._full(path) or old is None:
            try:
                names = list_names(path, d.node, self.sources)
            except OSError as exc:
                self._error(path, exc)
                for n in sorted(old or ()):  # recorded empty, not as the parent had it
                    self._removed(d, _join(path, n))
                d.clean = d.complete = False
                names = []
            if old is not None:
                present = set(names)
                for n in sorted(old):
                    if n not in present:
                        self._removed(d, _join(path, n))
        else:  # on the way to a dirty directory: its listing did not change
            names = sorted(n for n in self._way.get(path, ()) if n in old)
            d.complete = False  # the other entries are the parent's, not looked at
        for name in names:
            full = _join(path, name)
            prev = old.get(name) if old is not None else None
            if self.excludes.excluded(full) or full == self.skip:
                if prev is not None:
                    self._removed(d, full)
                continue
            try:
                # a directory above a source path is recorded as the directory it leads
                # to, even through a symlink (the user named the path); all else as is
                above = only is not None and only[name] is not None
                st = os.stat(full) if above else os.lstat(full)
                if prev is not None and not self.force and unchanged(prev, st):
                    self._unchanged(d, prev)
                    continue
                node = node_from_stat(name, full, st, prev)
            except FileNotFoundError:
                if prev is not None:
                    self._removed(d, full)
                continue  # vanished since it was listed
            except OSError as exc:
                self._error(full, exc)
                if prev is not None:
                    self._removed(d, full)
                continue
            if stat.S_ISSOCK(st.st_mode):
                if prev is not None:
                    self._removed(d, full)
                continue
            if stat.S_ISREG(st.st_mode):
                self._file(d, full, node, prev)
            elif stat.S_ISDIR(st.st_mode):
                below = None if only is None else only[name]
                subtree = prev.subtree if prev is not None and prev.type == "dir" else None
                if below is None and self._on_way is not None and full not in self._on_way \
                        and subtree is not None and not self._rescanned(full):
                    # nothing changed below: the parent's subtree, untouched
                    assert prev is not None
                    if not _same_node(prev, node):
                        self._capture(full, node)
                        d.clean = False
                    d.complete = False
                    continue
                d.pending += 1
                yield _Dir(full, node, prev, d, self._listing(subtree), subtree, below)
            elif prev is None or not _same_node(prev, node):
                self._capture(full, node)
                d.clean = False
        d.listed = True
        self._finish(d)

    def _finish(self, d: _Dir | None) -> None:
        """A directory whose subdirectories are all done: captured (fresh metadata) if
        anything at or below it changed; else left to the parent snapshot whole, and
        its summary (files and blob ordinals below it) handed on."""
        while d is not None and d.listed and not d.pending:
            up = d.parent
            if up is None:
                return  # the root: always assembled
            prev = d.prev
            unchanged_below = d.clean and prev is not None and prev.type == "dir" \
                and prev.subtree is not None
            # counted as restic counts: by what lies below (its own metadata aside)
            if unchanged_below:
                self.report.dirs_unmodified += 1
            elif prev is None or prev.type != "dir":
                self.report.dirs_new += 1
            else:
                self.report.dirs_changed += 1
            if not unchanged_below:
                self._hand_over(d)
            if unchanged_below and d.complete and self.summaries is not None:
                assert prev is not None and prev.subtree is not None
                bitmap = BitMap.union(self.summaries.blob_ordinals([prev.subtree, *d.blobs]),
                                      *d.parts)
                self.summaries.subtree(prev.subtree, d.files, bitmap)
                up.files += d.files
                up.parts.append(bitmap)
            else:
                up.complete = False
            if not (unchanged_below and prev is not None and d.node is not None
                    and _same_node(prev, d.node)):
                assert d.node is not None
                self._capture(d.path, d.node)  # new metadata (its subtree may be the parent's)
                up.clean = False
            up.pending -= 1
            d = up

    def _hand_over(self, d: _Dir) -> None:
        """A directory the commit rebuilds: its parent listing, if decoded here (tree
        nodes, not cached entries), goes to the commit (:meth:`Summaries.listing`) and
        leaves the scan; its parent tree is not in the next snapshot."""
        if d.tree is not None:
            if self.listings is not None:
                self.listings.replaced(d.tree)
            nodes = [n for n in d.old.values() if isinstance(n, Node)] if d.old else []
            if self.summaries is not None and d.old is not None and len(nodes) == len(d.old):
                self.summaries.listing(d.tree, nodes)
        d.old = None

    def _capture(self, path: bytes, node: Node) -> None:
        self.sink(FileManifest(snapshot_id=self.snapshot_id, path=path,
                               node=meta_from_node(node), blobs=()))

    def _unchanged(self, d: _Dir, prev: Prev) -> None:
        """A regular file as its parent node records it: not captured, the node kept."""
        self.report.files_unmodified += 1
        self.report.bytes_unmodified += prev.size
        d.files += 1
        if prev.content:
            d.blobs.extend(prev.content)  # one bitmap per directory, when it is done

    def _file(self, d: _Dir, path: bytes, node: Node, prev: Prev | None) -> None:
        report = self.report
        d.clean = False
        previous = None
        if prev is not None and prev.type == "file" and prev.content is not None:
            previous = PreviousVersion(prev.size, prev.mtime, tuple(prev.content),
                                       prev.device_id, prev.inode)
        report.files_to_read += 1
        report.bytes_to_read += node.size
        self.sink(ReadFile(self.snapshot_id, path, meta_from_node(node), previous))

    def _error(self, path: bytes, exc: OSError | CoreStateError) -> None:
        msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.report.errors.append((path, msg))
