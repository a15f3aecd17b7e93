"""Tables printed into a pipe (not a terminal) keep one line per row instead of wrapping
at 80 columns, so scripts and `grep` see whole rows."""

from __future__ import annotations

import json

from tests.conftest import run_corestate


def test_tiering_rows_do_not_wrap_in_a_pipe(tmp_path, repo_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data\n")
    run_corestate("backup", str(src), "--repo", str(repo_path))
    snap = json.loads(run_corestate("snapshots", "--json", "--repo", str(repo_path)).stdout)[0]
    out = run_corestate("tiering", "--now", "2040-01-01", "--repo", str(repo_path),
                        env={"COLUMNS": ""}).stdout.splitlines()
    [row] = [line for line in out if snap["short_id"] in line]
    assert "STANDARD -> DEEP_ARCHIVE" in row and row.split()[-1].startswith("$"), out
    header = next(line for line in out if line.lstrip().startswith("ID"))
    assert header.split() == ["ID", "Kind", "Size", "Age", "Last", "read", "Move", "Saving/month"]


def test_snapshots_rows_keep_long_paths_whole(tmp_path, repo_path) -> None:
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "and-one-more-level"
    deep.mkdir(parents=True)
    (deep / "f").write_text("x\n")
    run_corestate("backup", str(deep), "--repo", str(repo_path))
    lines = run_corestate("snapshots", "--repo", str(repo_path), env={"COLUMNS": ""}).stdout.splitlines()
    assert len(str(deep)) > 100
    assert any(str(deep) in line for line in lines), lines
