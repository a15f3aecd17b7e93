"""Assembling a snapshot's trees from its file manifests (the committer's work).

Terms:

- a *manifest* is one captured entry of a snapshot: its absolute path, its metadata
  (:class:`~corestate.schemas.events.NodeMeta`) and, for a regular file, the ordered blob
  ids of its content (:class:`~corestate.schemas.events.FileManifest`);
- *assembly* turns the manifests of one snapshot into restic trees, bottom-up
  (post-order): a directory's tree blob is built once every entry below it has its
  node, and its id completes the directory's node in its parent. Absolute paths nest
  from the root (``/home/u/docs`` is ``home`` -> ``u`` -> ``docs``), as restic's
  snapshots do; a directory on the way that has no manifest of its own gets a plain
  node (mode 0755), as it would not exist otherwise;
- a *full* run captures every entry: each directory holds exactly the entries captured
  below it;
- an *incremental* run builds on a *parent* snapshot (:class:`Parent`) and captures
  only what changed, with the directories on the way to it. A directory holds the
  parent's entries, minus the *removed* ones (gone: deleted, or renamed away), a
  captured entry replacing the parent's of the same name or adding to them; a
  *rescanned* directory instead holds exactly the entries captured in it (its listing
  is complete). A captured directory with nothing captured below it keeps the parent's
  subtree (empty if the parent has none); a directory of the parent that nothing
  touched is taken whole, by its subtree id, and its node as it was stored (so an
  unchanged part of the tree yields byte-identical tree blobs). Only the parent's trees
  on the way to a touched directory are loaded.

>>> from corestate.schemas.events import NodeMeta
>>> d = NodeMeta(type="dir", mode=0o755 | (1 << 31), mtime=0, atime=0, ctime=0, uid=0, gid=0)
>>> f = NodeMeta(type="file", mode=0o644, mtime=0, atime=0, ctime=0, uid=0, gid=0, size=5)
>>> stored = {}
>>> def store(tree_id, blob, nodes): stored[tree_id] = blob
>>> full = assemble({b"/srv": d, b"/srv/a": f, b"/srv/b": f},
...                 {b"/srv/a": (b"\\x01" * 32,), b"/srv/b": (b"\\x02" * 32,)}, store)
>>> len(stored), full.root in stored, full.files
(2, True, 2)

An incremental run in which ``b`` was deleted and ``c`` created:

>>> from corestate.repository.tree import decode_tree
>>> def load(tree_id): return decode_tree(stored[tree_id])
>>> parent = Parent(full.root, load, lambda t: count_files(t, load, {}), removed={b"/srv/b"})
>>> inc = assemble({b"/srv": d, b"/srv/c": f}, {b"/srv/c": (b"\\x03" * 32,)}, store, parent)
>>> inc.files, inc.root == assemble({b"/srv": d, b"/srv/a": f, b"/srv/c": f},
...     {b"/srv/a": (b"\\x01" * 32,), b"/srv/c": (b"\\x03" * 32,)}, store).root
(2, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace

from corestate.repository.tree import Node, encode_tree
from corestate.repository.walk import fold
from corestate.schemas.events import NodeMeta, Xattr

_DIR_MODE = (1 << 31) | 0o755  # Go's os.ModeDir | rwxr-xr-x

LoadTree = Callable[[bytes], list[Node]]


def meta_from_node(node: Node) -> NodeMeta:
    """The event form of a node's metadata (without content or subtree)."""
    return NodeMeta(type=node.type, mode=node.mode, mtime=node.mtime, atime=node.atime,
                    ctime=node.ctime, uid=node.uid, gid=node.gid, user=node.user,
                    group=node.group, inode=node.inode, device_id=node.device_id,
                    size=node.size, links=node.links, linktarget=node.linktarget,
                    device=node.device,
                    xattrs=tuple(Xattr(name=n, value=v) for n, v in node.xattrs))


