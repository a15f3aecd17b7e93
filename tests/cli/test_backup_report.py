"""`corestate backup`'s "Added to the repository" counts tree blobs' bytes too, as
restic's does (its data_added is data plus tree bytes)."""

from __future__ import annotations

import json
import os
import re

from corestate.connectors.local import LocalBackend
from corestate.repository.repository import Repository
from tests.conftest import PASSWORD, run_corestate


def test_data_added_is_every_new_blobs_plaintext(tmp_path, repo_path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.bin").write_bytes(os.urandom(5000))
    (src / "g.txt").write_text("some text\n")
    out = json.loads(run_corestate("backup", str(src), "--json", "--repo", str(repo_path)).stdout)
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD)
    index = repo.load_index()
    blobs = [index.lookup(b).blob for b in index.blob_ids()]  # type: ignore[union-attr]
    # a first backup into an empty repository: everything in it is new
    assert out["data_blobs"] + out["tree_blobs"] == len(blobs)
    assert out["data_added"] == sum(b.plaintext_length for b in blobs)


def test_a_backup_that_adds_only_trees_reports_their_size(tmp_path, repo_path) -> None:
    src = tmp_path / "src"
    (src / "empty").mkdir(parents=True)
    run_corestate("backup", str(src), "--repo", str(repo_path))
    os.utime(src / "empty", ns=(10**18, 10**18))  # only directory metadata changes
    text = run_corestate("backup", str(src), "--repo", str(repo_path)).stdout
    added = re.search(r"Added to the repository: (\S+) (\S+) \(.*?(\d+) data blobs, (\d+) tree blobs\)",
                      text)
    assert added is not None, text
    size, unit, data_blobs, tree_blobs = added.groups()
    assert data_blobs == "0" and int(tree_blobs) >= 1
    assert float(size) > 0, text
