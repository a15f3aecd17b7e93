"""The listing cache: the parent snapshot's trees, kept on this host as a scan reads them.

A *listing* is one tree's entries as :class:`Entry` records: the fields of a tree node
that a scan compares with the disk (type, mode, size, times, owner, inode, device,
links, link target, xattrs) and the node's content blob ids and subtree, but not the
JSON it was stored as. A scan of an unchanged directory needs no more than that, and
reading a listing from the cache costs a fraction of loading and decoding the tree
(decoding the parent's trees was 44% of an unchanged re-backup's main process).

The cache of one snapshot lineage (host and paths) is one file in this host's state
directory for the repository, keyed by tree id, so an entry can never be stale: a tree
id names its content. A backup reads the file before its scan and writes it after its
commit with the listings of the new snapshot's trees (those the scan used and those the
commit built); a directory the commit rebuilds is still assembled from the stored tree
(its nodes keep their stored JSON), so the cache only saves reading what did not change.

The file is ``CSL2 || Python's marshal version || encrypt(marshal of the listings)``,
encrypted and authenticated with the repository's master key like a repository file
(it holds file names and metadata). Anything wrong with it (absent, damaged, another
key, another Python) only means an empty cache: the scan loads the trees instead.
"""

from __future__ import annotations

import hashlib
import logging
import marshal
import os
from collections.abc import Iterable
from typing import NamedTuple

from corestate.errors import CoreStateError
from corestate.repository.crypto import Key
from corestate.repository.tree import Node

log = logging.getLogger(__name__)

_MAGIC = b"CSL2" + bytes([marshal.version])


class Entry(NamedTuple):
    """One entry of a cached listing: the :class:`~corestate.repository.tree.Node`
    fields of the same names, without atime and the stored JSON."""

    name: bytes
    type: str
    mode: int
    mtime: int
    ctime: int
    uid: int
    gid: int
    user: str
    group: str
    inode: int
    device_id: int
    links: int
    linktarget: bytes
    device: int
    size: int
    xattrs: list[tuple[str, bytes]]
    content: list[bytes] | None
    subtree: bytes | None


def entry_of(n: Node) -> Entry:
    return Entry(n.name, n.type, n.mode, n.mtime, n.ctime, n.uid, n.gid, n.user, n.group,
                 n.inode, n.device_id, n.links, n.linktarget, n.device, n.size,
                 list(n.xattrs), None if n.content is None else list(n.content), n.subtree)


def _rows(nodes: Iterable[Node]) -> bytes:
    return marshal.dumps(tuple(tuple(entry_of(n)) for n in nodes))


def cache_file(directory: str, host: str, paths: Iterable[str]) -> str:
    """The cache file of the snapshots of ``host`` and ``paths`` in ``directory``."""
    lineage = "\0".join([host, *paths]).encode("utf-8", "surrogateescape")
    return os.path.join(directory, hashlib.sha256(lineage).hexdigest()[:32])


