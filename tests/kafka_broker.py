"""A real Apache Kafka broker for tests: deploy/kafka/broker.sh on free loopback ports
with its own data directory. Test modules make a fixture of :func:`running_broker`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "broker.sh"


@dataclass
class Broker:
    port: int
    cport: int
    data: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @cached_property
    def admin(self) -> Any:
        # Kept for the module: an AdminClient destroyed early fails its pending futures.
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap})

    def script(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run the script for this broker; the first start also fetches the jars."""
        env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.cport),
               "KAFKA_DATA_DIR": str(self.data), "PYTHON": sys.executable}
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd="/")

    def start(self) -> subprocess.CompletedProcess[str]:
        proc = self.script("start")
        assert proc.returncode == 0, f"broker.sh start exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def running_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Start a broker, yield it, stop it."""
    port, cport = free_ports(2)
    b = Broker(port, cport, tmp_path_factory.mktemp("kafka") / "data")
    b.start()
    try:
        yield b
    finally:
        b.script("stop", timeout=120)
