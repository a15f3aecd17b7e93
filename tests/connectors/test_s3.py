"""The S3 backend on a real S3 server (versitygw, started by deploy/storage/s3.sh): the
shared contract, plus what only S3 shows (layout under a prefix, multipart uploads,
bucket creation and its refusal, credentials and their errors)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from corestate.connectors.s3 import S3Backend
from corestate.connectors.url import open_backend, parse_location
from corestate.errors import PermanentError
from corestate.repository.backend import Backend, Kind
from tests.connectors.contract import BackendContract, content_name
from tests.storage_servers import DEPLOY, S3_KEYS, StorageServer

MiB = 1 << 20


@pytest.fixture
def s3(s3_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> StorageServer:
    """The session's server, with its keys in this process's environment."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


class TestS3Backend(BackendContract):
    @pytest.fixture(autouse=True)
    def _server(self, s3: StorageServer) -> None:
        self.server = s3

    def make_backend(self, root: Path) -> Backend:
        return S3Backend(parse_location(self.server.url(self.server.bucket())))


def admin(server: StorageServer, *args: str) -> None:
    """versitygw's admin command against the server, as its root user."""
    proc = subprocess.run([str(DEPLOY / ".bin" / "versitygw"), "admin", "--access", S3_KEYS["AWS_ACCESS_KEY_ID"],
                           "--secret", S3_KEYS["AWS_SECRET_ACCESS_KEY"], "--endpoint-url",
                           server.endpoint, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def raw_keys(server: StorageServer, bucket: str) -> set[str]:
    backend = S3Backend(parse_location(server.url(bucket)))
    return {o.object_name for o in backend.s3.client.list_objects(bucket, recursive=True)}


def test_files_live_under_the_prefix_in_restics_layout(s3: StorageServer) -> None:
    bucket = s3.bucket()
    one = open_backend(s3.url(bucket, "hosts/one"))
    two = open_backend(s3.url(bucket, "hosts/two"))
    one.create()
    two.create()
    name = content_name(b"pack")
    one.write(Kind.DATA, name, b"pack")
    one.write(Kind.CONFIG, "", b"config")
    two.write(Kind.SNAPSHOTS, name, b"snapshot")
    assert raw_keys(s3, bucket) == {f"hosts/one/data/{name[:2]}/{name}", "hosts/one/config",
                                    f"hosts/two/snapshots/{name}"}
    assert [i.name for i in one.list(Kind.DATA)] == [name]
    assert list(two.list(Kind.DATA)) == []
    assert one.location() == f"s3:{s3.endpoint}/{bucket}/hosts/one"


def test_big_objects_go_up_in_parts(s3: StorageServer) -> None:
    backend = S3Backend(parse_location(s3.url(s3.bucket())), part_size=5 * MiB)
    backend.create()
    data = random.Random(5).randbytes(12 * MiB + 3)
    name = content_name(data)
    backend.write(Kind.DATA, name, data)
    stat = backend.s3.client.stat_object(backend.loc.bucket, backend.key(Kind.DATA, name))
    assert stat.etag.endswith("-3")  # S3's mark of an object completed from 3 parts
    assert backend.read(Kind.DATA, name) == data
    assert backend.read(Kind.DATA, name, 10 * MiB, MiB) == data[10 * MiB:11 * MiB]
    # below the part size: one PUT, a plain MD5 ETag
    small = data[:MiB]
    backend.write(Kind.DATA, content_name(small), small)
    assert "-" not in backend.s3.client.stat_object(
        backend.loc.bucket, backend.key(Kind.DATA, content_name(small))).etag


def test_create_refuses_an_existing_repository(s3: StorageServer) -> None:
    backend = open_backend(s3.url(s3.bucket()))
    backend.create()
    backend.write(Kind.CONFIG, "", b"config")
    with pytest.raises(PermanentError, match="already exists"):
        backend.create()


def test_a_user_who_may_not_create_buckets_is_told_so(s3: StorageServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    admin(s3, "create-user", "--access", "plain-user", "--secret", "plain-secret", "--role", "user")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "plain-user")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "plain-secret")
    bucket = s3.bucket()
    backend = open_backend(s3.url(bucket))
    with pytest.raises(PermanentError) as raised:
        backend.create()
    message = str(raised.value)
    assert f"bucket {bucket} does not exist" in message
    assert "may not create it" in message
    assert "plain-secret" not in message


def test_a_wrong_secret_stops_at_once_without_showing_it(s3: StorageServer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    sleeps: list[float] = []
    backend = open_backend(s3.url(s3.bucket()))
    backend.inner.inner._sleep = sleeps.append  # type: ignore[attr-defined]
    with pytest.raises(PermanentError) as raised:
        backend.create()
    message = str(raised.value)
    assert "SignatureDoesNotMatch" in message or "AccessDenied" in message
    assert s3.endpoint in message
    assert "not-the-secret" not in message and "corestate-secret" not in message
    assert sleeps == []  # not retried


def test_no_credentials_is_a_clear_error(s3: StorageServer, monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(PermanentError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_backend(s3.url("some-bucket"))


def test_a_shared_credentials_file_and_profile_work(s3: StorageServer, monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(f"[backup]\naws_access_key_id = {S3_KEYS['AWS_ACCESS_KEY_ID']}\n"
                     f"aws_secret_access_key = {S3_KEYS['AWS_SECRET_ACCESS_KEY']}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "backup")
    backend = open_backend(s3.url(s3.bucket()))
    backend.create()
    backend.write(Kind.KEYS, "ab" * 32, b"key")
    assert backend.read(Kind.KEYS, "ab" * 32) == b"key"


def test_a_missing_bucket_is_not_a_repository(s3: StorageServer) -> None:
    backend = open_backend(s3.url(s3.bucket()))
    assert not backend.exists()
    with pytest.raises(PermanentError, match="bucket does not exist"):
        backend.read(Kind.CONFIG, "")
