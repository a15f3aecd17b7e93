"""Consistent reads, excludes, and node metadata."""

from __future__ import annotations

import io
import os

from corestate.pipeline.capture import ExcludeMatcher, node_from_stat, read_consistently
from corestate.pipeline.chunk import chunk_stream
from corestate.repository.tree import MODE_DIR, MODE_SYMLINK
from tests.conftest import run_corestate


def _collect(path, mutate_times):
    """Read ``path``; the reader appends to the file during the first N reads."""
    seen = []
    reads = [0]

    def consume(fd, st):
        reads[0] += 1
        seen.clear()
        seen.append(os.pread(fd, 1 << 20, 0))
        if reads[0] <= mutate_times:
            with open(path, "ab") as w:
                w.write(b"more")

    return read_consistently(os.fsencode(path), consume), b"".join(seen)


def test_file_changing_once_is_read_again(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"start")
    outcome, data = _collect(p, mutate_times=1)
    assert outcome.consistent and outcome.attempts == 2
    assert data == b"startmore"


def test_file_that_never_settles_is_flagged(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"start")
    outcome, _ = _collect(p, mutate_times=100)
    assert not outcome.consistent and outcome.attempts == 3


def test_excludes():
    m = ExcludeMatcher(["*.log", "/var/cache", "**/node_modules", "build/*.o"])
    assert m.excluded(b"/x/a.log")
    assert m.excluded(b"/var/cache") and m.excluded(b"/var/cache/apt/x")
    assert not m.excluded(b"/var/cachet")
    assert m.excluded(b"/home/u/p/node_modules")
    assert m.excluded(b"/src/build/m.o") and not m.excluded(b"/src/build/m.c")
    assert not m.excluded(b"/x/a.txt")


def test_node_types(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    os.symlink("target", tmp_path / "l")
    dn = node_from_stat(b"d", os.fsencode(d), os.lstat(d))
    ln = node_from_stat(b"l", os.fsencode(tmp_path / "l"), os.lstat(tmp_path / "l"))
    assert dn.type == "dir" and dn.mode & MODE_DIR
    assert ln.type == "symlink" and ln.mode & MODE_SYMLINK and ln.linktarget == b"target"


def test_chunking_is_content_defined():
    import random
    data = random.Random(3).randbytes(6_000_000)
    a = list(chunk_stream(io.BytesIO(data)))
    b = list(chunk_stream(io.BytesIO(b"inserted" + data)))
    assert len(set(a) & set(b)) >= len(a) - 2, "an insertion must only move nearby boundaries"


def test_backup_of_a_directory_inside_the_repository_is_refused(tmp_path):
    """Never an empty success: the walk leaves the repository out, so such a snapshot
    would hold none of the files."""
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    inside = repo / "mine"
    inside.mkdir()
    (inside / "f").write_text("a file kept in the repository's directory")
    for path in (inside, repo, repo / "data"):
        for cmd in ("backup", "protect"):
            proc = run_corestate(cmd, str(path), "--repo", str(repo), check=False, timeout=60)
            assert proc.returncode == 1, (cmd, proc.stdout, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and "is inside the repository" in lines[0], proc.stderr
            assert "saved" not in proc.stdout
    assert not os.listdir(repo / "snapshots")
    # reached through a symlink, it is the same directory
    os.symlink(repo, tmp_path / "link")
    proc = run_corestate("backup", str(tmp_path / "link" / "mine"), "--repo", str(repo),
                         check=False)
    assert proc.returncode == 1 and "is inside the repository" in proc.stderr


def test_repository_inside_the_backed_up_directory_is_left_out(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("mine")
    repo = src / "repo"
    run_corestate("init", "--repo", str(repo))
    run_corestate("backup", str(src), "--repo", str(repo))
    listing = run_corestate("ls", "latest", "--repo", str(repo)).stdout
    assert str(src / "f") in listing and str(repo) not in listing


def test_a_source_path_below_a_symlinked_directory_is_backed_up(tmp_path):
    """/x/link/src with link -> real: the snapshot holds src's files (the symlink on the
    way is recorded as the directory it leads to), not an empty symlink node."""
    from corestate.connectors.url import open_backend
    from corestate.pipeline.backup import BackupOptions, backup
    from corestate.repository.repository import Repository
    from corestate.repository.walk import walk

    (tmp_path / "real" / "src").mkdir(parents=True)
    (tmp_path / "real" / "src" / "f.txt").write_text("through a symlink\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    repo = Repository.init(open_backend(str(tmp_path / "repo")), "pw")
    summary = backup(repo, BackupOptions(paths=[str(tmp_path / "link" / "src")], workers=0))
    assert summary.files_new == 1 and summary.errors == []
    repo.load_index()
    paths = {p: n for p, n in walk(repo, repo.load_snapshot(summary.snapshot_id).tree)}
    f = os.fsencode(str(tmp_path / "link" / "src" / "f.txt"))
    assert f in paths and paths[os.fsencode(str(tmp_path / "link"))].type == "dir"
    assert repo.load_blob(paths[f].content[0]) == b"through a symlink\n"
