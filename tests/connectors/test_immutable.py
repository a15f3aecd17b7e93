"""Immutable repositories on a real S3 server with Object Lock (versitygw): what is
locked, that nobody can remove or overwrite it, how forget and prune behave, and the
errors where Object Lock is missing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from corestate.connectors import immutable
from corestate.connectors.objectstore import Retention
from corestate.connectors.s3 import S3Backend
from corestate.connectors.url import open_backend, parse_location
from corestate.errors import ImmutableError, PermanentError
from corestate.repository.backend import Kind, object_path
from corestate.repository.repository import Repository
from tests.conftest import run_corestate, run_restic
from tests.connectors.faultproxy import FaultProxy
from tests.storage_servers import StorageServer

DAY = 86400.0


@pytest.fixture
def s3(s3_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> StorageServer:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def raw(server: StorageServer, url: str) -> S3Backend:
    return S3Backend(parse_location(url))


def retention_of(backend: S3Backend, key: str) -> tuple[str, float] | None:
    r = backend.s3.client.get_object_retention(backend.loc.bucket, key)
    return None if r is None or r.mode is None else (r.mode, r.retain_until_date.timestamp())


@pytest.fixture
def locked_repo(s3: StorageServer, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A repository initialised with --immutable 2 (compliance), with two snapshots."""
    url = s3.url(s3.bucket(), "repo")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first\n" * 1000)
    run_corestate("init", "--repo", url, "--immutable", "2", "--immutable-mode", "compliance",
                  env=s3.env())
    run_corestate("backup", "--repo", url, str(src), env=s3.env())
    (src / "b.txt").write_text("second\n" * 1000)
    run_corestate("backup", "--repo", url, str(src), env=s3.env())
    yield url, src


@pytest.mark.restic
def test_every_file_a_restore_needs_is_locked_and_nothing_else(
        s3: StorageServer, locked_repo: tuple[str, Path]) -> None:
    url, _ = locked_repo
    backend = raw(s3, url)
    now = time.time()
    seen: set[Kind] = set()
    for kind in (Kind.CONFIG, Kind.KEYS, Kind.DATA, Kind.INDEX, Kind.SNAPSHOTS):
        for info in backend.list(kind):
            mode, until = retention_of(backend, backend.key(kind, info.name)) or ("", 0.0)
            assert mode == "COMPLIANCE", (kind, info.name)
            assert now + 1.9 * DAY < until < now + 2.1 * DAY
            seen.add(kind)
    assert seen == {Kind.CONFIG, Kind.KEYS, Kind.DATA, Kind.INDEX, Kind.SNAPSHOTS}
    sidecar = {i.name for i in backend.list(Kind.SIDECAR)}
    assert "immutable" in sidecar
    assert retention_of(backend, backend.key(Kind.SIDECAR, "immutable")) is not None
    for name in sidecar - {"immutable"}:  # bitmaps, ordinal table: rebuildable, rewritten
        assert retention_of(backend, backend.key(Kind.SIDECAR, name)) is None
    run_restic("-r", url, "check", "--read-data")  # the keys are in this environment


def test_nobody_can_delete_or_overwrite_a_locked_file(s3: StorageServer,
                                                     locked_repo: tuple[str, Path]) -> None:
    url, _ = locked_repo
    backend = raw(s3, url)
    snap = next(iter(backend.list(Kind.SNAPSHOTS))).name
    key = backend.key(Kind.SNAPSHOTS, snap)
    # Past our own check, straight at the server, as the server's root user:
    with pytest.raises(Exception) as raised:
        backend.s3.client.remove_object(backend.loc.bucket, key)
    assert getattr(raised.value, "code", "") == "AccessDenied"
    with pytest.raises(PermanentError):
        backend.s3.put(key, b"ransom note", None, time.time())
    assert len(backend.read(Kind.SNAPSHOTS, snap)) > 100
    with pytest.raises(ImmutableError) as locked:
        backend.delete(Kind.SNAPSHOTS, snap)
    assert locked.value.until > time.time() + DAY


