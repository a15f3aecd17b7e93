"""`corestate key add` / `key passwd` without a terminal: the new password comes from
--new-password-file or CORESTATE_NEW_PASSWORD_FILE, and without either the command says
that no new password was given and exits 1 (it used to print Python's GetPassWarning
and exit 130 as if interrupted)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time

import pytest

from tests.conftest import PASSWORD, run_corestate


@pytest.mark.parametrize("command", ["add", "passwd"])
def test_no_terminal_and_no_new_password_file(repo_path, command: str) -> None:
    proc = run_corestate("key", command, "--repo", str(repo_path), check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "corestate: error: no new password given: use --new-password-file FILE (or "
        "CORESTATE_NEW_PASSWORD_FILE), or run on a terminal to be asked"]
    keys = json.loads(run_corestate("key", "list", "--json", "--repo", str(repo_path)).stdout)
    assert len(keys) == 1  # nothing was added or removed


def test_new_password_file_from_the_environment(tmp_path, repo_path) -> None:
    new_pw = tmp_path / "new"
    new_pw.write_text("from the environment\n")
    run_corestate("key", "add", "--repo", str(repo_path),
                  env={"CORESTATE_NEW_PASSWORD_FILE": str(new_pw)})
    run_corestate("snapshots", "--repo", str(repo_path),
                  env={"CORESTATE_PASSWORD": "from the environment"})


def test_end_of_input_at_the_prompt_is_no_password(repo_path) -> None:
    """On a terminal, Ctrl-D at the prompt is "no password given", not "interrupted"."""
    env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD, "CORESTATE_STATE_DIR": "/tmp/corestate-test-state"}
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal
        os.execve(sys.executable, [sys.executable, "-m", "corestate", "key", "add",
                                   "--repo", str(repo_path)], env)
    out = b""
    deadline = time.monotonic() + 120
    sent = False
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if not sent and b"enter new password" in out:
            os.write(fd, b"\x04")  # Ctrl-D
            sent = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert sent, out
    assert os.waitstatus_to_exitcode(status) == 1, out
    assert b"no password given" in out and b"interrupted" not in out


def test_key_add_help_names_the_environment_variable() -> None:
    out = subprocess.run([sys.executable, "-m", "corestate", "key", "add", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "CORESTATE_NEW_PASSWORD_FILE" in out
