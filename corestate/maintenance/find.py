"""Find: nodes whose name or path matches a glob, across snapshots.

A *pattern* is a shell glob (``*``, ``?``, ``[...]``) matched against bytes:

- without ``/`` it is matched against the node's base name;
- with ``/`` it is matched against the path, one component per component: an absolute
  pattern from the root, a relative one against the last components (as restic's
  filter does: ``docs/*.txt`` matches ``/home/u/docs/a.txt``); a ``**`` component
  matches any number of components.

>>> m = compile_pattern("*.txt")
>>> m(b"/home/u/notes.txt"), m(b"/home/u/notes.txt.bak")
(True, False)
>>> compile_pattern("u/*.txt")(b"/home/u/notes.txt"), compile_pattern("/u/*.txt")(b"/home/u/notes.txt")
(True, False)
>>> compile_pattern("/home/**/*.txt")(b"/home/u/a/b/notes.txt")
True
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from corestate.maintenance.listing import json_path_fields
from corestate.repository.repository import Repository
from corestate.repository.snapshot import Snapshot
from corestate.repository.timefmt import format_time
from corestate.repository.tree import Node
from corestate.repository.walk import OnError, walk

Matcher = Callable[[bytes], bool]


def _components_match(pattern: tuple[bytes, ...], parts: tuple[bytes, ...]) -> bool:
    @functools.lru_cache(maxsize=None)
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(parts)
        if pattern[i] == b"**":
            return any(match(i + 1, k) for k in range(j, len(parts) + 1))
        return j < len(parts) and fnmatch.fnmatchcase(parts[j], pattern[i]) and match(i + 1, j + 1)

    return match(0, 0)


def compile_pattern(pattern: str, ignore_case: bool = False) -> Matcher:
    """A predicate on snapshot paths for one pattern (see the module doc)."""
    raw = pattern.encode("utf-8", "surrogateescape")
    if ignore_case:
        raw = raw.lower()
    fold: Callable[[bytes], bytes] = bytes.lower if ignore_case else (lambda b: b)
    if b"/" not in raw:
        return lambda path: fnmatch.fnmatchcase(fold(path.rsplit(b"/", 1)[-1]), raw)
    parts = tuple(p for p in raw.split(b"/") if p)
    anchored = raw.startswith(b"/")

    def matcher(path: bytes) -> bool:
        names = tuple(p for p in fold(path).split(b"/") if p)
        if anchored:
            return _components_match(parts, names)
        return any(_components_match(parts, names[k:]) for k in range(len(names)))

    return matcher


@dataclass
class Match:
    snapshot: Snapshot
    path: bytes
    node: Node

    def to_json(self) -> dict[str, object]:
        return {"snapshot": self.snapshot.id, **json_path_fields(self.path),
                "type": self.node.type, "size": self.node.size,
                "mtime": format_time(self.node.mtime), "mode": self.node.mode,
                "uid": self.node.uid, "gid": self.node.gid}


def find(repo: Repository, patterns: Iterable[str], snaps: Iterable[Snapshot],
         ignore_case: bool = False, on_error: OnError | None = None) -> Iterator[Match]:
    """Every node of ``snaps`` (in order) matching any of ``patterns``; damaged entries
    go to ``on_error`` as in :func:`~corestate.repository.walk.walk`."""
    matchers = [compile_pattern(p, ignore_case) for p in patterns]
    repo.load_index()
    for snap in snaps:
        for path, node in walk(repo, snap.tree, on_error=on_error):
            if any(m(path) for m in matchers):
                yield Match(snap, path, node)