class ListingCache:
    """Listings by tree id (see the module doc). ``path`` None: kept in memory only.

    :meth:`get` and :meth:`add` record which trees this run used; :meth:`replaced`
    names a parent tree the commit rebuilds (it is not in the next snapshot). What
    :meth:`save` keeps is the next snapshot's trees: after a scan that listed every
    directory, the trees used and added and not replaced; after a partial scan (only
    the dirty directories), every tree it had, less the replaced ones, plus the added.

    With ``keep_nodes`` (a cache carried from run to run in one process: protect), the
    trees the last two runs added stay as the nodes they were built as, and :meth:`get`
    returns those: the next scan hands them to the commit, which rebuilds a directory
    that changed again from them, decoding nothing (at 1000 changes/s nearly every
    directory is dirty, but not in every run). After a partial scan the nodes it built
    keep the JSON they were stored as, so a directory rebuilt again re-encodes only its
    changed entries (not after a full scan: a catch-up builds every tree, and their JSON
    would double the memory of an idle protect). A tree becomes a row listing when two
    runs pass without adding it again; the file holds rows only."""

    def __init__(self, key: Key, path: str | None = None, keep_nodes: bool = False) -> None:
        self.key = key
        self.path = path
        self.keep_nodes = keep_nodes
        # tree id -> its entries as rows (tuples), marshalled (a listing takes Python
        # objects only while a scan reads it); or, with keep_nodes, the nodes in hand
        self._listings: dict[bytes, bytes | list[Node]] = {}
        self._used: set[bytes] = set()
        self._added: set[bytes] = set()
        self._added_before: set[bytes] = set()  # by the run before (keep_nodes)
        self._replaced: set[bytes] = set()
        self.loaded = False
        self.changed = False  # not as loaded: save() writes it

    @classmethod
    def load(cls, key: Key, path: str, keep_nodes: bool = False) -> ListingCache:
        """The cache stored at ``path``; empty if there is none or it cannot be used."""
        cache = cls(key, path, keep_nodes)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return cache
        except OSError as exc:
            log.info("listing cache %s not read (%s): the trees are loaded instead", path, exc)
            return cache
        try:
            if not data.startswith(_MAGIC):
                raise ValueError("not a listing cache of this Python")
            plain = key.decrypt(memoryview(data)[len(_MAGIC):], path)
            del data
            listings = marshal.loads(plain)
            del plain
            if type(listings) is not dict:
                raise ValueError("not a listing cache")
        except (CoreStateError, ValueError, EOFError, TypeError) as exc:
            log.info("listing cache %s ignored (%s): the trees are loaded instead", path, exc)
            return cache
        cache._listings = listings
        cache.loaded = True
        return cache

    def __len__(self) -> int:
        return len(self._listings)

    def get(self, tree_id: bytes) -> list[Entry] | list[Node] | None:
        """The listing of ``tree_id`` if cached: entries, or the nodes in hand."""
        found = self._listings.get(tree_id)
        if found is None:
            return None
        if isinstance(found, list):
            listing: list[Entry] | list[Node] = found
        else:
            try:
                listing = list(map(Entry._make, marshal.loads(found)))
            except (ValueError, TypeError, EOFError):  # not a listing: load the tree instead
                del self._listings[tree_id]
                return None
        self._used.add(tree_id)
        return listing

    def add(self, tree_id: bytes, nodes: Iterable[Node]) -> None:
        """The listing of a tree this run loaded or built."""
        if self.keep_nodes:
            self._listings[tree_id] = list(nodes)
            self.changed = True
        else:
            rows = _rows(nodes)
            if self._listings.get(tree_id) != rows:
                self._listings[tree_id] = rows
                self.changed = True
        self._used.add(tree_id)
        self._added.add(tree_id)
        self._replaced.discard(tree_id)  # rebuilt as it was

    def replaced(self, tree_id: bytes) -> None:
        self._replaced.add(tree_id)

    def forget_run(self, full_scan: bool) -> None:
        """End a run: keep the next snapshot's trees (see the class doc)."""
        keep = self._used if full_scan else self._listings.keys()
        kept: dict[bytes, bytes | list[Node]] = {}
        for t in keep:
            found = self._listings.get(t)
            if found is None or t in self._replaced:
                continue
            recent = t in self._added or t in self._added_before
            kept[t] = _rows(found) if isinstance(found, list) and not recent else found
            if isinstance(found, list) and t in self._added and not full_scan:
                for n in found:  # built by the commit: its JSON as its tree stored it
                    if n.stored_json is None:
                        n.stored_json = n.to_json()
        self.changed = self.changed or len(kept) != len(self._listings)
        self._listings = kept
        self._added_before = self._added
        self._used, self._added, self._replaced = set(), set(), set()

    def save(self) -> None:
        """Write the cache file atomically, if it changed since it was loaded or saved.
        A failure is logged, never raised: the backup it follows is committed, and the
        next one loads its trees instead."""
        if self.path is None or not self.changed:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            rows = {t: _rows(found) if isinstance(found, list) else found
                    for t, found in self._listings.items()}  # the nodes in hand stay
            data = self.key.encrypt(marshal.dumps(rows))
            del rows
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "wb") as f:
                f.write(_MAGIC)
                f.write(data)
            os.replace(tmp, self.path)
            self.changed = False
        except OSError as exc:
            log.warning("listing cache %s not written (%s); the next backup loads the "
                        "parent's trees instead", self.path, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
