"""What the watcher tests share: building either watcher, and reading batches until a
condition holds.

We run as root on Linux >= 5.9, so fanotify must work: where it cannot be set up,
:func:`make_watcher` fails the test with the reason instead of skipping it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corestate.errors import PermanentError
from corestate.kernel.watch import ChangeBatch, Watcher
from corestate.kernel.watch.fanotify import FanotifyWatcher
from corestate.kernel.watch.inotify import InotifyWatcher

KINDS = ("inotify", "fanotify")
Make = Callable[..., Watcher]


def make_watcher(kind: str, roots: list[bytes],
                 excluded: Callable[[bytes], bool] = lambda p: False) -> Watcher:
    if kind == "inotify":
        return InotifyWatcher(roots, excluded)
    try:
        return FanotifyWatcher(roots, excluded)
    except PermanentError as exc:
        pytest.fail(f"fanotify must work here (root, Linux >= 5.9): {exc}")


@dataclass
class Seen:
    """Batches merged until a condition held."""

    dirty: set[bytes] = field(default_factory=set)
    paths: set[bytes] = field(default_factory=set)
    kinds: dict[bytes, set[str]] = field(default_factory=dict)
    overflow: bool = False
    batches: int = 0

    def add(self, batch: ChangeBatch) -> None:
        self.dirty |= batch.dirty_dirs
        self.paths |= batch.paths
        for path, kinds in batch.kinds.items():
            self.kinds.setdefault(path, set()).update(kinds)
        self.overflow |= batch.overflow
        self.batches += 1


def gather(w: Watcher, until: Callable[[Seen], bool], timeout: float = 5.0) -> Seen:
    seen = Seen()
    deadline = time.monotonic() + timeout
    while not until(seen) and time.monotonic() < deadline:
        batch = w.poll(max(0.0, deadline - time.monotonic()))
        if batch is not None:
            seen.add(batch)
    return seen


def drain(w: Watcher) -> Seen:
    """Everything still queued (for example events from setting up the tree)."""
    seen = Seen()
    while (batch := w.poll(0.2)) is not None:
        seen.add(batch)
    return seen


def b(path: Path) -> bytes:
    return os.fsencode(path)
