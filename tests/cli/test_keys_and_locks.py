"""`corestate key` and `corestate unlock`."""

from __future__ import annotations

import json


from corestate.connectors.local import LocalBackend
from corestate.repository.backend import Kind
from corestate.repository.repository import Repository
from tests.conftest import PASSWORD, run_corestate, run_restic


def test_key_add_passwd_remove(tmp_path, repo_path):
    new_pw = tmp_path / "new"
    new_pw.write_text("second password\n")
    run_corestate("key", "add", "--new-password-file", str(new_pw), "--repo", str(repo_path))
    keys = json.loads(run_corestate("key", "list", "--json", "--repo", str(repo_path)).stdout)
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1
    # both passwords open it, with corestate and with restic
    run_corestate("snapshots", "--repo", str(repo_path), env={"CORESTATE_PASSWORD": "second password"})
    proc = run_restic("-r", str(repo_path), "snapshots", check=False)
    assert proc.returncode == 0
    # the key in use cannot be removed; the other one can
    current = next(k["id"] for k in keys if k["current"])
    other = next(k["id"] for k in keys if not k["current"])
    refused = run_corestate("key", "remove", current[:8], "--repo", str(repo_path), check=False)
    assert refused.returncode == 1 and "currently used" in refused.stderr
    run_corestate("key", "remove", other[:8], "--repo", str(repo_path))
    gone = run_corestate("snapshots", "--repo", str(repo_path), check=False,
                         env={"CORESTATE_PASSWORD": "second password"})
    assert gone.returncode == 1 and "wrong password" in gone.stderr
    # passwd: the old password stops working, the new one works
    third = tmp_path / "third"
    third.write_text("third password\n")
    run_corestate("key", "passwd", "--new-password-file", str(third), "--repo", str(repo_path))
    assert run_corestate("snapshots", "--repo", str(repo_path), check=False).returncode == 1
    run_corestate("snapshots", "--repo", str(repo_path), env={"CORESTATE_PASSWORD": "third password"})


def test_unlock_removes_stale_locks_only(repo_path):
    repo = Repository.open(LocalBackend(str(repo_path)), PASSWORD)
    stale = {"time": "2020-01-01T00:00:00.000000000Z", "exclusive": True, "hostname": "elsewhere",
             "username": "u", "pid": 1, "uid": 0, "gid": 0}
    fresh = dict(stale, time="2999-01-01T00:00:00.000000000Z")
    repo.save_json(Kind.LOCKS, stale)
    live_id = repo.save_json(Kind.LOCKS, fresh)
    blocked = run_corestate("backup", str(repo_path.parent), "--repo", str(repo_path), check=False)
    assert blocked.returncode == 1 and "locked" in blocked.stderr
    out = json.loads(run_corestate("unlock", "--json", "--repo", str(repo_path)).stdout)
    assert out["removed"] == 1
    assert [f.name for f in repo.backend.list(Kind.LOCKS)] == [live_id]
    out = json.loads(run_corestate("unlock", "--remove-all", "--json", "--repo", str(repo_path)).stdout)
    assert out["removed"] == 1
    assert not list(repo.backend.list(Kind.LOCKS))
