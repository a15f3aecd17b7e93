"""What only the fanotify watcher does: one mark per filesystem and paths resolved from
file handles. The behaviour it shares with inotify is in test_watch.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from corestate.kernel.watch import fanotify
from tests.kernel.watching import b, drain, gather, make_watcher


@pytest.fixture
def root(tmp_path: Path) -> Path:
    top = tmp_path / "root"
    (top / "a" / "sub").mkdir(parents=True)
    (top / "b").mkdir()
    return top


def test_roots_on_two_filesystems_get_a_mark_each(root: Path) -> None:
    assert os.stat("/dev/shm").st_dev != os.stat(root).st_dev, "/dev/shm: a second filesystem"
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        with make_watcher("fanotify", [b(root), b(other)]) as w:
            (other / "f").write_bytes(b"x")
            (root / "b" / "g").write_bytes(b"x")
            seen = gather(w, lambda s: {b(other), b(root / "b")} <= s.dirty)
            assert seen.dirty == {b(other), b(root / "b")}
    finally:
        shutil.rmtree(other)


def test_symlinked_root_reports_paths_as_given(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    with make_watcher("fanotify", [b(link)]) as w:
        (root / "a" / "f").write_bytes(b"x")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(link / "a")}
        assert seen.paths == {b(link / "a" / "f")}


def test_more_directories_than_the_path_cache_holds(root: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanotify, "PATH_CACHE_SIZE", 4)
    dirs = [root / f"d{i}" / "inner" for i in range(12)]
    for d in dirs:
        d.mkdir(parents=True)
    with make_watcher("fanotify", [b(root)]) as w:
        for _ in range(2):  # the second round resolves handles the cache evicted
            for d in dirs:
                (d / "f").write_bytes(b"x")
            seen = gather(w, lambda s: len(s.dirty) == len(dirs))
            assert seen.dirty == {b(d) for d in dirs}
            assert len(w._paths) <= 4
            drain(w)


def test_a_moved_directory_is_found_at_its_new_path_however_deep(root: Path) -> None:
    (root / "a" / "sub" / "deeper").mkdir()
    with make_watcher("fanotify", [b(root)]) as w:
        (root / "a" / "sub" / "deeper" / "f").write_bytes(b"x")  # caches a, sub, deeper
        assert gather(w, lambda s: bool(s.dirty)).dirty == {b(root / "a" / "sub" / "deeper")}
        os.rename(root / "a", root / "z")
        drain(w)
        (root / "z" / "sub" / "deeper" / "g").write_bytes(b"x")
        seen = gather(w, lambda s: bool(s.dirty))
        assert seen.dirty == {b(root / "z" / "sub" / "deeper")}


def test_a_deleted_directory_marks_its_parent(root: Path) -> None:
    with make_watcher("fanotify", [b(root)]) as w:
        (root / "a" / "sub" / "f").write_bytes(b"x")
        drain(w)
        shutil.rmtree(root / "a")  # events inside it name a handle that no longer resolves
        seen = gather(w, lambda s: b(root / "a") in s.paths)
        seen.dirty |= drain(w).dirty
        assert b(root) in seen.dirty
        assert seen.kinds[b(root / "a")] == {"delete"}
