"""Webhook notifications against a real HTTP server: JSON bodies, retries with backoff on
5xx and connection errors, no retry on 4xx, never a password or credentials; and the
commands that send them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corestate.errors import PermanentError
from corestate.telemetry.notify import Notifier
from tests.conftest import PASSWORD, run_corestate
from tests.telemetry.webhook import webhook


def test_a_notification_is_posted_as_json() -> None:
    with webhook() as hook:
        n = Notifier(hook.url, "backup", backoff=0)
        n.send("backup_failed", "storage away", repository="abcd1234")
        n.close()
        [body] = hook.bodies
    assert body["event"] == "backup_failed" and body["message"] == "storage away"
    assert body["command"] == "backup" and body["repository"] == "abcd1234"
    assert body["time"].endswith("Z") and body["host"]
    assert n.delivered == 1 and n.failed == 0


def test_server_errors_are_retried_with_growing_backoff_client_errors_are_not() -> None:
    pauses: list[float] = []
    with webhook([503, 500, 200]) as hook:
        n = Notifier(hook.url, "protect", backoff=0.5, sleep=pauses.append)
        n.send("snapshot_failed", "x")
        n.close()
        assert len(hook.bodies) == 1 and hook.attempts == 3
    assert pauses == [0.5, 1.0]
    with webhook([400]) as hook:
        n = Notifier(hook.url, "protect", backoff=0, sleep=pauses.append)
        n.send("snapshot_failed", "x")
        n.close()
        assert hook.attempts == 1 and n.failed == 1 and not hook.bodies
    with webhook([503] * 10) as hook:
        n = Notifier(hook.url, "protect", attempts=3, backoff=0)
        n.send("snapshot_failed", "x")
        n.close()
        assert hook.attempts == 3 and n.failed == 1


def test_an_unreachable_webhook_is_retried_then_given_up() -> None:
    pauses: list[float] = []
    n = Notifier("http://127.0.0.1:9/nothing-listens", "backup", attempts=3, backoff=1,
                 sleep=pauses.append, timeout=2)
    n.send("backup_failed", "x")
    n.close()
    assert n.failed == 1 and pauses == [1, 2]


def test_secrets_never_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORESTATE_PASSWORD", "hunter2-password")
    monkeypatch.setenv("CORESTATE_S3_SECRET_KEY", "s3-secret-value")
    with webhook() as hook:
        n = Notifier(hook.url, "backup", secrets=["file-password"], backoff=0)
        n.send("backup_failed", "open s3://AKIA:s3-secret-value@host/b with hunter2-password "
               "and file-password", details={"list": ["hunter2-password"]})
        n.close()
        [raw] = hook.raw
    for secret in (b"hunter2-password", b"s3-secret-value", b"file-password", b"AKIA"):
        assert secret not in raw
    assert b"s3://***@host/b" in raw


def test_only_http_urls() -> None:
    with pytest.raises(PermanentError, match="--notify takes an http"):
        Notifier("ftp://example/x", "backup")


def test_a_failed_backup_notifies_without_the_password(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    with webhook() as hook:
        proc = run_corestate("backup", str(tmp_path / "missing"), "--repo", str(repo),
                             "--notify", hook.url, check=False)
        assert proc.returncode == 1, proc.stderr
        [body] = hook.wait(1)
        assert body["event"] == "backup_failed" and "no such file" in body["message"]
        assert len(body["repository"]) == 8
        assert PASSWORD.encode() not in hook.raw[0]
        assert "SECRET-PATH" not in proc.stderr


def test_a_partial_backup_notifies(tmp_path: Path) -> None:
    repo, src = tmp_path / "repo", tmp_path / "src"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "f").write_text("x")
    os.chmod(src / "locked", 0)
    run_corestate("init", "--repo", str(repo))
    with webhook() as hook:
        proc = run_corestate("backup", str(src), "--repo", str(repo), "--notify", hook.url,
                             check=False, drop_dac=True)
        os.chmod(src / "locked", 0o755)
        assert proc.returncode == 3, proc.stderr
        [body] = hook.wait(1)
    assert body["event"] == "backup_partial" and body["errors"][0]["path"].endswith("locked")
