"""find: globs on base names and paths, across snapshots."""

from __future__ import annotations

from pathlib import Path

import pytest

from corestate.maintenance.find import compile_pattern, find
from tests.maintenance.scenario import new_repo, reopen, snap, write_files


@pytest.mark.parametrize("pattern,path,hit", [
    ("*.txt", b"/a/b/notes.txt", True),
    ("*.txt", b"/a/b.txt/notes.md", False),
    ("notes.???", b"/x/notes.txt", True),
    ("[ab]*", b"/x/beta", True),
    ("b/*.txt", b"/a/b/notes.txt", True),
    ("a/*.txt", b"/a/b/notes.txt", False),
    ("/a/*/notes.txt", b"/a/b/notes.txt", True),
    ("/b/notes.txt", b"/a/b/notes.txt", False),
    ("/a/**/z.txt", b"/a/b/c/d/z.txt", True),
    ("/a/**", b"/a/b/c", True),
    ("caf\u00e9*", "/x/caf\u00e9-menu".encode(), True),
])
def test_patterns(pattern: str, path: bytes, hit: bool) -> None:
    assert compile_pattern(pattern)(path) is hit


def test_ignore_case() -> None:
    assert not compile_pattern("*.TXT")(b"/a/x.txt")
    assert compile_pattern("*.TXT", ignore_case=True)(b"/a/X.txt")
    assert compile_pattern("A/*.TXT", ignore_case=True)(b"/q/a/x.txt")


def test_find_across_two_snapshots(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    src = tmp_path / "src"
    write_files(src, {"report.txt": b"r1", "data/raw.csv": b"1,2", "data/notes.txt": b"n"})
    s1 = snap(repo, src)
    write_files(src, {"report.txt": b"r2 longer", "data/notes.txt": None, "new.txt": b"new"})
    s2 = snap(repo, src)
    repo = reopen(repo)
    snaps = repo.list_snapshots()
    base = str(src).encode()
    got = sorted((m.snapshot.id, m.path[len(base):], m.node.size)
                 for m in find(repo, ["*.txt"], snaps))
    assert got == sorted([(s1, b"/report.txt", 2), (s1, b"/data/notes.txt", 1),
                          (s2, b"/report.txt", 9), (s2, b"/new.txt", 3)])
    only_s2 = [m.path[len(base):] for m in find(repo, ["data/*"], [repo.load_snapshot(s2)])]
    assert only_s2 == [b"/data/raw.csv"]
    dirs = [m for m in find(repo, ["data"], snaps)]
    assert [m.node.type for m in dirs] == ["dir", "dir"]
    match = next(iter(find(repo, ["raw.csv"], snaps[:1]))).to_json()
    assert set(match) >= {"snapshot", "path", "size", "mtime", "type"}
    assert match["snapshot"] == s1 and str(match["path"]).endswith("/data/raw.csv")
