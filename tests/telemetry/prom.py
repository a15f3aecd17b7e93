"""A real Prometheus and Pushgateway for tests: deploy/prometheus/*.sh on free loopback
ports with their own data directories, and a client for Prometheus's HTTP API."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.kafka_broker import free_ports

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def _script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DEPLOY / name), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300, cwd="/")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Debian's promtool (prometheus.sh unpacks it on first use)."""
    return subprocess.run(["bash", str(DEPLOY / "prometheus.sh"), "promtool", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd or DEPLOY)


@dataclass
class Prometheus:
    port: int
    data: Path

    @property
    def env(self) -> dict[str, str]:
        return {"PROMETHEUS_PORT": str(self.port), "PROMETHEUS_DATA_DIR": str(self.data),
                "PROMETHEUS_SCRAPE_INTERVAL": "1s"}

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _script("prometheus.sh", self.env, *args)

    def scrape(self, name: str, *targets: str) -> None:
        """Scrape ``targets`` (HOST:PORT of /metrics listeners) as job corestate."""
        lines = "".join(f'    - "{t}"\n' for t in targets)
        (self.data / "targets" / f"corestate-{name}.yml").write_text(f"- targets:\n{lines}")

    def scrape_pushgateway(self, address: str) -> None:
        (self.data / "targets" / "pushgateway-test.yml").write_text(
            f'- targets:\n    - "{address}"\n')

    def api(self, path: str, **params: str) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as reply:
            doc = json.loads(reply.read())
        assert doc["status"] == "success", doc
        return doc["data"]  # type: ignore[no-any-return]

    def query(self, expr: str) -> list[dict[str, object]]:
        """The instant vector (or scalar, as one sample) ``expr`` evaluates to now."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]  # type: ignore[return-value]

    def values(self, expr: str) -> list[float]:
        return [float(s["value"][1]) for s in self.query(expr)]  # type: ignore[index]

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[float]:
        """Wait until ``expr`` has a sample that is a number; its values."""
        deadline = time.monotonic() + timeout
        while True:
            vals = self.values(expr)
            if any(not math.isnan(v) for v in vals):
                return vals
            assert time.monotonic() < deadline, f"no data for {expr} after {timeout}s"
            time.sleep(0.5)


def running_prometheus(tmp: Path) -> Iterator[Prometheus]:
    [port] = free_ports(1)
    prom = Prometheus(port, tmp / "prometheus")
    proc = prom.script("start")
    assert proc.returncode == 0, f"prometheus.sh start exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    try:
        yield prom
    finally:
        prom.script("stop")


@dataclass
class Pushgateway:
    port: int
    data: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=30) as reply:
            return reply.read().decode()


def running_pushgateway(tmp: Path) -> Iterator[Pushgateway]:
    [port] = free_ports(1)
    gw = Pushgateway(port, tmp / "pushgateway")
    env = {"PUSHGATEWAY_PORT": str(port), "PUSHGATEWAY_DATA_DIR": str(gw.data)}
    proc = _script("pushgateway.sh", env, "start")
    assert proc.returncode == 0, f"pushgateway.sh start exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    try:
        yield gw
    finally:
        _script("pushgateway.sh", env, "stop")
