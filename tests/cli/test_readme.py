"""The README's first steps say what the commands do: the exit codes the CLI really
uses, what install.sh does and does not fetch, and a dev stack that stops the worker it
starts before it stops the broker."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_corestate

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _block_after(heading: str) -> list[str]:
    section = README.split(heading, 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()
            if line.split("#", 1)[0].strip()]


def test_exit_codes_agree_with_the_cli() -> None:
    for text in (README, run_corestate("--help").stdout):
        flat = " ".join(text.split())
        assert "0 success; 1 error; 2 usage error" in flat
        assert "3 backup saved but some files could not be read; 130 interrupted" in flat
    assert run_corestate("no-such-command", check=False).returncode == 2


def test_install_is_not_said_to_fetch_kafka_jars() -> None:
    for line in README.splitlines():
        if "install.sh" in line:
            assert "Kafka jars" not in line, line
    assert "fetches Kafka's jars with Maven" in README


def test_dev_stack_stops_its_worker_before_the_broker() -> None:
    steps = _block_after("## Dev stack")
    worker = next(i for i, s in enumerate(steps) if s.startswith("corestate worker"))
    assert steps[worker].endswith("worker=$!")
    kill = next(i for i, s in enumerate(steps) if s.startswith("kill $worker"))
    stop = next(i for i, s in enumerate(steps) if s == "deploy/kafka/broker.sh stop")
    assert worker < kill < stop


def test_quick_start_second_command_needs_no_repository_option() -> None:
    steps = _block_after("## Quick start")
    assert steps == ["deploy/quickstart.sh ~/Documents", "corestate snapshots"]
