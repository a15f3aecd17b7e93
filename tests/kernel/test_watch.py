"""The inotify watcher against the real kernel, in a temporary directory."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corestate.kernel.watch import ChangeBatch, Watcher, fanotify_available

QUEUE_LIMIT = "/proc/sys/fs/inotify/max_queued_events"


@dataclass
class Seen:
    """Batches merged until a condition held."""

    dirty: set[bytes] = field(default_factory=set)
    paths: set[bytes] = field(default_factory=set)
    kinds: dict[bytes, set[str]] = field(default_factory=dict)
    overflow: bool = False
    unwatched: frozenset[bytes] = frozenset()
    batches: int = 0

    def add(self, batch: ChangeBatch) -> None:
        self.dirty |= batch.dirty_dirs
        self.paths |= batch.paths
        for path, kinds in batch.kinds.items():
            self.kinds.setdefault(path, set()).update(kinds)
        self.overflow |= batch.overflow
        self.unwatched = batch.unwatched
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


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    (top / "a" / "sub").mkdir(parents=True)
    (top / "b").mkdir()
    return top


@pytest.fixture
def watcher(root: Path) -> Iterator[Watcher]:
    with Watcher([b(root)]) as w:
        yield w


def test_create_modify_close_write_delete_mark_parent_dirs(root: Path, watcher: Watcher) -> None:
    nested = root / "a" / "sub" / "f"
    nested.write_bytes(b"one")
    seen = gather(watcher, lambda s: "close_write" in s.kinds.get(b(nested), set()))
    assert seen.dirty == {b(root / "a" / "sub")}
    assert {"create", "modify", "close_write"} <= seen.kinds[b(nested)]

    (root / "b" / "g").write_bytes(b"x")
    drain(watcher)
    os.chmod(root / "b" / "g", 0o600)
    nested.unlink()
    seen = gather(watcher, lambda s: b(nested) in s.paths and b(root / "b" / "g") in s.paths)
    assert seen.dirty == {b(root / "a" / "sub"), b(root / "b")}
    assert seen.kinds[b(nested)] == {"delete"}
    assert seen.kinds[b(root / "b" / "g")] == {"attrib"}


def test_truncate_and_hardlink(root: Path, watcher: Watcher) -> None:
    target = root / "a" / "f"
    target.write_bytes(b"data")
    drain(watcher)
    os.truncate(target, 0)
    os.link(target, root / "b" / "link")
    seen = gather(watcher, lambda s: b(root / "b" / "link") in s.paths)
    assert "modify" in seen.kinds[b(target)]
    assert "create" in seen.kinds[b(root / "b" / "link")]
    assert {b(root / "a"), b(root / "b")} <= seen.dirty


def test_new_dir_filled_at_once_is_dirty_and_watched(root: Path, watcher: Watcher) -> None:
    new = root / "new"
    new.mkdir()
    (new / "f1").write_bytes(b"1")
    (new / "deep").mkdir()
    (new / "deep" / "f2").write_bytes(b"2")
    seen = gather(watcher, lambda s: b(new / "deep") in s.dirty)
    assert {b(root), b(new), b(new / "deep")} <= seen.dirty
    drain(watcher)
    (new / "deep" / "f3").write_bytes(b"3")
    seen = gather(watcher, lambda s: bool(s.dirty))
    assert seen.dirty == {b(new / "deep")}
    assert b(new / "deep" / "f3") in seen.paths


def test_rename_within_tree_reports_new_paths(root: Path, watcher: Watcher) -> None:
    os.rename(root / "a", root / "b" / "renamed")
    seen = gather(watcher, lambda s: b(root / "b" / "renamed") in s.paths)
    assert {b(root), b(root / "b"), b(root / "b" / "renamed")} <= seen.dirty
    assert "move_from" in seen.kinds[b(root / "a")]
    assert "move_to" in seen.kinds[b(root / "b" / "renamed")]
    drain(watcher)
    (root / "b" / "renamed" / "sub" / "f").write_bytes(b"x")
    seen = gather(watcher, lambda s: bool(s.dirty))
    assert seen.dirty == {b(root / "b" / "renamed" / "sub")}
    assert b(root / "a" / "sub") not in watcher.watched_dirs


def test_move_out_of_tree_and_back(root: Path, tmp_path: Path, watcher: Watcher) -> None:
    outside = tmp_path / "outside"
    os.rename(root / "a", outside)
    seen = gather(watcher, lambda s: b(root / "a") in s.paths)
    assert b(root) in seen.dirty
    assert not any(p.startswith(b(root / "a")) for p in watcher.watched_dirs)

    (outside / "sub" / "f").write_bytes(b"not ours")
    (root / "b" / "marker").write_bytes(b"m")
    seen = gather(watcher, lambda s: b(root / "b" / "marker") in s.paths)
    assert seen.dirty == {b(root / "b")}, "writes outside the tree must not be reported"

    drain(watcher)
    os.rename(outside, root / "back")
    seen = gather(watcher, lambda s: b(root / "back" / "sub") in s.dirty)
    assert {b(root), b(root / "back"), b(root / "back" / "sub")} <= seen.dirty
    drain(watcher)
    (root / "back" / "sub" / "g").write_bytes(b"x")
    seen = gather(watcher, lambda s: bool(s.dirty))
    assert seen.dirty == {b(root / "back" / "sub")}


def test_deleted_dir_drops_watches_and_can_come_back(root: Path, watcher: Watcher) -> None:
    (root / "a" / "sub" / "f").write_bytes(b"x")
    drain(watcher)
    shutil.rmtree(root / "a")
    seen = gather(watcher, lambda s: b(root / "a") in s.paths)
    assert b(root) in seen.dirty
    assert "delete" in seen.kinds[b(root / "a")]
    drain(watcher)
    assert watcher.watched_dirs == {b(root), b(root / "b")}

    (root / "a" / "sub").mkdir(parents=True)
    drain(watcher)
    (root / "a" / "sub" / "g").write_bytes(b"y")
    seen = gather(watcher, lambda s: bool(s.dirty))
    assert seen.dirty == {b(root / "a" / "sub")}


def test_burst_of_writes_coalesces_into_one_batch(root: Path, watcher: Watcher) -> None:
    target = root / "a" / "busy"
    target.write_bytes(b"")
    drain(watcher)

    def writer() -> None:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(1000):
                os.write(fd, b"x")
                if i % 100 == 99:
                    time.sleep(0.01)  # gaps well inside the coalescing window
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer)
    thread.start()
    first = watcher.poll(5.0)
    thread.join()
    assert first is not None
    assert first.dirty_dirs == {b(root / "a")}
    assert first.paths == {b(target)}
    assert watcher.poll(0.3) is None, "the burst was split over several batches"


def test_watch_limit_reports_unwatched_and_warns_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    top = tmp_path / "tree"
    dirs = [top] + [top / f"d{i}" for i in range(9)]
    for d in dirs:
        d.mkdir()
    caplog.set_level(logging.WARNING, logger="corestate.kernel.watch")
    with Watcher([b(top)], max_watches=3) as w:
        assert len(w.watched_dirs) == 3
        assert w.unwatched == {b(d) for d in dirs} - w.watched_dirs
        (top / "late").mkdir()
        seen = gather(w, lambda s: b(top / "late") in s.paths)
        assert seen.unwatched == {b(d) for d in dirs + [top / "late"]} - w.watched_dirs
        assert len(seen.unwatched) == 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "/proc/sys/fs/inotify/max_user_watches" in warnings[0].getMessage()


def test_unwatched_dir_deleted_is_no_longer_reported(tmp_path: Path) -> None:
    top = tmp_path / "tree"
    (top / "x").mkdir(parents=True)
    (top / "y").mkdir()
    with Watcher([b(top)], max_watches=1) as w:
        assert w.unwatched == {b(top / "x"), b(top / "y")}
        (top / "x").rmdir()
        seen = gather(w, lambda s: b(top / "x") in s.paths)
        assert seen.unwatched == {b(top / "y")}


def test_rename_moves_unwatched_dirs_too(tmp_path: Path) -> None:
    top = tmp_path / "tree"
    (top / "a" / "x").mkdir(parents=True)
    (top / "a" / "y").mkdir()
    with Watcher([b(top)], max_watches=3) as w:
        assert len(w.unwatched) == 1
        (name,) = w.unwatched
        os.rename(top / "a", top / "z")
        seen = gather(w, lambda s: b(top / "z") in s.paths)
        assert seen.unwatched == {b(top / "z") + name[len(b(top / "a")):]}
        assert w.watched_dirs == {b(top), b(top / "z"), b(top / "z") + b"/" + (
            b"y" if name.endswith(b"/x") else b"x")}


def test_deleted_root_is_reported(tmp_path: Path) -> None:
    top = tmp_path / "tree"
    top.mkdir()
    with Watcher([b(top)]) as w:
        top.rmdir()
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(top)}
        assert "delete_self" in seen.kinds[b(top)]
        drain(w)
        assert w.watched_dirs == frozenset()


def test_excluded_dirs_are_not_watched(root: Path) -> None:
    (root / "cache" / "inner").mkdir(parents=True)
    with Watcher([b(root)], excluded=lambda p: os.path.basename(p) == b"cache") as w:
        assert not any(b"cache" in p for p in w.watched_dirs)
        (root / "cache" / "inner" / "f").write_bytes(b"x")
        (root / "b" / "cache").mkdir()
        (root / "b" / "cache" / "f").write_bytes(b"x")
        (root / "a" / "marker").write_bytes(b"m")
        seen = gather(w, lambda s: b(root / "a" / "marker") in s.paths)
        seen.dirty |= drain(w).dirty
        assert b(root / "b") in seen.dirty  # the excluded entry itself is a child of b
        assert b(root / "cache" / "inner") not in seen.dirty
        assert b(root / "b" / "cache") not in seen.dirty
        assert not any(b"cache" in p for p in w.watched_dirs)


def test_overflow_is_reported_and_watches_resynced(root: Path) -> None:
    try:
        with open(QUEUE_LIMIT) as f:
            saved = f.read().strip()
        with open(QUEUE_LIMIT, "w") as f:
            f.write("64")
    except OSError:
        pytest.skip(f"cannot lower {QUEUE_LIMIT} (needs root)")
    try:
        w = Watcher([b(root)])  # the queue size is fixed when the instance is created
    finally:
        with open(QUEUE_LIMIT, "w") as f:
            f.write(saved)
    with w:
        for i in range(200):
            (root / "b" / f"f{i}").write_bytes(b"x")
        (root / "late" / "deep").mkdir(parents=True)  # created after the queue filled
        seen = gather(w, lambda s: s.overflow)
        assert seen.overflow
        drain(w)
        assert b(root / "late" / "deep") in w.watched_dirs
        (root / "late" / "deep" / "f").write_bytes(b"x")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(root / "late" / "deep")}


def test_fileno_and_close(root: Path) -> None:
    w = Watcher([b(root)])
    w.start()
    assert w.fileno() >= 0
    w.close()
    w.close()
    with pytest.raises(ValueError):
        w.fileno()


def test_fanotify_probe_returns_bool() -> None:
    assert isinstance(fanotify_available(), bool)
