"""deploy/quickstart.sh as a first-time user runs it: a fresh clone, a fresh home, no
virtual environment active, then the README's next command on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _clean_env(home: Path, path: str) -> dict[str, str]:
    """A login's environment: HOME, PATH, and the machine's pip settings (its wheel
    directory and certificates); no virtual environment, nothing of CoreState's."""
    env = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    # pip's download cache only saves time; it holds no settings
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR",
                                          os.path.expanduser("~/.cache/pip"))
    return env


def test_quickstart_then_the_next_command_in_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the working tree's uncommitted edits are part of what is tested
    for rel in ("deploy/quickstart.sh", "deploy/install.sh"):
        shutil.copy2(ROOT / rel, clone / rel)
    home = tmp_path / "home"
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub" / "report.txt").write_text("first draft\n")
    home.mkdir()
    system_path = "/usr/local/bin:/usr/bin:/bin"
    proc = subprocess.run(["deploy/quickstart.sh", str(docs)], cwd=clone,
                          env=_clean_env(home, system_path), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    venv = home / ".local" / "share" / "corestate" / "venv"
    link = home / ".local" / "bin" / "corestate"
    assert link.is_symlink() and Path(os.readlink(link)) == venv / "bin" / "corestate"
    # ~/.local/bin was not on PATH: the one line to add is printed
    assert f'export PATH="{home}/.local/bin:$PATH"' in proc.stderr
    password = home / ".config" / "corestate" / "password"
    assert password.stat().st_mode & 0o077 == 0
    assert "1 snapshots" in proc.stdout

    # the user adds that line and types the next command: no --repo, no password
    user_path = f"{home}/.local/bin:{system_path}"
    env = _clean_env(home, user_path)
    listed = subprocess.run(["corestate", "snapshots", "--json"], cwd=home, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    [snap] = json.loads(listed.stdout)
    assert snap["paths"] == [str(docs)]
    restored = subprocess.run(["corestate", "restore", "latest", "--target", str(tmp_path / "out")],
                              cwd=home, env=env, capture_output=True, text=True, timeout=300)
    assert restored.returncode == 0, restored.stderr
    assert (tmp_path / "out" / str(docs).lstrip("/") / "sub" / "report.txt").read_text() == "first draft\n"

    # a second run reuses the environment, the password and the repository
    again = subprocess.run(["deploy/quickstart.sh", str(docs)], cwd=clone,
                           env=_clean_env(home, user_path), capture_output=True, text=True,
                           timeout=1800)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "generated" not in again.stderr and "creating a private" not in again.stderr
    assert "2 snapshots" in again.stdout
    assert "not on your PATH" not in again.stderr
