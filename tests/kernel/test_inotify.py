"""What only the inotify watcher does: a watch per directory, kept in step with the
tree, and a watch limit. The behaviour it shares with fanotify is in test_watch.py."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from corestate.kernel.watch.inotify import InotifyWatcher
from tests.kernel.watching import b, drain, gather


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    (top / "a" / "sub").mkdir(parents=True)
    (top / "b").mkdir()
    return top


def test_watches_follow_renames_moves_out_and_deletes(root: Path, tmp_path: Path) -> None:
    with InotifyWatcher([b(root)]) as w:
        assert w.watched_dirs == {b(root), b(root / "a"), b(root / "a" / "sub"), b(root / "b")}
        os.rename(root / "a", root / "b" / "renamed")
        drain(w)
        assert w.watched_dirs == {b(root), b(root / "b"), b(root / "b" / "renamed"),
                                  b(root / "b" / "renamed" / "sub")}
        os.rename(root / "b" / "renamed", tmp_path / "outside")
        drain(w)
        assert w.watched_dirs == {b(root), b(root / "b")}
        (root / "c" / "d").mkdir(parents=True)
        drain(w)
        assert w.watched_dirs == {b(root), b(root / "b"), b(root / "c"), b(root / "c" / "d")}
        shutil.rmtree(root / "c")
        drain(w)
        assert w.watched_dirs == {b(root), b(root / "b")}


def test_watch_limit_reports_unwatched_and_warns_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    top = tmp_path / "tree"
    dirs = [top] + [top / f"d{i}" for i in range(9)]
    for d in dirs:
        d.mkdir()
    caplog.set_level(logging.WARNING, logger="corestate.kernel.watch")
    with InotifyWatcher([b(top)], max_watches=3) as w:
        assert len(w.watched_dirs) == 3
        assert w.unwatched == {b(d) for d in dirs} - w.watched_dirs
        (top / "late").mkdir()
        gather(w, lambda s: b(top / "late") in s.paths)
        assert w.unwatched == {b(d) for d in dirs + [top / "late"]} - w.watched_dirs
        assert len(w.unwatched) == 8
        (unwatched, *_) = sorted(w.unwatched)
        (Path(os.fsdecode(unwatched)) / "f").write_bytes(b"x")
        assert w.poll(0.5) is None, "nothing inside an unwatched directory is reported"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "/proc/sys/fs/inotify/max_user_watches" in warnings[0].getMessage()


def test_unwatched_dir_deleted_is_no_longer_unwatched(tmp_path: Path) -> None:
    top = tmp_path / "tree"
    (top / "x").mkdir(parents=True)
    (top / "y").mkdir()
    with InotifyWatcher([b(top)], max_watches=1) as w:
        assert w.unwatched == {b(top / "x"), b(top / "y")}
        (top / "x").rmdir()
        gather(w, lambda s: b(top / "x") in s.paths)
        assert w.unwatched == {b(top / "y")}


def test_rename_moves_unwatched_dirs_too(tmp_path: Path) -> None:
    top = tmp_path / "tree"
    (top / "a" / "x").mkdir(parents=True)
    (top / "a" / "y").mkdir()
    with InotifyWatcher([b(top)], max_watches=3) as w:
        assert len(w.unwatched) == 1
        (name,) = w.unwatched
        os.rename(top / "a", top / "z")
        gather(w, lambda s: b(top / "z") in s.paths)
        assert w.unwatched == {b(top / "z") + name[len(b(top / "a")):]}
        assert w.watched_dirs == {b(top), b(top / "z"), b(top / "z") + b"/" + (
            b"y" if name.endswith(b"/x") else b"x")}


def test_overflow_rewalks_the_roots(root: Path) -> None:
    """The contract's overflow test sees batches come right again; here: the watches."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    with InotifyWatcher([b(root)]) as w:
        for i in range(limit + 100):
            (root / "b" / f"f{i}").touch()
        shutil.rmtree(root / "a")
        (root / "late" / "deep").mkdir(parents=True)
        assert gather(w, lambda s: s.overflow, timeout=30.0).overflow
        drain(w)
        assert w.watched_dirs == {b(root), b(root / "b"), b(root / "late"),
                                  b(root / "late" / "deep")}
