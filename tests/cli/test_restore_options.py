"""`corestate restore` into a target that is not empty (--overwrite, --delete, the
warning), an --include that matches nothing, and a snapshot given together with --at.

restic 0.17's semantics (Debian's restic is 0.14, which has neither option, so the
expectations are written out here from restic's documentation)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_corestate

MTIME = 1_600_000_000_000_000_000  # the source files' modification time (ns)


@pytest.fixture
def snap(tmp_path: Path, repo_path: Path) -> Path:
    """A backed-up tree; returns the source directory (its files: a.txt, d/b.txt,
    d/c.md, d/sub/e.txt, link -> a.txt)."""
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "d" / "b.txt").write_text("bravo\n")
    (src / "d" / "c.md").write_text("charlie\n")
    (src / "d" / "sub" / "e.txt").write_text("echo\n")
    os.symlink("a.txt", src / "link")
    for path in ("a.txt", "d/b.txt", "d/c.md", "d/sub/e.txt"):
        os.utime(src / path, ns=(MTIME, MTIME))
    run_corestate("backup", str(src), "--repo", str(repo_path))
    return src


def restore(repo: Path, target: Path, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run_corestate("restore", "--repo", str(repo), "--target", str(target), *args,
                         check=check)


def summary(repo: Path, target: Path, *args: str) -> dict[str, object]:
    return json.loads(restore(repo, target, "--json", *args).stdout)


def at(target: Path, src: Path) -> Path:
    return Path(str(target) + str(src))


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_into_an_empty_target_no_warning(tmp_path, repo_path, snap) -> None:
    proc = restore(repo_path, tmp_path / "out")
    assert proc.stderr == ""
    assert (at(tmp_path / "out", snap) / "d" / "sub" / "e.txt").read_text() == "echo\n"


def test_non_empty_target_by_default_replaces_keeps_extras_and_says_so_once(
        tmp_path, repo_path, snap) -> None:
    out = tmp_path / "out"
    restore(repo_path, out)
    root = at(out, snap)
    (root / "a.txt").write_text("changed\n")
    (root / "d" / "extra.txt").write_text("not in the snapshot\n")
    (root / "extra-dir").mkdir()
    proc = restore(repo_path, out)
    assert (root / "a.txt").read_text() == "alpha\n"
    assert (root / "d" / "extra.txt").exists() and (root / "extra-dir").is_dir()
    assert warnings(proc.stderr) == [
        f"warning: {out} was not empty: 2 existing entries replaced, 3 files already up to "
        "date, 2 entries that are not in the snapshot kept (--overwrite and --delete choose "
        "otherwise)"]
    # a.txt and the symlink were replaced; an explicit choice needs no warning
    assert warnings(restore(repo_path, out, "--overwrite", "always").stderr) == []


def test_overwrite_always_compares_content_and_keeps_equal_files(tmp_path, repo_path, snap) -> None:
    out = tmp_path / "out"
    restore(repo_path, out)
    root = at(out, snap)
    inode = (root / "d" / "b.txt").stat().st_ino
    # same size and time, other content: always reads it and finds the difference
    (root / "a.txt").write_text("ALPHA\n")
    os.utime(root / "a.txt", ns=(MTIME, MTIME))
    os.chmod(root / "d" / "b.txt", 0o600)
    result = summary(repo_path, out, "--overwrite", "always")
    assert (root / "a.txt").read_text() == "alpha\n"
    assert result["files_unchanged"] == 3 and result["entries_replaced"] == 2
    # an equal file is not rewritten (same inode), but its metadata is restored
    st = (root / "d" / "b.txt").stat()
    assert st.st_ino == inode and st.st_mode & 0o777 == (snap / "d" / "b.txt").stat().st_mode & 0o777


def test_overwrite_if_changed_trusts_size_and_time(tmp_path, repo_path, snap) -> None:
    out = tmp_path / "out"
    restore(repo_path, out)
    root = at(out, snap)
    (root / "a.txt").write_text("ALPHA\n")  # same size and time: taken as unchanged
    os.utime(root / "a.txt", ns=(MTIME, MTIME))
    (root / "d" / "b.txt").write_text("bravo\n")  # same content, other time: read, equal
    (root / "d" / "c.md").write_text("CHARLIE\n")  # other time and content: replaced
    result = summary(repo_path, out, "--overwrite", "if-changed")
    assert (root / "a.txt").read_text() == "ALPHA\n"
    assert (root / "d" / "c.md").read_text() == "charlie\n"
    assert (root / "d" / "b.txt").stat().st_mtime_ns == MTIME  # metadata restored
    assert result["files_unchanged"] == 3 and result["entries_replaced"] == 2  # c.md, link


def test_overwrite_if_newer_and_never(tmp_path, repo_path, snap) -> None:
    out = tmp_path / "out"
    restore(repo_path, out)
    root = at(out, snap)
    (root / "a.txt").write_text("newer on disk\n")  # mtime now: newer than the snapshot's
    (root / "d" / "b.txt").write_text("older on disk\n")
    os.utime(root / "d" / "b.txt", ns=(MTIME - 10**9, MTIME - 10**9))
    (root / "d" / "sub" / "e.txt").unlink()  # missing: restored whatever the policy
    result = summary(repo_path, out, "--overwrite", "if-newer")
    assert (root / "a.txt").read_text() == "newer on disk\n"
    assert (root / "d" / "b.txt").read_text() == "bravo\n"
    assert (root / "d" / "sub" / "e.txt").read_text() == "echo\n"
    assert result["files_skipped"] == 3  # a.txt, c.md (same time), link

    (root / "d" / "b.txt").write_text("mine\n")
    (root / "d" / "c.md").unlink()
    result = summary(repo_path, out, "--overwrite", "never")
    assert (root / "d" / "b.txt").read_text() == "mine\n"
    assert (root / "d" / "c.md").read_text() == "charlie\n"
    assert result["files_skipped"] == 4 and result["entries_replaced"] == 0


def test_delete_removes_what_the_snapshot_does_not_hold(tmp_path, repo_path, snap) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("must survive\n")
    (out / "unrelated").mkdir(parents=True)  # beside the snapshot's top directory
    restore(repo_path, out)
    root = at(out, snap)
    (root / "d" / "extra.txt").write_text("x\n")
    (root / "d" / "sub" / "deep").mkdir()
    (root / "d" / "sub" / "deep" / "f").write_text("x\n")
    os.symlink(outside, root / "d" / "to-outside")  # removed as a link, never followed
    result = summary(repo_path, out, "--delete")
    assert sorted(os.listdir(root / "d")) == ["b.txt", "c.md", "sub"]
    assert os.listdir(root / "d" / "sub") == ["e.txt"]
    assert not (out / "unrelated").exists()  # the target's own extras too, as restic does
    assert (outside / "precious").read_text() == "must survive\n"
    assert result["entries_deleted"] == 4 and result["extra_entries_kept"] == 0


def test_delete_with_include_touches_only_what_the_patterns_select(tmp_path, repo_path, snap) -> None:
    out = tmp_path / "out"
    restore(repo_path, out)
    root = at(out, snap)
    (root / "d" / "extra.txt").write_text("x\n")
    (root / "d" / "extra.md").write_text("x\n")
    (root / "keep.txt").write_text("x\n")
    summary(repo_path, out, "--delete", "--include", f"{snap}/d/*.txt")
    assert not (root / "d" / "extra.txt").exists()
    assert (root / "d" / "extra.md").exists() and (root / "keep.txt").exists()


def test_a_directory_in_the_way_of_a_file(tmp_path, repo_path, snap) -> None:
    out = tmp_path / "out"
    restore(repo_path, out)
    root = at(out, snap)
    (root / "a.txt").unlink()
    (root / "a.txt").mkdir()
    (root / "a.txt" / "inside").write_text("x\n")
    blocked = restore(repo_path, out, check=False)
    assert blocked.returncode == 1
    assert "a directory is in the way (--delete replaces it)" in blocked.stderr
    restore(repo_path, out, "--delete")
    assert (root / "a.txt").read_text() == "alpha\n"


def test_include_that_matches_nothing_is_an_error(tmp_path, repo_path, snap) -> None:
    proc = restore(repo_path, tmp_path / "out", "--include", "*.pdf", "--include", "/nowhere",
                   check=False)
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.startswith("corestate: error: --include '*.pdf', '/nowhere': nothing in snapshot ")
    assert not (tmp_path / "out").exists()
    # an existing target is left as it was, even with --delete
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.pdf").write_text("x\n")
    proc = restore(repo_path, tmp_path / "out", "--include", "*.pdf", "--delete", check=False)
    assert proc.returncode == 1 and os.listdir(tmp_path / "out") == ["mine.pdf"]
    # one pattern that matches is enough
    restore(repo_path, tmp_path / "out2", "--include", "*.pdf", "--include", "*.md")
    assert (at(tmp_path / "out2", snap) / "d" / "c.md").exists()


def test_a_snapshot_and_at_together_are_refused(tmp_path, repo_path, snap) -> None:
    for name in ("latest", "deadbeef"):
        proc = restore(repo_path, tmp_path / "out", name, "--at", "2030-01-01T00:00:00", check=False)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            f"corestate: error: give either a SNAPSHOT ({name}) or --at, not both"]
    assert not (tmp_path / "out").exists()
    restore(repo_path, tmp_path / "out", "--at", "2999-01-01T00:00:00")  # --at alone works


def test_delete_into_the_root_needs_an_include(repo_path) -> None:
    proc = run_corestate("restore", "--repo", str(repo_path), "--target", "/", "--delete",
                         check=False)
    assert proc.returncode == 1 and "would delete the whole system" in proc.stderr
