"""Usage errors (unknown command or option, missing argument) are one line on stderr
and exit 2, as the README says; a typo of a command names the nearest one."""

from __future__ import annotations

import pytest

from tests.conftest import run_corestate


@pytest.mark.parametrize("args, line", [
    (["snapshot"], "corestate: error: no such command 'snapshot' (did you mean 'snapshots'?)"),
    (["restor", "latest"], "corestate: error: no such command 'restor' (did you mean 'restore'?)"),
    (["snap"], "corestate: error: no such command 'snap' (did you mean 'snapshots'?)"),
    (["key", "ad"], "corestate key: error: no such command 'ad' (did you mean 'add'?)"),
    (["xyzzy"], "corestate: error: no such command 'xyzzy' (`corestate --help` lists the commands)"),
    (["restore", "latest"],
     "corestate restore: error: missing option '-t' / '--target' (see `corestate restore --help`)"),
    (["restore", "--a", "x"], "corestate restore: error: no such option: --a (did you mean --at or --path?)"),
    (["forget", "--keep-daily", "x"],
     "corestate forget: error: invalid value for '--keep-daily': 'x' is not a valid integer range "
     "(see `corestate forget --help`)"),
])
def test_usage_error_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    proc = run_corestate(*args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line]
    assert proc.stdout == ""


def test_a_group_without_its_command_shows_its_help() -> None:
    proc = run_corestate("key", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("Usage: corestate key [OPTIONS] COMMAND")
    assert "passwd" in proc.stderr
