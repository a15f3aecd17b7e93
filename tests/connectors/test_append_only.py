"""Append-only credentials on a real S3 server (versitygw's IAM and bucket policies):
a key that may read and add files but delete only locks is enough for backup and
protect, and cannot forget, prune or delete what is stored. The policy tested is the
one the docs give, deploy/storage/append-only-policy.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corestate.connectors.s3 import S3Backend
from corestate.connectors.url import parse_location
from corestate.repository.backend import Kind
from tests.conftest import run_corestate, run_restic
from tests.connectors.test_s3 import admin
from tests.storage_servers import DEPLOY, StorageServer

pytestmark = pytest.mark.restic

AGENT = {"AWS_ACCESS_KEY_ID": "backup-agent", "AWS_SECRET_ACCESS_KEY": "agent-secret",
         "AWS_DEFAULT_REGION": "us-east-1"}


def policy(bucket: str, prefix: str, principal: str) -> str:
    text = (DEPLOY / "append-only-policy.json").read_text()
    return (text.replace("BUCKET", bucket).replace("PREFIX", f"{prefix}/" if prefix else "")
            .replace("PRINCIPAL", principal))


@pytest.fixture
def append_only(s3_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> tuple[str, StorageServer]:
    """A repository made by the bucket's owner, and the agent's append-only key for it."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.bucket()
    url = s3_server.url(bucket, "hosts/laptop")
    run_corestate("init", "--repo", url)
    admin(s3_server, "create-user", "--access", AGENT["AWS_ACCESS_KEY_ID"], "--secret",
          AGENT["AWS_SECRET_ACCESS_KEY"], "--role", "user")
    owner = S3Backend(parse_location(url))
    owner.s3.client.set_bucket_policy(bucket, policy(bucket, "hosts/laptop", AGENT["AWS_ACCESS_KEY_ID"]))
    return url, s3_server


def as_agent(*args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return run_corestate(*args, env=AGENT, check=check)


def test_an_append_only_key_backs_up_and_cannot_destroy(append_only: tuple[str, StorageServer],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = append_only
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first\n")
    as_agent("backup", str(src), "--repo", url)
    (src / "b.txt").write_text("second\n")
    second = json.loads(as_agent("backup", str(src), "--repo", url, "--json").stdout)
    assert second["parent"]
    as_agent("check", "--read-data", "--repo", url)
    as_agent("restore", "latest", "--target", str(tmp_path / "out"), "--repo", url)
    assert (tmp_path / "out" / str(src).lstrip("/") / "b.txt").read_text() == "second\n"
    # its own locks were removed at the end of each run
    assert list(S3Backend(parse_location(url)).list(Kind.LOCKS)) == []

    refused = as_agent("forget", "--keep-last", "1", "--repo", url, check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith(f"corestate: error: deleting {url}/snapshots/")
    assert "access denied (403 AccessDenied)" in refused.stderr
    assert len(json.loads(run_corestate("snapshots", "--json", "--repo", url).stdout)) == 2

    for name, value in AGENT.items():
        monkeypatch.setenv(name, value)
    agent = S3Backend(parse_location(url))
    pack = next(iter(agent.list(Kind.DATA))).name
    with pytest.raises(Exception, match="AccessDenied"):
        agent.s3.client.remove_object(agent.loc.bucket, agent.key(Kind.DATA, pack))
    run_restic("-r", url, "check", "--read-data")  # restic reads with the agent's key
