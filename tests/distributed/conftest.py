"""Distributed mode on a real broker: deploy/kafka/broker.sh started once for the
directory on free ports with its own data directory (as tests/deploy/test_kafka_broker.py
does); each test gets its own topic prefix, so tests do not see each other's records."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kafka_broker import Broker, running_broker

from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kafka: starts a real Apache Kafka broker (deploy/kafka/broker.sh; needs Java 17+ and Maven)")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    pytest.importorskip("confluent_kafka", reason="pip install 'corestate[kafka]'")
    yield from running_broker(tmp_path_factory)


@dataclass
class Cluster:
    """One test's topics on the broker, and the commands that use them."""

    broker: Broker
    prefix: str
    partitions: int
    logs: list[Path] = field(default_factory=list)  # the workers' logs, for failures

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-c", "from corestate.cli.main import main; main()", *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "CORESTATE_PASSWORD": PASSWORD,
                "CORESTATE_STATE_DIR": "/tmp/corestate-test-state"}

    def agent(self, *paths: str, host_id: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.cli("agent", *paths, "--bootstrap", self.broker.bootstrap,
                                       "--host-id", host_id, "--once", "--prefix", self.prefix),
                              capture_output=True, text=True, timeout=300, env=self.env(), cwd=ROOT)
        if check and proc.returncode != 0:
            raise AssertionError(f"agent exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def worker(self, repo: Path, roles: str | None = None, log: Path | None = None,
               verbose: bool = False) -> subprocess.Popen[bytes]:
        """A worker process; ``roles`` None runs the default roles (all of them);
        ``verbose`` logs faust's progress too (group joins, table recovery)."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        if log and log not in self.logs:
            self.logs.append(log)
        return subprocess.Popen(self.cli(*(("-v",) if verbose else ()), "worker",
                                         "--bootstrap", self.broker.bootstrap,
                                         "--repo", str(repo), "--prefix", self.prefix,
                                         *(("--roles", roles) if roles else ())),
                                stdout=out, stderr=out, env=self.env(), cwd=ROOT)

    def log_tails(self, lines: int = 80) -> str:
        """The end of every worker log of this test, to say why something did not come."""
        return "\n".join(f"--- {log.name} (last {lines} lines):\n"
                         + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                         for log in self.logs if log.exists())

    def commits(self, want: set[str], timeout: float = 240) -> dict[str, Any]:
        """The SnapshotCommitted events of the runs ``want`` (by snapshot id), waiting for
        all of them; read without a consumer group (no join to wait for), from the start."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from corestate.schemas.codec import decode
        from corestate.schemas.events import SnapshotCommitted

        c = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                      "enable.auto.commit": "false"})
        c.assign([TopicPartition(f"{self.prefix}.snapshots", 0, OFFSET_BEGINNING)])
        found: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        try:
            while not want <= set(found) and time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is not None and not msg.error():
                    event = decode(msg.value(), SnapshotCommitted)
                    found[event.snapshot_id] = event
        finally:
            c.close()
        return found

    def consume(self, suffix: str, count: int, timeout: float = 120) -> list[tuple[bytes | None, bytes]]:
        """The first ``count`` records of ``<prefix>.<suffix>`` (key, value), waiting for them."""
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                      "auto.offset.reset": "earliest", "enable.auto.commit": "false"})
        c.subscribe([f"{self.prefix}.{suffix}"])
        out: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < count and time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is not None and not msg.error():
                    out.append((msg.key(), msg.value()))
        finally:
            c.close()
        return out


@pytest.fixture
def cluster(broker: Broker) -> Cluster:
    from corestate.connectors import kafka_topics as kt

    prefix = f"t{uuid.uuid4().hex[:10]}"
    partitions = 3
    statuses = kt.create_topics(broker.bootstrap, partitions=partitions, prefix=prefix)
    assert all(s.ok for s in statuses), [s.problems for s in statuses]
    return Cluster(broker, prefix, partitions)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker as an operator would (SIGTERM), killing it if it hangs."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
