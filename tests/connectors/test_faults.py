"""Faults on a real S3 server: the server killed mid-backup and restarted 10 s later,
throttling (503 SlowDown, 429) and refusals (403, no such bucket) from a fault-injecting
proxy in front of it, and the backup itself killed mid-upload. A backup either waits and
completes, or stops at once with one line; the repository always checks clean."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from corestate.connectors.s3 import S3Backend
from corestate.connectors.url import parse_location
from tests.conftest import PASSWORD, run_corestate, run_restic
from tests.connectors.faultproxy import FaultProxy
from tests.storage_servers import S3_KEYS, StorageServer, free_port

pytestmark = pytest.mark.restic
MiB = 1 << 20
RETRY = re.compile(r"^WARNING corestate\.connectors\.retry: (\w+ \S+) at (\S+) failed "
                   r"\(attempt (\d+) of \d+\): .*; retrying in [\d.]+s$")


@pytest.fixture
def own_s3(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[StorageServer]:
    """A server of this test's own, which it may kill."""
    server = StorageServer("s3", free_port(), tmp_path_factory.mktemp("own-s3") / "data")
    server.start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> StorageServer:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


def corpus(root: Path, files: int = 8, size: int = 12 * MiB) -> Path:
    """Incompressible data worth several packs."""
    src = root / "src"
    src.mkdir()
    for i in range(files):
        (src / f"f{i}.bin").write_bytes(os.urandom(size))
    return src


def start_backup(src: Path, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD, "CORESTATE_STATE_DIR": "/tmp/corestate-test-state"}
    return subprocess.Popen([sys.executable, "-m", "corestate", "backup", str(src), "--repo", url],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def packs_on_disk(server: StorageServer, bucket: str) -> list[Path]:
    """Packs the server has stored, seen in its own directory (not through S3)."""
    return [p for p in (server.data / "data" / bucket).glob("**/data/??/*") if p.is_file()]


def wait_for(predicate, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def retries(stderr: str) -> list[tuple[str, str, int]]:
    """The retry warnings: (operation, location, attempt); any other line fails."""
    out = []
    for line in stderr.splitlines():
        match = RETRY.match(line)
        assert match, f"unexpected output: {line}"
        out.append((match.group(1), match.group(2), int(match.group(3))))
    return out


def test_a_server_killed_mid_backup_and_back_10s_later(own_s3: StorageServer, tmp_path: Path) -> None:
    bucket = own_s3.bucket()
    url = own_s3.url(bucket)
    run_corestate("init", "--repo", url)
    src = corpus(tmp_path)
    backup = start_backup(src, url)
    try:
        wait_for(lambda: len(packs_on_disk(own_s3, bucket)) >= 1 or backup.poll() is not None)
        assert backup.poll() is None, "the backup finished before the server could be killed"
        own_s3.kill()
        time.sleep(10)
        own_s3.start()
        out, err = backup.communicate(timeout=600)
    finally:
        if backup.poll() is None:
            backup.kill()
    assert backup.returncode == 0, err
    assert "snapshot" in out and "saved" in out
    seen = retries(err)
    assert seen, "the backup never noticed the server was gone"
    # one warning per retry: no operation's attempt is reported twice
    assert max(Counter(seen).values()) == 1
    assert all(where == url for _, where, _ in seen)
    assert "corestate-secret" not in err
    run_corestate("check", "--read-data", "--repo", url)
    run_restic("-r", url, "check", "--read-data")


def test_throttling_backs_off_and_the_backup_completes(s3: StorageServer, tmp_path: Path) -> None:
    proxy = FaultProxy(s3.port)
    try:
        url = f"s3:{proxy.endpoint}/{s3.bucket()}"
        run_corestate("init", "--repo", url)
        slow = proxy.fail("PUT", r"/data/", 503, "SlowDown", times=3)
        busy = proxy.fail("PUT", r"/snapshots/", 429, "TooManyRequests", times=2)
        src = corpus(tmp_path, files=3, size=MiB)
        done = run_corestate("backup", str(src), "--repo", url)
    finally:
        proxy.close()
    assert slow.hits == 3 and busy.hits == 2
    seen = retries(done.stderr)
    assert len(seen) == 5
    assert done.stderr.count("503 SlowDown (busy or throttling)") == 3
    assert done.stderr.count("429 TooManyRequests (busy or throttling)") == 2
    run_restic("-r", f"s3:{s3.endpoint}/{url.rsplit('/', 1)[1]}", "check", "--read-data")


@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (404, "NoSuchBucket")])
def test_a_refusal_stops_at_once_with_one_line(s3: StorageServer, tmp_path: Path,
                                               status: int, code: str) -> None:
    proxy = FaultProxy(s3.port)
    try:
        bucket = s3.bucket()
        url = f"s3:{proxy.endpoint}/{bucket}"
        run_corestate("init", "--repo", url)
        refusal = proxy.fail("PUT", r"/data/", status, code, times=100)
        started = time.monotonic()
        failed = run_corestate("backup", str(corpus(tmp_path, files=2, size=MiB)), "--repo", url,
                               check=False)
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"corestate: error: writing {url}/data/")
    assert code in lines[0]
    puts = Counter(path for method, path, _ in proxy.log if method == "PUT" and "/data/" in path)
    assert refusal.hits == sum(puts.values()) >= 1
    assert max(puts.values()) == 1  # no pack upload was tried twice
    assert S3_KEYS["AWS_SECRET_ACCESS_KEY"] not in failed.stderr
    assert took < 60


def test_a_missing_bucket_is_one_line(s3: StorageServer, tmp_path: Path) -> None:
    url = s3.url(s3.bucket())
    failed = run_corestate("backup", str(tmp_path), "--repo", url, check=False)
    assert failed.returncode == 1
    assert failed.stderr.strip() == f"corestate: error: {url}: repository does not exist"


def test_a_backup_killed_mid_upload_leaves_no_partial_pack(own_s3: StorageServer, tmp_path: Path) -> None:
    bucket = own_s3.bucket()
    url = own_s3.url(bucket, "repo")
    run_corestate("init", "--repo", url)
    src = corpus(tmp_path)
    backup = start_backup(src, url)
    wait_for(lambda: len(packs_on_disk(own_s3, bucket)) >= 2 or backup.poll() is not None)
    assert backup.poll() is None, "the backup finished before it could be killed"
    backup.send_signal(signal.SIGKILL)
    backup.communicate()
    backend = S3Backend(parse_location(url))
    listed = list(backend.s3.client.list_objects(bucket, prefix="repo/data/", recursive=True))
    assert listed
    for obj in listed:  # every object that looks like a pack is a whole one
        name = obj.object_name.rsplit("/", 1)[1]
        assert hashlib.sha256(backend.s3.get(obj.object_name, 0, None)).hexdigest() == name
    again = run_corestate("backup", str(src), "--repo", url)
    assert "saved" in again.stdout
    run_corestate("check", "--read-data", "--repo", url)
    run_restic("-r", url, "check", "--read-data")