def test_forget_and_prune_keep_what_is_locked_and_say_until_when(
        s3: StorageServer, locked_repo: tuple[str, Path]) -> None:
    url, _ = locked_repo
    forgot = run_corestate("forget", "--repo", url, "--keep-last", "1", "--prune", env=s3.env())
    assert "removed 0 snapshots" in forgot.stdout
    until = datetime.fromtimestamp(time.time() + 2 * DAY, timezone.utc).strftime("%Y-%m-%d")
    warned = [line for line in forgot.stderr.splitlines() if "cannot be removed yet" in line]
    assert len(warned) == 2, forgot.stderr  # the snapshot, then prune's packs and index
    assert "snapshot " in warned[0] and until in warned[0]
    assert "index files cannot be removed yet" in warned[1] and until in warned[1]
    snaps = run_corestate("snapshots", "--repo", url, "--json", env=s3.env())
    assert snaps.stdout.count('"id"') == 2
    run_corestate("check", "--repo", url, "--read-data", env=s3.env())
    # Nothing was rewritten only to be kept: a second prune changes nothing.
    again = run_corestate("prune", "--repo", url, "--json", env=s3.env())
    assert '"packs_written":[]' in again.stdout


def test_an_overwrite_with_the_same_bytes_after_a_lost_reply_is_fine(s3: StorageServer) -> None:
    backend = raw(s3, s3.url(s3.bucket()))
    backend.retention = Retention("GOVERNANCE", 1)
    backend.create()
    backend.write(Kind.DATA, "ab" * 32, b"pack")
    backend.write(Kind.DATA, "ab" * 32, b"pack")  # a retried write of a locked object
    with pytest.raises(PermanentError):
        backend.write(Kind.DATA, "ab" * 32, b"other")


def test_immutable_needs_s3(tmp_path: Path, s3: StorageServer) -> None:
    proc = run_corestate("init", "--repo", str(tmp_path / "repo"), "--immutable", "7",
                         check=False)
    assert proc.returncode == 1
    assert "--immutable needs S3 Object Lock" in proc.stderr
    assert not (tmp_path / "repo").exists()


def test_an_existing_bucket_without_object_lock_is_refused(s3: StorageServer) -> None:
    url = s3.url(s3.bucket())
    open_backend(url).create()  # a plain bucket
    proc = run_corestate("init", "--repo", url, "--immutable", "7", env=s3.env(), check=False)
    assert proc.returncode == 1
    assert "has no Object Lock" in proc.stderr


def test_a_server_without_object_lock_is_named(s3: StorageServer) -> None:
    proxy = FaultProxy(s3.port)
    try:
        proxy.fail("PUT", r"^/[^/?]+/?$", 501, "NotImplemented", header="x-amz-bucket-object-lock-enabled")
        url = f"s3:{proxy.endpoint}/{s3.bucket()}"
        proc = run_corestate("init", "--repo", url, "--immutable", "7", env=s3.env(), check=False)
    finally:
        proxy.close()
    assert proc.returncode == 1
    assert "cannot create a bucket with Object Lock" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_the_policy_is_applied_on_open(s3: StorageServer) -> None:
    url = s3.url(s3.bucket())
    backend = open_backend(url)
    policy = immutable.prepare(backend, 3, "governance")
    repo = Repository.init(backend, "pw")
    immutable.save(repo, policy)
    repo.close()
    reopened = Repository.open(open_backend(url), "pw")
    assert immutable.apply(reopened) == Retention("GOVERNANCE", 3)
    store = immutable.object_store(reopened.backend)
    assert store is not None and store.retention == Retention("GOVERNANCE", 3)
    reopened.save_json(Kind.SNAPSHOTS, {"x": 1})
    names = [i.name for i in store.list(Kind.SNAPSHOTS)]
    assert retention_of(store, store.key(Kind.SNAPSHOTS, names[0]))[0] == "GOVERNANCE"  # type: ignore[arg-type,index]
    assert object_path(Kind.SNAPSHOTS, names[0]) in store.key(Kind.SNAPSHOTS, names[0])
