"""``corestate backup --json`` ends with restic's summary message: the real restic backs
up the same tree and both summaries have restic's fields, in restic's order, with the
same counts (files and directories new, changed, unmodified; files and bytes processed;
blobs added)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_corestate, run_restic

pytestmark = pytest.mark.restic

COUNTS = ("files_new", "files_changed", "files_unmodified", "dirs_new", "total_files_processed",
          "total_bytes_processed", "data_blobs")


def last(stdout: str) -> dict[str, object]:
    doc = json.loads(stdout.strip().splitlines()[-1])
    assert isinstance(doc, dict)
    return doc


def test_backup_json_summary_matches_restic(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "a.txt").write_text("first file\n")
    (src / "d" / "b.txt").write_text("second file\n")
    (src / "d" / "e" / "c.txt").write_text("third file\n" * 100)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    run_corestate("init", "--repo", str(ours))
    run_restic("init", "-r", str(theirs))

    def both() -> tuple[dict[str, object], dict[str, object]]:
        mine = last(run_corestate("backup", str(src), "--repo", str(ours), "--json").stdout)
        restic = last(run_restic("-r", str(theirs), "backup", "--json", str(src)).stdout)
        return mine, restic

    mine, restic = both()
    assert restic["message_type"] == mine["message_type"] == "summary"
    assert list(mine)[:len(restic)] == list(restic)  # restic's fields, in restic's order
    assert {k: mine[k] for k in COUNTS} == {k: restic[k] for k in COUNTS}
    assert mine["tree_blobs"] == restic["tree_blobs"]
    # data_added counts new tree bytes too, as restic's does (tree JSON differs a little)
    assert abs(mine["data_added"] - restic["data_added"]) <= 0.1 * restic["data_added"]  # type: ignore[operator]
    assert len(str(mine["snapshot_id"])) == 64
    assert 0 < mine["data_added_packed"] <= mine["data_added"]  # type: ignore[operator]
    snaps = json.loads(run_corestate("snapshots", "--repo", str(ours), "--json").stdout)
    assert snaps[-1]["id"] == mine["snapshot_id"]

    (src / "a.txt").write_text("first file, changed\n")
    mine, restic = both()
    for key in ("files_new", "files_changed", "files_unmodified", "total_files_processed",
                "total_bytes_processed", "data_blobs"):
        assert mine[key] == restic[key], key
    assert mine["files_changed"] == 1 and mine["files_unmodified"] == 2
    dirs = ("dirs_new", "dirs_changed", "dirs_unmodified")
    assert sum(mine[k] for k in dirs) == sum(restic[k] for k in dirs)  # type: ignore[misc]
    assert mine["dirs_new"] == 0 and mine["dirs_changed"] >= 3  # src and the two above it
    # (which directories changed also depends on directory atimes, which the first
    # listing of a new directory moves: each tool lists after the other here)

    mine, restic = both()  # nothing changed
    for key in (*COUNTS, *dirs):
        assert mine[key] == restic[key], (key, mine, restic)
    assert mine["dirs_changed"] == 0 and mine["files_unmodified"] == 3
