"""The watcher contract (``corestate/kernel/watch/watcher.py``), held against both
implementations on the real kernel: every test taking ``make`` runs once with inotify
and once with fanotify. Test names carry the number of the contract rule they check.
What only one implementation does is in test_inotify.py and test_fanotify.py."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from corestate.errors import PermanentError
from corestate.kernel.watch import COALESCE_MAX, open_watcher
from corestate.kernel.watch.fanotify import FanotifyWatcher
from corestate.kernel.watch.inotify import InotifyWatcher
from tests.kernel.watching import KINDS, Make, b, drain, gather, make_watcher

QUEUE_LIMITS = ("/proc/sys/fs/inotify/max_queued_events", "/proc/sys/fs/fanotify/max_queued_events")


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest) -> Make:
    """Builds the watcher under test; a failure to build happens inside the test."""
    return functools.partial(make_watcher, request.param)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    (top / "a" / "sub").mkdir(parents=True)
    (top / "b").mkdir()
    return top


# -- 1: changes to entries dirty their parent ----------------------------------------------


def test_1_create_write_attrib_delete_dirty_the_parent(root: Path, make: Make) -> None:
    with make([b(root)]) as w:
        nested = root / "a" / "sub" / "f"
        nested.write_bytes(b"one")
        seen = gather(w, lambda s: "close_write" in s.kinds.get(b(nested), set()))
        assert seen.dirty == {b(root / "a" / "sub")}
        assert seen.paths == {b(nested)}
        assert {"create", "modify", "close_write"} <= seen.kinds[b(nested)]

        (root / "b" / "g").write_bytes(b"x")
        drain(w)
        os.chmod(root / "b" / "g", 0o600)
        os.chmod(root / "a", 0o700)  # a directory: its entry in the parent changed
        nested.unlink()
        seen = gather(w, lambda s: {b(nested), b(root / "b" / "g"), b(root / "a")} <= s.paths)
        assert seen.dirty == {b(root / "a" / "sub"), b(root / "b"), b(root)}
        assert seen.kinds[b(nested)] == {"delete"}
        assert seen.kinds[b(root / "b" / "g")] == {"attrib"}
        assert seen.kinds[b(root / "a")] == {"attrib"}
        assert w.unwatched == frozenset()

        drain(w)
        os.chmod(root, 0o700)  # a root's attributes: the root itself
        seen = gather(w, lambda s: b(root) in s.paths)
        assert seen.dirty == {b(root)}
        assert seen.kinds[b(root)] == {"attrib"}


def test_1_truncate_and_hardlink(root: Path, make: Make) -> None:
    target = root / "a" / "f"
    target.write_bytes(b"data")
    with make([b(root)]) as w:
        os.truncate(target, 0)
        os.link(target, root / "b" / "link")
        seen = gather(w, lambda s: b(root / "b" / "link") in s.paths)
        assert seen.dirty == {b(root / "a"), b(root / "b")}
        assert "modify" in seen.kinds[b(target)]
        assert "create" in seen.kinds[b(root / "b" / "link")]


# -- 2, 3: moves ---------------------------------------------------------------------------


def test_2_rename_within_dirties_both_parents_and_the_moved_subtree(root: Path,
                                                                     make: Make) -> None:
    with make([b(root)]) as w:
        (root / "a" / "sub" / "before").write_bytes(b"x")  # the old path is now known
        assert gather(w, lambda s: bool(s.dirty)).dirty == {b(root / "a" / "sub")}
        drain(w)
        os.rename(root / "a", root / "b" / "renamed")
        seen = gather(w, lambda s: b(root / "b" / "renamed" / "sub") in s.dirty)
        assert seen.dirty == {b(root), b(root / "b"), b(root / "b" / "renamed"),
                              b(root / "b" / "renamed" / "sub")}
        assert seen.kinds[b(root / "a")] == {"move_from"}
        assert seen.kinds[b(root / "b" / "renamed")] == {"move_to"}
        drain(w)
        (root / "b" / "renamed" / "sub" / "after").write_bytes(b"x")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(root / "b" / "renamed" / "sub")}
        assert seen.paths == {b(root / "b" / "renamed" / "sub" / "after")}


def test_3_move_out_then_in_again(root: Path, tmp_path: Path, make: Make) -> None:
    outside = tmp_path / "outside"
    with make([b(root)]) as w:
        os.rename(root / "a", outside)
        seen = gather(w, lambda s: b(root / "a") in s.paths)
        assert seen.dirty == {b(root)}
        assert seen.kinds[b(root / "a")] == {"move_from"}
        drain(w)

        (outside / "sub" / "f").write_bytes(b"not ours")
        (outside / "deep").mkdir()
        (root / "b" / "marker").write_bytes(b"m")
        seen = gather(w, lambda s: b(root / "b" / "marker") in s.paths)
        assert seen.dirty == {b(root / "b")}, "changes under the old path must not be reported"
        assert seen.paths == {b(root / "b" / "marker")}
        drain(w)

        os.rename(outside, root / "back")
        seen = gather(w, lambda s: {b(root / "back" / "sub"), b(root / "back" / "deep")} <= s.dirty)
        assert seen.dirty == {b(root), b(root / "back"), b(root / "back" / "sub"),
                              b(root / "back" / "deep")}
        assert seen.kinds[b(root / "back")] == {"move_to"}
        drain(w)
        (root / "back" / "sub" / "g").write_bytes(b"x")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(root / "back" / "sub")}


# -- 4: new directories --------------------------------------------------------------------


def test_4_new_dir_filled_at_once_is_dirty(root: Path, make: Make) -> None:
    with make([b(root)]) as w:
        new = root / "new"
        new.mkdir()
        (new / "f1").write_bytes(b"1")
        (new / "deep").mkdir()
        (new / "deep" / "f2").write_bytes(b"2")
        (new / "empty").mkdir()  # dirty although nothing happens inside it
        seen = gather(w, lambda s: {b(new / "empty"), b(new / "deep")} <= s.dirty)
        assert seen.dirty == {b(root), b(new), b(new / "deep"), b(new / "empty")}
        drain(w)
        (new / "deep" / "f3").write_bytes(b"3")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(new / "deep")}
        assert seen.paths == {b(new / "deep" / "f3")}


# -- 5: roots ------------------------------------------------------------------------------


def test_5_deleted_root_is_reported(tmp_path: Path, make: Make) -> None:
    top = tmp_path / "tree"
    top.mkdir()
    with make([b(top)]) as w:
        top.rmdir()
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(top)}
        assert seen.kinds[b(top)] == {"delete_self"}


def test_5_moved_root_is_reported_and_not_followed(tmp_path: Path, make: Make) -> None:
    top = tmp_path / "tree"
    (top / "d").mkdir(parents=True)
    with make([b(top)]) as w:
        os.rename(top, tmp_path / "away")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(top)}
        assert seen.kinds[b(top)] == {"move_self"}
        drain(w)
        (tmp_path / "away" / "d" / "f").write_bytes(b"x")
        assert w.poll(0.5) is None, "a root moved away is not watched at its new path"


# -- 6: outside the roots, excluded directories ---------------------------------------------


def test_6_events_outside_the_roots_are_not_reported(root: Path, tmp_path: Path,
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


def test_6_excluded_dirs_are_not_reported(root: Path, make: Make) -> None:
    (root / "cache" / "inner").mkdir(parents=True)
    (root / "d" / "sub").mkdir(parents=True)
    with make([b(root)], lambda p: os.path.basename(p) == b"cache") as w:
        (root / "cache" / "inner" / "f").write_bytes(b"x")
        (root / "b" / "cache").mkdir()
        (root / "b" / "cache" / "f").write_bytes(b"x")
        (root / "a" / "marker").write_bytes(b"m")
        seen = gather(w, lambda s: b(root / "a" / "marker") in s.paths)
        seen.dirty |= drain(w).dirty
        assert b(root / "b") in seen.dirty  # the excluded entry itself is a child of b
        assert not any(b"cache" in d for d in seen.dirty), seen.dirty

        shutil.rmtree(root / "b" / "cache")
        os.rename(root / "a", root / "b" / "cache")  # renamed to an excluded name
        os.rename(root / "d", root / "cache" / "d")  # moved into an excluded directory
        drain(w)
        (root / "b" / "cache" / "sub" / "f").write_bytes(b"x")
        (root / "cache" / "d" / "sub" / "f").write_bytes(b"x")
        (root / "b" / "marker").write_bytes(b"m")
        seen = gather(w, lambda s: b(root / "b" / "marker") in s.paths)
        assert seen.dirty == {b(root / "b")}, seen.dirty


# -- 7: overflow ---------------------------------------------------------------------------


def test_7_overflow_is_reported_then_batches_are_right_again(root: Path, make: Make) -> None:
    limit = max(int(Path(p).read_text()) for p in QUEUE_LIMITS)
    many = root / "many"
    many.mkdir()
    with make([b(root)]) as w:
        (root / "a" / "sub" / "f").write_bytes(b"x")  # the path of a/sub is now known
        assert gather(w, lambda s: bool(s.dirty)).dirty == {b(root / "a" / "sub")}
        for i in range(limit + 1000):  # distinct names: no two events merge
            os.close(os.open(many / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        os.rename(root / "a", root / "z")  # lost: the queue is full
        (root / "late" / "deep").mkdir(parents=True)  # lost too
        seen = gather(w, lambda s: s.overflow, timeout=30.0)
        assert seen.overflow
        drain(w)
        (root / "z" / "sub" / "f").write_bytes(b"y")
        (root / "late" / "deep" / "g").write_bytes(b"y")
        seen = gather(w, lambda s: {b(root / "z" / "sub"), b(root / "late" / "deep")} <= s.dirty)
        assert seen.dirty == {b(root / "z" / "sub"), b(root / "late" / "deep")}
        assert not seen.overflow


# -- 8: polling and coalescing -------------------------------------------------------------


def test_8_a_burst_of_writes_is_one_batch(root: Path, make: Make) -> None:
    target = root / "a" / "busy"
    target.write_bytes(b"")
    with make([b(root)]) as w:

        def writer() -> None:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND)
            try:
                for i in range(1000):
                    os.write(fd, b"x")
                    if i % 100 == 99:
                        time.sleep(0.01)  # gaps well inside the quiet time
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


def test_8_coalescing_stops_at_the_callers_limit(root: Path, make: Make) -> None:
    target = root / "a" / "busy"
    target.write_bytes(b"")
    stop = threading.Event()

    def writer() -> None:
        with open(target, "ab", buffering=0) as f:
            while not stop.wait(0.005):  # never quiet for COALESCE_QUIET
                f.write(b"x")

    with make([b(root)]) as w:
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            batches = []
            began = time.monotonic()
            while time.monotonic() - began < 3.0:
                batch = w.poll(1.0, coalesce=0.1)
                if batch is not None:
                    batches.append(batch)
        finally:
            stop.set()
            thread.join()
    # 3 s of writing never quiet: capped at 0.1 s that is about 30 batches; capped at
    # COALESCE_MAX (coalesce ignored) at most 7 (loaded machines: be generous)
    assert len(batches) >= 10, len(batches)
    assert all(batch.paths == {b(target)} for batch in batches)


def test_8_poll_waits_through_foreign_events_until_ours(root: Path, tmp_path: Path,
                                                       make: Make) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with make([b(root)]) as w:
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
        # batch open until COALESCE_MAX
        assert returned - written[0] < COALESCE_MAX * 0.8, "foreign events kept the batch open"


def test_8_poll_returns_none_when_nothing_happened(root: Path, make: Make) -> None:
    with make([b(root)]) as w:
        began = time.monotonic()
        assert w.poll(0.3) is None
        assert time.monotonic() - began >= 0.29
        assert w.poll(0) is None


# -- lifecycle -----------------------------------------------------------------------------


def test_lifecycle_start_once_close_twice(root: Path, make: Make) -> None:
    w = make([b(root)])
    w.start()
    w.start()  # does nothing
    (root / "b" / "f").write_bytes(b"x")
    seen = gather(w, lambda s: bool(s.dirty))
    assert seen.dirty == {b(root / "b")}
    w.close()
    w.close()
    for call in (lambda: w.poll(0), w.start):
        with pytest.raises(ValueError):
            call()


def test_a_missing_root_is_not_watched(root: Path, tmp_path: Path, make: Make) -> None:
    with make([b(tmp_path / "missing"), b(root)]) as w:
        (tmp_path / "missing").mkdir()
        (tmp_path / "missing" / "f").write_bytes(b"x")
        (root / "b" / "f").write_bytes(b"x")
        seen = gather(w, lambda s: bool(s.dirty))
        seen.dirty |= drain(w).dirty
        assert seen.dirty == {b(root / "b")}


# -- choosing the implementation -------------------------------------------------------------


def test_open_watcher_prefers_fanotify_and_can_be_told_not_to(
        root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corestate.kernel.watch")
    with open_watcher([b(root)]) as w:
        assert type(w) is FanotifyWatcher, caplog.text
    with open_watcher([b(root)], prefer_fanotify=False) as w:
        assert type(w) is InotifyWatcher
    assert not caplog.records


def test_open_watcher_falls_back_when_the_filesystem_cannot_be_marked(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="corestate.kernel.watch")
    with pytest.raises(PermanentError, match="/proc/sys"):
        FanotifyWatcher([b"/proc/sys"])  # procfs has no file handles
    with open_watcher([b"/proc/sys"]) as w:
        assert type(w) is InotifyWatcher
        assert b"/proc/sys/kernel" in w.watched_dirs
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "inotify" in record.getMessage() and "/proc/sys" in record.getMessage()


CHOOSE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from corestate.kernel.watch import open_watcher
with open_watcher([sys.argv[1].encode()]) as w:
    print(type(w).__name__)
"""


@pytest.mark.parametrize("capability, reason", [
    ("sys_admin", "It needs CAP_SYS_ADMIN"),  # marks: the usual case for a normal user
    ("dac_read_search", "open_by_handle_at needs CAP_DAC_READ_SEARCH"),  # handles
])
def test_open_watcher_falls_back_without_a_capability(root: Path, capability: str,
                                                      reason: str) -> None:
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=60,
                            check=True)
    assert run([sys.executable, "-c", CHOOSE, str(root)]).stdout == "FanotifyWatcher\n"
    proc = run(["setpriv", f"--bounding-set=-{capability}", sys.executable, "-c", CHOOSE,
                str(root)])
    assert proc.stdout == "InotifyWatcher\n"
    assert reason in proc.stderr and "watching with inotify" in proc.stderr, proc.stderr
