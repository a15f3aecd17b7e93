"""Passwords are read as restic reads them, so one password file opens a repository with
either tool; an empty password is refused when a repository or key is made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

VARIANTS = {
    "two-lines": b"first line\nsecond line\n",
    "surrounding-spaces": b"  \t spaced out \t \n",
    "utf8-bom": b"\xef\xbb\xbfwith bom\n",
    "crlf": b"windows line\r\n",
    "not-utf8": b"caf\xe9 \xff\n",
}


def _env(**extra: bytes) -> dict[bytes, bytes]:
    env = {k: v for k, v in os.environb.items() if not k.startswith((b"CORESTATE_", b"RESTIC_"))}
    env[b"RESTIC_CACHE_DIR"] = b"/tmp/restic-test-cache"
    env.update({k.encode(): v for k, v in extra.items()})
    return env


def _corestate(*args: str, env: dict[bytes, bytes]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corestate", *args], env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _restic(*args: str, env: dict[bytes, bytes]) -> subprocess.CompletedProcess[str]:
    restic = shutil.which("restic")
    assert restic, "restic is not installed (deploy/install.sh --dev installs it)"
    return subprocess.run([restic, *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


@pytest.mark.restic
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_password_file_opens_the_same_repositories_in_both_tools(tmp_path, variant):
    pwfile = tmp_path / "pw"
    pwfile.write_bytes(VARIANTS[variant])
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    env = _env()
    made = _corestate("init", "--repo", str(ours), "--password-file", str(pwfile), env=env)
    assert made.returncode == 0, made.stderr
    opened = _restic("-r", str(ours), "-p", str(pwfile), "cat", "config", env=env)
    assert opened.returncode == 0, opened.stderr
    made = _restic("-r", str(theirs), "-p", str(pwfile), "init", env=env)
    assert made.returncode == 0, made.stderr
    opened = _corestate("snapshots", "--repo", str(theirs), "--password-file", str(pwfile),
                        env=env)
    assert opened.returncode == 0, opened.stderr
    # and the file does not open it as its first line alone would
    first = tmp_path / "first-line"
    first.write_bytes(VARIANTS[variant].splitlines()[0])
    if VARIANTS[variant].strip() != VARIANTS[variant].splitlines()[0].strip():
        wrong = _corestate("snapshots", "--repo", str(ours), "--password-file", str(first),
                           env=env)
        assert wrong.returncode == 1 and "wrong password" in wrong.stderr


@pytest.mark.restic
def test_a_password_that_is_not_utf8_is_taken_as_bytes(tmp_path):
    repo = tmp_path / "repo"
    env = _env(CORESTATE_PASSWORD=b"\xff\xfe secret", RESTIC_PASSWORD=b"\xff\xfe secret")
    made = _corestate("init", "--repo", str(repo), env=env)
    assert made.returncode == 0 and "Traceback" not in made.stderr, made.stderr
    opened = _restic("-r", str(repo), "cat", "config", env=env)
    assert opened.returncode == 0, opened.stderr
    wrong = _corestate("snapshots", "--repo", str(repo),
                       env=_env(CORESTATE_PASSWORD=b"\xff\xfd secret"))
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr


@pytest.mark.parametrize("source", ["empty-env", "empty-file", "newline-file"])
def test_an_empty_password_is_not_a_password(tmp_path, source):
    repo = tmp_path / "repo"
    pwfile = tmp_path / "pw"
    pwfile.write_bytes(b"" if source == "empty-file" else b"\n\r\n")
    if source == "empty-env":
        proc = _corestate("init", "--repo", str(repo), env=_env(CORESTATE_PASSWORD=b""))
    else:
        proc = _corestate("init", "--repo", str(repo), "--password-file", str(pwfile), env=_env())
    assert proc.returncode == 1
    assert proc.stderr.strip() == "corestate: error: an empty password is not a password"
    assert not repo.exists()


def test_key_add_refuses_an_empty_password_file(tmp_path):
    repo = tmp_path / "repo"
    env = _env(CORESTATE_PASSWORD=b"good one")
    assert _corestate("init", "--repo", str(repo), env=env).returncode == 0
    empty = tmp_path / "empty"
    empty.write_bytes(b" \n")
    proc = _corestate("key", "add", "--new-password-file", str(empty), "--repo", str(repo), env=env)
    assert proc.returncode == 1 and "an empty password is not a password" in proc.stderr
    assert len(os.listdir(repo / "keys")) == 1
