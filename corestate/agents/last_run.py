"""What ``corestate agent --once`` remembers of its last run, so that the next one sends
only what changed.

Terms:

- a *signature* is what ``lstat`` says of an entry that a change would alter: type and
  mode, size, modification and status-change times, inode;
- the *last run* (:class:`LastRun`) is the id of the run an agent published last for its
  paths and excludes, with the signature of every entry below the paths as the run's
  walk saw them, kept in the agent's state directory;
- the *changes* since the last run are the entries whose signature differs, the new
  ones and the gone ones (:func:`changes_since`); with the restic id of the snapshot the
  workers committed for the last run (read off the snapshots topic), they make the next
  run incremental (:func:`corestate.agents.agent.plan`). A last run that was never
  committed (a worker rejected it, or it is still on its way) makes the next run full:
  nothing is lost, it is sent again.

>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> with open(os.path.join(root, "a"), "w") as f: _ = f.write("x")
>>> before = walk([root], lambda p: False)
>>> with open(os.path.join(root, "b"), "w") as f: _ = f.write("y")
>>> os.remove(os.path.join(root, "a"))
>>> named = changes_since(before, walk([root], lambda p: False))
>>> sorted(os.path.basename(p) for p in named if p != os.fsencode(root))
[b'a', b'b']
"""

from __future__ import annotations

import hashlib
import marshal
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from corestate.kernel.atomic import write_atomic

Signature = tuple[int, int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def walk(paths: Iterable[str], excluded: Callable[[bytes], bool]) -> dict[bytes, Signature]:
    """The signature of every entry below ``paths`` (the paths themselves included),
    without following symlinks or descending into excluded entries."""
    found: dict[bytes, Signature] = {}
    stack = [os.fsencode(os.path.abspath(p)) for p in paths]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except OSError:
            continue
        found[path] = signature(st)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            with os.scandir(path) as it:
                stack.extend(e.path for e in it if not excluded(e.path))
        except OSError:
            continue
    return found


def changes_since(before: dict[bytes, Signature], now: dict[bytes, Signature]) -> set[bytes]:
    """The entries new, changed or gone between two walks."""
    changed = {p for p, sig in now.items() if before.get(p) != sig}
    return changed | (before.keys() - now.keys())


@dataclass
class LastRun:
    """The run an agent published last for ``key`` (its paths and excludes)."""

    key: str
    snapshot_id: str
    entries: dict[bytes, Signature]


def run_key(paths: Iterable[str], excludes: Iterable[str]) -> str:
    """Which last run applies: the same paths and excludes."""
    text = "\0".join(sorted(os.path.abspath(p) for p in paths)) + "\0\0" + "\0".join(sorted(excludes))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def load(directory: str, key: str) -> LastRun | None:
    """The last run for ``key``, if one was saved and can be read."""
    try:
        with open(os.path.join(directory, f"last-run-{key}.bin"), "rb") as f:
            saved_key, snapshot_id, entries = marshal.load(f)  # data only: no code runs
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if saved_key != key or not isinstance(snapshot_id, str) or not isinstance(entries, dict):
        return None
    return LastRun(key, snapshot_id, entries)


def save(directory: str, last: LastRun) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    write_atomic(os.path.join(directory, f"last-run-{last.key}.bin"),
                 marshal.dumps((last.key, last.snapshot_id, last.entries)))
