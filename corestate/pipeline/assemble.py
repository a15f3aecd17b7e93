"""Assembling a snapshot's trees from its file manifests (distributed mode).

Terms:

- a *manifest* is one captured entry of a snapshot: its absolute path, its metadata
  (:class:`~corestate.schemas.events.NodeMeta`) and, for a regular file, the ordered blob
  ids of its content (:class:`~corestate.schemas.events.FileManifest`);
- *assembly* turns the manifests of one snapshot into restic trees, bottom-up
  (post-order): a directory's tree blob is built once every entry below it has its
  node, and its id completes the directory's node in its parent. Absolute paths nest
  from the root (``/home/u/docs`` is ``home`` -> ``u`` -> ``docs``), as restic's
  snapshots do; a directory on the way that has no manifest of its own gets a plain
  node (mode 0755), as it would not exist otherwise.

>>> from corestate.schemas.events import NodeMeta
>>> d = NodeMeta(type="dir", mode=0o755 | (1 << 31), mtime=0, atime=0, ctime=0, uid=0, gid=0)
>>> f = NodeMeta(type="file", mode=0o644, mtime=0, atime=0, ctime=0, uid=0, gid=0, size=5)
>>> stored = {}
>>> def store(tree_id, blob): stored[tree_id] = blob
>>> root = assemble({b"/srv": d, b"/srv/a": f}, {b"/srv/a": (b"\\x01" * 32,)}, store)
>>> len(stored), root in stored
(2, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from corestate.repository.tree import Node, encode_tree
from corestate.schemas.events import NodeMeta, Xattr

_DIR_MODE = (1 << 31) | 0o755  # Go's os.ModeDir | rwxr-xr-x


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


def _split(path: bytes) -> tuple[bytes, bytes]:
    parent, _, name = path.rstrip(b"/").rpartition(b"/")
    return parent or b"/", name


def assemble(entries: Mapping[bytes, NodeMeta], contents: Mapping[bytes, tuple[bytes, ...]],
             store_tree: Callable[[bytes, bytes], None]) -> bytes:
    """Build every tree of a snapshot in post-order; returns the root tree id.

    ``entries`` maps absolute paths to metadata, ``contents`` regular files' paths to
    their blob ids. ``store_tree(tree_id, blob)`` is called once per distinct tree."""
    children: dict[bytes, set[bytes]] = {b"/": set()}
    # Every directory on the way to an entry exists, with or without a manifest.
    for path in sorted(entries, key=len):
        if path in (b"", b"/"):
            continue
        child = path.rstrip(b"/")
        while True:
            parent, _ = _split(child)
            kids = children.setdefault(parent, set())
            if child in kids:
                break
            kids.add(child)
            if parent == b"/":
                break
            child = parent
    for path, meta in entries.items():
        if meta.type == "dir":
            children.setdefault(path.rstrip(b"/") or b"/", set())
    seen: set[bytes] = set()
    subtree: dict[bytes, bytes] = {}
    # Deepest directories first: each one's children are complete before it.
    for directory in sorted(children, key=lambda p: (-p.count(b"/"), p)):
        if directory == b"/":
            continue
        subtree[directory] = _tree(directory, children, entries, contents, subtree, seen,
                                   store_tree)
    return _tree(b"/", children, entries, contents, subtree, seen, store_tree)


def _tree(directory: bytes, children: Mapping[bytes, set[bytes]],
          entries: Mapping[bytes, NodeMeta], contents: Mapping[bytes, tuple[bytes, ...]],
          subtree: Mapping[bytes, bytes], seen: set[bytes],
          store_tree: Callable[[bytes, bytes], None]) -> bytes:
    nodes = []
    for child in children.get(directory, ()):
        name = _split(child)[1]
        meta = entries.get(child)
        if child in subtree:
            node = node_from_meta(name, meta) if meta is not None and meta.type == "dir" \
                else Node(name=name, type="dir", mode=_DIR_MODE)
            node.size = 0
            node.subtree = subtree[child]
        elif meta is None:
            continue
        else:
            node = node_from_meta(name, meta)
            if meta.type == "file":
                node.content = list(contents.get(child, ()))
        nodes.append(node)
    blob = encode_tree(nodes)
    tree_id = hashlib.sha256(blob).digest()
    if tree_id not in seen:
        seen.add(tree_id)
        store_tree(tree_id, blob)
    return tree_id