def node_from_meta(name: bytes, meta: NodeMeta) -> Node:
    """A tree node named ``name`` with the metadata of ``meta``."""
    return Node(name=name, type=meta.type, mode=meta.mode, mtime=meta.mtime, atime=meta.atime,
                ctime=meta.ctime, uid=meta.uid, gid=meta.gid, user=meta.user, group=meta.group,
                inode=meta.inode, device_id=meta.device_id, size=meta.size, links=meta.links,
                linktarget=meta.linktarget, device=meta.device,
                xattrs=[(x.name, x.value) for x in meta.xattrs])


@dataclass(frozen=True)
class Parent:
    """The snapshot an incremental run builds on: its root ``tree``, how to load one of
    its trees, how many regular files lie below one of its trees (``files_below``, e.g.
    :func:`count_files` with a cache); and from the run, the directories it
    ``rescanned`` and the paths it ``removed`` (absolute)."""

    tree: bytes
    load_tree: LoadTree
    files_below: Callable[[bytes], int]
    rescanned: Collection[bytes] = ()
    removed: Collection[bytes] = ()


@dataclass(frozen=True)
class Assembly:
    """The result: the ``root`` tree id, the number of regular ``files`` in the
    snapshot, and ``counts``, the files below each tree that was built (by tree id)."""

    root: bytes
    files: int
    counts: dict[bytes, int] = field(default_factory=dict)


def count_files(tree_id: bytes, load_tree: LoadTree, memo: dict[bytes, int]) -> int:
    """Regular files below a stored tree; ``memo`` caches the count of every tree
    walked (:func:`~corestate.repository.walk.fold`)."""
    return fold(tree_id, load_tree, memo, _files_in)


def _files_in(_tree_id: bytes, nodes: list[Node], memo: Mapping[bytes, int]) -> int:
    return sum(1 if n.type == "file" else memo[n.subtree]
               if n.type == "dir" and n.subtree is not None else 0 for n in nodes)


def _split(path: bytes) -> tuple[bytes, bytes]:
    parent, _, name = path.rstrip(b"/").rpartition(b"/")
    return parent or b"/", name


def _depth(path: bytes) -> int:
    return 0 if path == b"/" else path.count(b"/")


def _normal(path: bytes) -> bytes:
    return path.rstrip(b"/") or b"/"


class _ParentListings:
    """The parent's entries of a directory, by name; loaded on first use, memoized."""

    def __init__(self, parent: Parent | None) -> None:
        self.parent = parent
        self._memo: dict[bytes, dict[bytes, Node]] = {}

    def __call__(self, directory: bytes) -> dict[bytes, Node]:
        if self.parent is None:
            return {}
        if directory in self._memo:
            return self._memo[directory]
        # walk down from the deepest memoized ancestor (no recursion: paths may be deep)
        chain = [directory]
        while chain[-1] != b"/" and _split(chain[-1])[0] not in self._memo:
            chain.append(_split(chain[-1])[0])
        for path in reversed(chain):
            if path == b"/":
                listing = {n.name: n for n in self.parent.load_tree(self.parent.tree)}
            else:
                up, name = _split(path)
                node = self._memo[up].get(name)
                listing = {} if node is None or node.type != "dir" or node.subtree is None \
                    else {n.name: n for n in self.parent.load_tree(node.subtree)}
            self._memo[path] = listing
        return self._memo[directory]


