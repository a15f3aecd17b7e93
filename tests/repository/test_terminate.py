"""SIGTERM during a backup cleans up as Ctrl-C does: the lock is released, exit 143."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PASSWORD


def _locks(repo):
    return [n for n in os.listdir(repo / "locks") if not n.startswith(".tmp-")]


@pytest.mark.restic
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_backup_releases_its_lock(tmp_path, repo_path, corestate, restic, sig, code):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(16 * 1024 * 1024))
    proc = subprocess.Popen([sys.executable, "-m", "corestate", "backup", str(src), "--repo",
                             str(repo_path)], env={**os.environ, "CORESTATE_PASSWORD": PASSWORD},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as from a terminal, even when the suite runs as a background
                            # job (whose shell leaves SIGINT ignored, and Python with it)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not _locks(repo_path):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.005)
    time.sleep(0.2)  # well into the backup
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert _locks(repo_path) == []
    restic("-r", str(repo_path), "check")
    corestate("backup", str(src), "--repo", str(repo_path))  # and the next one runs
