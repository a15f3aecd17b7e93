"""The fanotify watcher against the real kernel, and the behaviour it shares with the
inotify watcher (the ``make`` fixture runs those tests against both).

We run as root, and SERVICES.md says fanotify works on our machines: if it does not,
these tests fail with the reason instead of skipping."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corestate.errors import PermanentError
from corestate.kernel.fanotify import FanotifyWatcher, open_watcher
from corestate.kernel.watch import ChangeBatch, Watcher

AnyWatcher = FanotifyWatcher | Watcher
Make = Callable[..., AnyWatcher]


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


def gather(w: AnyWatcher, until: Callable[[Seen], bool], timeout: float = 5.0) -> Seen:
    seen = Seen()
    deadline = time.monotonic() + timeout
    while not until(seen) and time.monotonic() < deadline:
        batch = w.poll(max(0.0, deadline - time.monotonic()))
        if batch is not None:
            seen.add(batch)
    return seen


def drain(w: AnyWatcher) -> Seen:
    seen = Seen()
    while (batch := w.poll(0.2)) is not None:
        seen.add(batch)
    return seen


def b(path: Path) -> bytes:
    return os.fsencode(path)


def fanotify_watcher(roots: list[bytes], excluded: Callable[[bytes], bool] = lambda p: False
                     ) -> FanotifyWatcher:
    try:
        return FanotifyWatcher(roots, excluded)
    except PermanentError as exc:
        pytest.fail(f"fanotify must work here (root, Linux >= 5.9): {exc}")


@pytest.fixture(params=["fanotify", "inotify"])
def make(request: pytest.FixtureRequest) -> Make:
    """Builds the watcher under test; failures to build happen inside the test."""
    if request.param == "fanotify":
        return fanotify_watcher
    return Watcher


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    (top / "a" / "sub").mkdir(parents=True)
    (top / "b").mkdir()
    return top


# -- the behaviour both watchers share ---------------------------------------------------


def test_create_modify_close_write_delete_mark_parent_dirs(root: Path, make: Make) -> None:
    with make([b(root)]) as w:
        nested = root / "a" / "sub" / "f"
        nested.write_bytes(b"one")
        seen = gather(w, lambda s: "close_write" in s.kinds.get(b(nested), set()))
        assert seen.dirty == {b(root / "a" / "sub")}
        assert {"create", "modify", "close_write"} <= seen.kinds[b(nested)]

        (root / "b" / "g").write_bytes(b"x")
        drain(w)
        os.chmod(root / "b" / "g", 0o600)
        os.chmod(root / "a", 0o700)
        nested.unlink()
        seen = gather(w, lambda s: {b(nested), b(root / "b" / "g"), b(root / "a")} <= s.paths)
        assert seen.dirty == {b(root / "a" / "sub"), b(root / "b"), b(root)}
        assert seen.kinds[b(nested)] == {"delete"}
        assert seen.kinds[b(root / "b" / "g")] == {"attrib"}
        assert seen.kinds[b(root / "a")] == {"attrib"}
        assert w.unwatched == frozenset()


def test_new_dir_filled_at_once_is_dirty(root: Path, make: Make) -> None:
    with make([b(root)]) as w:
        new = root / "new"
        new.mkdir()
        (new / "f1").write_bytes(b"1")
        (new / "deep").mkdir()
        (new / "deep" / "f2").write_bytes(b"2")
        (new / "empty").mkdir()  # dirty although nothing happens inside it
        seen = gather(w, lambda s: b(new / "empty") in s.dirty)
        assert seen.dirty == {b(root), b(new), b(new / "deep"), b(new / "empty")}
        drain(w)
        (new / "deep" / "f3").write_bytes(b"3")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(new / "deep")}
        assert b(new / "deep" / "f3") in seen.paths


def test_rename_within_tree_reports_both_parents_and_new_paths(root: Path, make: Make) -> None:
    with make([b(root)]) as w:
        (root / "a" / "sub" / "before").write_bytes(b"x")  # the old path is now known
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(root / "a" / "sub")}
        drain(w)
        os.rename(root / "a", root / "b" / "renamed")
        seen = gather(w, lambda s: b(root / "b" / "renamed") in s.paths)
        assert {b(root), b(root / "b"), b(root / "b" / "renamed"),
                b(root / "b" / "renamed" / "sub")} <= seen.dirty
        assert "move_from" in seen.kinds[b(root / "a")]
        assert "move_to" in seen.kinds[b(root / "b" / "renamed")]
        drain(w)
        (root / "b" / "renamed" / "sub" / "after").write_bytes(b"x")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(root / "b" / "renamed" / "sub")}
        assert seen.paths == {b(root / "b" / "renamed" / "sub" / "after")}


def test_events_outside_the_roots_are_not_reported(root: Path, tmp_path: Path,
                                                  make: Make) -> None:
    outside = tmp_path / "outside"  # same filesystem as the root
    outside.mkdir()
    with make([b(root)]) as w:
        (outside / "f").write_bytes(b"not ours")
        (outside / "d").mkdir()
        (outside / "d" / "g").write_bytes(b"not ours")
        assert w.poll(0.5) is None, "only writes outside the root happened"
        (outside / "f").write_bytes(b"again")
        (root / "b" / "marker").write_bytes(b"m")
        seen = gather(w, lambda s: b(root / "b" / "marker") in s.paths)
        assert seen.dirty == {b(root / "b")}
        assert seen.paths == {b(root / "b" / "marker")}


def test_excluded_dirs_are_not_reported(root: Path, make: Make) -> None:
    (root / "cache" / "inner").mkdir(parents=True)
    with make([b(root)], lambda p: os.path.basename(p) == b"cache") as w:
        (root / "cache" / "inner" / "f").write_bytes(b"x")
        (root / "b" / "cache").mkdir()
        (root / "b" / "cache" / "f").write_bytes(b"x")
        (root / "a" / "marker").write_bytes(b"m")
        seen = gather(w, lambda s: b(root / "a" / "marker") in s.paths)
        seen.dirty |= drain(w).dirty
        assert b(root / "b") in seen.dirty  # the excluded entry itself is a child of b
        assert not any(b"cache" in d for d in seen.dirty), seen.dirty


def test_burst_of_writes_coalesces_into_one_batch(root: Path, make: Make) -> None:
    target = root / "a" / "busy"
    target.write_bytes(b"")
    with make([b(root)]) as w:

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
        first = w.poll(5.0)
        thread.join()
        assert first is not None
        assert first.dirty_dirs == {b(root / "a")}
        assert first.paths == {b(target)}
        assert w.poll(0.3) is None, "the burst was split over several batches"


def test_deleted_root_is_reported(tmp_path: Path, make: Make) -> None:
    top = tmp_path / "tree"
    top.mkdir()
    with make([b(top)]) as w:
        top.rmdir()
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(top)}
        assert "delete_self" in seen.kinds[b(top)]


def test_fileno_and_close(root: Path, make: Make) -> None:
    w = make([b(root)])
    w.start()
    assert w.fileno() >= 0
    assert b(root) in w.watched_dirs
    w.close()
    w.close()
    with pytest.raises(ValueError):
        w.fileno()
    with pytest.raises(ValueError):
        w.poll(0)


# -- fanotify only -----------------------------------------------------------------------


def test_roots_on_two_filesystems_get_a_mark_each(root: Path) -> None:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(root).st_dev:
        pytest.skip("no second filesystem (/dev/shm) next to the test directory")
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        with fanotify_watcher([b(root), b(other)]) as w:
            (other / "f").write_bytes(b"x")
            (root / "b" / "g").write_bytes(b"x")
            seen = gather(w, lambda s: {b(other), b(root / "b")} <= s.dirty)
            assert seen.dirty == {b(other), b(root / "b")}
    finally:
        shutil.rmtree(other)


def test_symlinked_root_reports_paths_as_given(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    with fanotify_watcher([b(link)]) as w:
        (root / "a" / "f").write_bytes(b"x")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(link / "a")}
        assert seen.paths == {b(link / "a" / "f")}


def test_queue_overflow_is_reported_then_paths_still_right(root: Path) -> None:
    with fanotify_watcher([b(root)]) as w:
        (root / "a" / "sub" / "f").write_bytes(b"x")
        assert gather(w, lambda s: bool(s.dirty)).dirty == {b(root / "a" / "sub")}
        many = root / "many"
        many.mkdir()
        for i in range(17_000):  # the queue holds 16384 events; distinct names do not merge
            os.close(os.open(many / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        os.rename(root / "a", root / "z")  # lost: the queue is full
        seen = gather(w, lambda s: s.overflow)
        assert seen.overflow
        drain(w)
        (root / "z" / "sub" / "f").write_bytes(b"y")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(root / "z" / "sub")}


def test_open_watcher_prefers_fanotify_and_can_be_forced_to_inotify(
        root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corestate.kernel.fanotify")
    with open_watcher([b(root)]) as w:
        assert isinstance(w, FanotifyWatcher), caplog.text
    with open_watcher([b(root)], prefer_fanotify=False) as w:
        assert isinstance(w, Watcher)
    assert not caplog.records


def test_open_watcher_falls_back_when_the_filesystem_cannot_be_marked(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corestate.kernel.fanotify")
    with pytest.raises(PermanentError, match="/proc/sys"):
        FanotifyWatcher([b"/proc/sys"])  # procfs has no file handles
    w = open_watcher([b"/proc/sys"])
    try:
        assert isinstance(w, Watcher)
    finally:
        w.close()
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "inotify" in record.getMessage() and "/proc/sys" in record.getMessage()


def test_poll_waits_through_foreign_events_until_ours(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with fanotify_watcher([b(root)]) as w:
        stop = threading.Event()

        def noise() -> None:
            while not stop.wait(0.01):
                (outside / "n").write_bytes(b"n")

        thread = threading.Thread(target=noise)
        thread.start()
        try:
            time.sleep(0.1)
            written: list[float] = []

            def ours() -> None:
                (root / "b" / "late").write_bytes(b"x")
                written.append(time.monotonic())

            timer = threading.Timer(0.3, ours)
            timer.start()
            batch = w.poll(3.0)
            returned = time.monotonic()
            timer.join()
        finally:
            stop.set()
            thread.join()
        assert batch is not None and batch.paths == {b(root / "b" / "late")}
        # quiet means no event of ours for COALESCE_QUIET; foreign ones must not keep the
        # batch open until COALESCE_MAX (0.5 s)
        assert returned - written[0] < 0.4, "foreign events kept the batch open"