def assemble(entries: Mapping[bytes, NodeMeta], contents: Mapping[bytes, tuple[bytes, ...]],
             store_tree: Callable[[bytes, bytes, list[Node]], None],
             parent: Parent | None = None) -> Assembly:
    """Build every new tree of a snapshot in post-order (see the module docstring).

    ``entries`` maps absolute paths to metadata, ``contents`` regular files' paths to
    their blob ids. Without ``parent`` the run is full; with one, incremental.
    ``store_tree(tree_id, blob, nodes)`` is called once per distinct tree built, children
    before their parents."""
    # The captured children of every directory on the way to a captured entry.
    kids: dict[bytes, set[bytes]] = {b"/": set()}
    for path in entries:
        if path in (b"", b"/"):
            continue
        child = _normal(path)
        while True:
            up, _ = _split(child)
            siblings = kids.setdefault(up, set())
            if child in siblings:
                break
            siblings.add(child)
            if up == b"/":
                break
            child = up
    touched = set(kids)
    gone: dict[bytes, set[bytes]] = {}  # directory -> names of its removed entries
    if parent is None:
        touched.update(_normal(p) for p, m in entries.items() if m.type == "dir")
        listed = touched
    else:
        listed = {_normal(d) for d in parent.rescanned}
        for path in parent.removed:
            up, name = _split(_normal(path))
            gone.setdefault(up, set()).add(name)
        for d in listed | set(gone):  # and the directories on the way to them
            while d not in touched:
                touched.add(d)
                d = _split(d)[0]
    old = _ParentListings(parent)

    # Top-down: which touched directories are in the new snapshot, and with which entries.
    names: dict[bytes, dict[bytes, bytes]] = {}
    live = {b"/"}
    for directory in sorted(touched, key=lambda p: (_depth(p), p)):
        if directory not in live:
            continue  # renamed away or deleted: in no listing
        captured = {_split(c)[1]: c for c in kids.get(directory, ())}
        if directory in listed:
            mine = captured
        else:
            prefix = directory.rstrip(b"/") + b"/"
            away = gone.get(directory, set())
            mine = {n: prefix + n for n in old(directory) if n not in away} | captured
        names[directory] = mine
        # a captured entry that is no directory is what the path is now, whatever lies
        # below it in the run or in the parent
        live.update(c for c in mine.values() if c in touched
                    and (c not in entries or entries[c].type == "dir"))

    # Bottom-up: deepest directories first, so each one's children are complete.
    seen: set[bytes] = set()
    subtree: dict[bytes, bytes] = {}
    counts: dict[bytes, int] = {}

    def store(nodes: list[Node]) -> bytes:
        blob = encode_tree(nodes)
        tree_id = hashlib.sha256(blob).digest()
        if tree_id not in seen:
            seen.add(tree_id)
            store_tree(tree_id, blob, nodes)
        return tree_id

    for directory in sorted(names, key=lambda p: (-_depth(p), p)):
        nodes: list[Node] = []
        files = 0
        for name, child in names[directory].items():
            meta = entries.get(child)
            # the parent's node of this name; loaded only where it can matter
            was = old(directory).get(name) if parent is not None and (
                directory not in listed or (meta is None and child in subtree)
                or (meta is not None and meta.type == "dir" and child not in subtree)) else None
            if child in subtree:
                if meta is not None and meta.type == "dir":
                    node = node_from_meta(name, meta)
                elif meta is None and was is not None and was.type == "dir":
                    node = replace(was, stored_json=None)
                else:
                    node = Node(name=name, type="dir", mode=_DIR_MODE)
                node.size, node.content, node.subtree = 0, None, subtree[child]
                files += counts[subtree[child]]
            elif meta is not None:
                node = node_from_meta(name, meta)
                if meta.type == "file":
                    node.content = list(contents.get(child, ()))
                    files += 1
                elif meta.type == "dir":  # captured, its listing not: the parent's subtree
                    assert parent is not None  # a full run lists every captured directory
                    if was is not None and was.type == "dir" and was.subtree is not None:
                        node.subtree = was.subtree
                        files += parent.files_below(was.subtree)
                    else:
                        node.subtree = store([])
                        counts[node.subtree] = 0
                    node.size = 0
            elif was is not None:  # untouched: the parent's node as it was stored
                node = was
                if was.type == "file":
                    files += 1
                elif was.type == "dir" and was.subtree is not None:
                    assert parent is not None
                    files += parent.files_below(was.subtree)
            else:
                continue
            nodes.append(node)
        tree_id = store(nodes)
        subtree[directory] = tree_id
        counts[tree_id] = files
    root = subtree[b"/"]
    return Assembly(root, counts[root], counts)
