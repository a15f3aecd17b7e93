"""restic's ``--include`` patterns, matched against snapshot paths.

Terms:

- *include pattern*: a restic filter pattern. It is split at ``/`` and its components
  are matched (``fnmatch``) against consecutive components of a snapshot path: an
  absolute pattern from the root, a relative one anywhere (``*.txt`` matches base
  names). A pattern that matches a directory selects everything below it; ``**``
  matches any number of components. A directory is restored if it is selected or if
  anything below it is.
- *snapshot path*: a node's absolute path inside the snapshot, as bytes (see
  :mod:`corestate.repository.walk`).
"""

from __future__ import annotations

import fnmatch
import os


class IncludeFilter:
    """restic's ``--include`` semantics over snapshot paths.

    >>> f = IncludeFilter(['/home/u/docs/*.txt', 'keep'])
    >>> f.matches(b'/home/u/docs/a.txt'), f.matches(b'/home/u/docs/a.md')
    (True, False)
    >>> f.matches(b'/srv/keep/deep/file'), f.may_match_below(b'/home'), f.may_match_below(b'/srv')
    (True, True, True)
    >>> IncludeFilter(['/home/u/*.txt']).may_match_below(b'/etc')
    False
    """

    def __init__(self, patterns: list[str]) -> None:
        self._patterns: list[tuple[bool, list[bytes]]] = []
        for raw in patterns:
            pat = os.fsencode(raw)
            if pat:
                self._patterns.append((pat.startswith(b"/"), _components(pat)))

    def matches(self, path: bytes) -> bool:
        """Whether ``path`` (or a directory above it) is selected by a pattern."""
        parts = _components(path)
        for absolute, pat in self._patterns:
            starts = [0] if absolute else range(max(len(parts), 1))
            if any(_match_prefix(pat, parts[i:]) for i in starts):
                return True
        return False

    def may_match_below(self, dir_path: bytes) -> bool:
        """Whether something below directory ``dir_path`` may match a pattern."""
        parts = _components(dir_path)
        return any(not absolute or _may_lead(pat, parts) for absolute, pat in self._patterns)


def _components(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p]


def _match_prefix(pat: list[bytes], parts: list[bytes]) -> bool:
    """Whether ``pat`` matches the first components of ``parts`` (the rest is free)."""
    if not pat:
        return True
    if pat[0] == b"**":
        return any(_match_prefix(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and _match_prefix(pat[1:], parts[1:])


def _may_lead(pat: list[bytes], parts: list[bytes]) -> bool:
    """Whether a path below the directory ``parts`` could match the absolute ``pat``."""
    for i, comp in enumerate(pat):
        if comp == b"**" or i >= len(parts):
            return True
        if not fnmatch.fnmatchcase(parts[i], comp):
            return False
    return True
