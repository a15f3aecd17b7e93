"""The `corestate` commands on every object store, each on its real server: init creates
the bucket, backup/restore/check/forget/prune/protect work, and restic is the oracle.

restic (Debian's 0.14) speaks S3 to any endpoint, so on S3 it checks and restores what
corestate wrote, and writes a repository that corestate restores. It cannot reach the
Azure and GCS emulators (it has no endpoint override for them), so there the oracle runs
on an exact copy: every object of the container copied byte for byte into a directory
(and, the other way, a directory restic wrote uploaded object by object).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corestate.connectors.objectstore import ObjectStoreBackend
from corestate.connectors.url import open_backend
from tests.conftest import PASSWORD, build_rich_tree, restored_root, run_corestate, run_restic, tree_manifest
from tests.storage_servers import StorageServer

pytestmark = pytest.mark.restic

FIXTURE = {"s3": "s3_server", "azure": "azure_server", "gs": "gcs_server"}


@pytest.fixture(params=["s3", "azure", "gs"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> StorageServer:
    server: StorageServer = request.getfixturevalue(FIXTURE[request.param])
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)  # for restic, the copies, and the commands
    return server


def cs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_corestate(*args, check=check)


def object_store(url: str) -> ObjectStoreBackend:
    backend = open_backend(url)
    while not isinstance(backend, ObjectStoreBackend):
        backend = backend.inner  # type: ignore[attr-defined]
    return backend


def copy_down(url: str, target: Path) -> None:
    """Every object under the location, byte for byte, into ``target`` (restic's layout
    is the object keys' layout)."""
    store = object_store(url)
    prefix = store.loc.key("")
    for key, size in store.store.list(prefix):
        path = target / key[len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        data = store.store.get(key, 0, None) if size else b""
        assert len(data) == size
        path.write_bytes(data)


def copy_up(source: Path, url: str) -> None:
    store = object_store(url)
    store.create()
    for path in sorted(source.rglob("*")):
        if path.is_file():
            store.store.put(store.loc.key(path.relative_to(source).as_posix()), path.read_bytes(),
                            None, time.time())


def restic_repo(store: StorageServer, url: str, tmp_path: Path) -> str:
    """Where restic reads the repository at ``url``: the store itself for S3, else a copy."""
    if store.kind == "s3":
        return url
    copy = tmp_path / "copy"
    copy_down(url, copy)
    return str(copy)


def test_every_command_on_the_store(store: StorageServer, tmp_path: Path) -> None:
    url = store.url(store.bucket(), "backups/laptop")  # the bucket does not exist yet
    src = build_rich_tree(tmp_path)
    created = cs("init", "--repo", url, "--json")
    assert json.loads(created.stdout)["repository"] == url
    first = json.loads(cs("backup", str(src), "--repo", url, "--json").stdout)
    cs("restore", "latest", "--target", str(tmp_path / "first"), "--repo", url)
    assert tree_manifest(restored_root(tmp_path / "first", src)) == tree_manifest(src)
    (src / "docs" / "a.txt").write_text("changed\n")
    second = json.loads(cs("backup", str(src), "--repo", url, "--json").stdout)
    assert second["parent"] == first["snapshot_id"]
    assert second["files_changed"] == 2  # a.txt and its hard link
    cs("check", "--read-data", "--repo", url)
    forgot = cs("forget", "--keep-last", "1", "--prune", "--repo", url)
    assert "removed 1 snapshots" in forgot.stdout
    cs("check", "--read-data", "--repo", url)
    snaps = json.loads(cs("snapshots", "--json", "--repo", url).stdout)
    assert [s["id"] for s in snaps] == [second["snapshot_id"]]
    cs("restore", "latest", "--target", str(tmp_path / "second"), "--repo", url)
    assert tree_manifest(restored_root(tmp_path / "second", src)) == tree_manifest(src)
    where = restic_repo(store, url, tmp_path)
    run_restic("-r", where, "check", "--read-data")
    run_restic("-r", where, "restore", "latest", "--target", str(tmp_path / "by-restic"))
    assert tree_manifest(restored_root(tmp_path / "by-restic", src)) == tree_manifest(src)


def test_corestate_restores_what_restic_wrote(store: StorageServer, tmp_path: Path) -> None:
    src = build_rich_tree(tmp_path)
    url = store.url(store.bucket(), "from-restic")
    if store.kind == "s3":
        run_restic("-r", url, "init")
        run_restic("-r", url, "backup", str(src))
    else:
        local = tmp_path / "restic-repo"
        run_restic("init", "--repo", str(local))
        run_restic("-r", str(local), "backup", str(src))
        copy_up(local, url)
    cs("restore", "latest", "--target", str(tmp_path / "out"), "--repo", url)
    assert tree_manifest(restored_root(tmp_path / "out", src)) == tree_manifest(src)
    (src / "new.txt").write_text("added by corestate\n")
    cs("backup", str(src), "--repo", url)
    run_restic("-r", restic_repo(store, url, tmp_path), "check", "--read-data")


def test_protect_on_the_store(store: StorageServer, tmp_path: Path) -> None:
    url = store.url(store.bucket())
    src = tmp_path / "src"
    src.mkdir()
    (src / "one.txt").write_text("one\n")
    cs("init", "--repo", url)
    env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD, "CORESTATE_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "corestate", "protect", str(src), "--repo", url,
                             "--json", "--interval", "0.5"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        (src / "two.txt").write_text("two\n")
        second = json.loads(proc.stdout.readline())
        assert second["snapshot_id"] != first["snapshot_id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    cs("restore", "latest", "--target", str(tmp_path / "out"), "--repo", url)
    assert (restored_root(tmp_path / "out", src) / "two.txt").read_text() == "two\n"
    run_restic("-r", restic_repo(store, url, tmp_path), "check", "--read-data")
