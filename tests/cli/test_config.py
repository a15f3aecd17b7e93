"""The config file: a newcomer's second command finds the repository and password the
first one set up; flags and environment variables still win over it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PASSWORD = "config file test"


def run(home: Path, *args: str, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """`corestate ARGS` as a new user: HOME is ``home`` and no CORESTATE_* variable is set."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("CORESTATE_") and k not in ("XDG_CONFIG_HOME", "HOME")}
    base.update(HOME=str(home), CORESTATE_STATE_DIR=str(home / "state"), **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "corestate", *args], env=base, cwd=home,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"corestate {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "a.txt").write_text("hello\n")
    (home / "pw").write_text(PASSWORD + "\n")
    return home


def test_second_command_uses_the_saved_repository_and_password(home: Path) -> None:
    missing = run(home, "snapshots", check=False)
    assert missing.returncode == 1
    config = home / ".config" / "corestate" / "config.toml"
    assert missing.stderr.strip().splitlines() == [
        "corestate: error: no repository given: use --repo, set CORESTATE_REPOSITORY, "
        f"or name one in {config} (see `corestate config --help`)"]
    made = run(home, "init", "--repo", "repo", "--password-file", "pw")
    # init offers to make it the default
    assert "corestate config --save --repo repo --password-file pw" in made.stdout
    run(home, "config", "--save", "--repo", "repo", "--password-file", "pw")
    assert config.stat().st_mode & 0o077 == 0
    # the next commands need neither --repo nor a password
    run(home, "backup", "docs")
    listed = json.loads(run(home, "snapshots", "--json").stdout)
    assert len(listed) == 1 and listed[0]["paths"] == [str(home / "docs")]
    shown = json.loads(run(home, "config", "--json").stdout)
    assert shown == {"config_file": str(config), "repository": str(home / "repo"),
                     "repository_from": str(config), "password_file": str(home / "pw"),
                     "password_from": str(config)}
    # the file is the documented TOML, paths absolute
    assert config.read_text().splitlines()[1:] == [f'repository = "{home / "repo"}"',
                                                   f'password-file = "{home / "pw"}"']
    # once a default exists, init does not offer it again
    other = run(home, "init", "--repo", "other", env={"CORESTATE_PASSWORD": "other"})
    assert "config --save" not in other.stdout


def test_xdg_config_home_and_relative_paths(home: Path) -> None:
    xdg = home / "xdg"
    (xdg / "corestate").mkdir(parents=True)
    (xdg / "corestate" / "config.toml").write_text(
        'repository = "../repo"  # relative to this directory\npassword-file = "~/pw"\n')
    env = {"XDG_CONFIG_HOME": str(xdg)}
    run(home, "init", env={"XDG_CONFIG_HOME": str(xdg)})
    assert (xdg / "repo" / "config").is_file()
    run(home, "backup", "docs", env=env)
    assert len(json.loads(run(home, "snapshots", "--json", env=env).stdout)) == 1
    # without XDG_CONFIG_HOME, ~/.config is read: there is nothing there
    assert "no repository given" in run(home, "snapshots", check=False).stderr


def test_flags_and_environment_override_the_config_file(home: Path) -> None:
    run(home, "init", "--repo", "repo", "--password-file", "pw")
    run(home, "config", "--save", "--repo", "repo", "--password-file", "pw")
    run(home, "init", "--repo", "second", env={"CORESTATE_PASSWORD": "second password"})
    run(home, "backup", "docs", "--repo", "second", env={"CORESTATE_PASSWORD": "second password"})

    def count(*args: str, env: dict[str, str] | None = None) -> int:
        return len(json.loads(run(home, "snapshots", "--json", *args, env=env).stdout))

    assert count() == 0  # the config's repository
    assert count("--repo", "second", env={"CORESTATE_PASSWORD": "second password"}) == 1
    assert count(env={"CORESTATE_REPOSITORY": str(home / "second"),
                      "CORESTATE_PASSWORD": "second password"}) == 1
    # the config's password file belongs to the config's repository: another repository
    # given by flag does not get it (no terminal here, so no prompt either)
    refused = run(home, "snapshots", "--repo", "second", check=False)
    assert refused.returncode == 1 and "no password given" in refused.stderr
    # ... but the same repository named another way does
    assert count("--repo", f"local:{home}/./repo") == 0
    # a password from the environment beats the config's password file
    wrong = run(home, "snapshots", check=False, env={"CORESTATE_PASSWORD": "wrong"})
    assert wrong.returncode == 1 and "wrong password" in wrong.stderr
    shown = json.loads(run(home, "config", "--json", "--repo", "second",
                           env={"CORESTATE_PASSWORD": "x"}).stdout)
    assert shown["repository_from"] == "--repo" and shown["password_from"] == "CORESTATE_PASSWORD"


@pytest.mark.parametrize("text, message", [
    ('repo = "/x"\n', "unknown setting 'repo' (known: repository, password-file)"),
    ('repository = 5\n', "repository must be a non-empty string"),
    ('repository = "/x\n', "Illegal character"),
])
def test_a_bad_config_file_is_one_line_naming_it(home: Path, text: str, message: str) -> None:
    config = home / ".config" / "corestate" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(text)
    proc = run(home, "snapshots", check=False)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"corestate: error: config file {config}: ") and message in line
    # a flag does not need the file, so a broken one does not stop it
    run(home, "init", "--repo", "fine", env={"CORESTATE_PASSWORD": "x"})


def test_save_needs_a_repository(home: Path) -> None:
    proc = run(home, "config", "--save", check=False)
    assert proc.returncode == 1 and "give the repository to save with --repo" in proc.stderr
