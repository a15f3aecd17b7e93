"""Walking a snapshot's trees: every node with its path inside the snapshot.

A *snapshot path* is a node's absolute path inside the snapshot, as raw bytes: the names
of the directories from the root tree down to the node, joined by ``/`` and starting with
``/`` (restic nests the full backed-up path, so ``/home/u/notes.txt`` in the snapshot is
``/home/u/notes.txt`` on the machine it came from). Names are bytes because file names
need not be UTF-8.

The walk is depth-first in *tree order*: a directory comes right before its children,
and siblings come in the order stored in the tree (sorted by name bytewise), the order
``restic ls`` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from corestate.errors import IntegrityError, NotFoundError
from corestate.repository.repository import Repository
from corestate.repository.tree import Node


_T = TypeVar("_T")

OnError = Callable[[bytes, IntegrityError | NotFoundError], None]
"""``on_error(path, error)``: told of what a walk had to skip (see :func:`walk`)."""


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent.endswith(b"/") else parent + b"/" + name


def walk(repo: Repository, tree_id: bytes, prefix: bytes = b"/",
         descend: Callable[[bytes, Node], bool] | None = None,
         on_error: OnError | None = None,
         ) -> Iterator[tuple[bytes, Node]]:
    """Yield ``(snapshot path, node)`` for every node below ``tree_id``, depth first.

    ``prefix`` is the snapshot path of the tree itself. ``descend(path, node)``, when
    given, decides whether a directory's children are walked (the directory itself is
    always yielded). A subtree that cannot be loaded, and a *damaged* node (one whose
    stored JSON cannot be read in full, see :attr:`~.tree.Node.damage`), raise
    IntegrityError, unless ``on_error`` is given: then it is called with the path and
    an error whose message says what was lost, and the walk goes on with the next
    sibling (a damaged node is neither yielded nor descended into).
    """
    # An explicit stack of iterators: snapshots can nest deeper than Python's recursion
    # limit, and a generator per level would cost a frame per level on every yield.
    stack: list[tuple[bytes, Iterator[Node]]] = [
        (prefix, iter(repo.load_tree(tree_id, damaged=True)))]
    while stack:
        parent, nodes = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        path = _join(parent, node.name)
        if node.damage:
            error = IntegrityError(f"damaged entry skipped: {node.damage}")
            if on_error is None:
                raise IntegrityError(f"{path.decode('utf-8', 'backslashreplace')}: "
                                     f"{error.message}")
            on_error(path, error)
            continue
        yield path, node
        if node.type != "dir" or node.subtree is None:
            continue
        if descend is not None and not descend(path, node):
            continue
        try:
            children = repo.load_tree(node.subtree, damaged=True)
        except (IntegrityError, NotFoundError) as exc:
            if on_error is None:
                raise
            on_error(path, IntegrityError(f"directory contents lost: {exc.message}"))
            continue
        stack.append((path, iter(children)))


def find_node(repo: Repository, tree_id: bytes, path: bytes) -> Node | None:
    """The node at snapshot path ``path`` below ``tree_id``, or None if there is none.

    Empty components and a trailing ``/`` are ignored; the root itself (``/``) has no
    node, so it gives None.
    """
    parts = [p for p in path.split(b"/") if p]
    node: Node | None = None
    current: bytes | None = tree_id
    for part in parts:
        if current is None:
            return None
        node = next((n for n in repo.load_tree(current) if n.name == part), None)
        if node is None:
            return None
        current = node.subtree if node.type == "dir" else None
    return node


def fold(tree_id: bytes, load_tree: Callable[[bytes], list[Node]], memo: dict[bytes, _T],
         combine: Callable[[bytes, list[Node], Mapping[bytes, _T]], _T]) -> _T:
    """A value computed for a stored tree from its nodes and the values of its subtrees,
    bottom up: ``combine(tree_id, nodes, memo)`` runs once per tree, after every
    subtree's value is in ``memo`` (read ``memo[node.subtree]`` there). ``memo`` keeps
    the value of every tree folded, so shared and unchanged subtrees are loaded once;
    the walk uses no recursion (trees may nest thousands deep).

    >>> trees = {b"r": [Node(name=b"d", type="dir", subtree=b"s"), Node(name=b"f", type="file")],
    ...          b"s": [Node(name=b"g", type="file")]}
    >>> fold(b"r", trees.__getitem__, {}, lambda _id, nodes, memo: sum(
    ...     1 if n.type == "file" else memo[n.subtree] for n in nodes))
    2
    """
    if tree_id in memo:
        return memo[tree_id]
    loaded: dict[bytes, list[Node]] = {}
    stack = [tree_id]
    while stack:
        tid = stack[-1]
        if tid in memo:
            stack.pop()
            continue
        nodes = loaded.get(tid)
        if nodes is None:
            nodes = loaded[tid] = load_tree(tid)
            todo = [n.subtree for n in nodes if n.type == "dir" and n.subtree is not None
                    and n.subtree not in memo]
            if todo:
                stack.extend(todo)
                continue
        stack.pop()
        del loaded[tid]
        memo[tid] = combine(tid, nodes, memo)
    return memo[tree_id]
