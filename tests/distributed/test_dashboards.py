"""The dashboards, proved against a real Prometheus (Debian's, deploy/prometheus/prometheus.sh)
scraping real CoreState processes: ``corestate protect --metrics-listen`` with detection,
a worker and a watching agent on the real broker, and a one-shot backup and check
pushing to a real Pushgateway. After changes and an in-place encryption in both modes
(alerts) and one undecodable record (a dead letter), every panel query of every
dashboard in deploy/grafana/dashboards is evaluated through Prometheus's HTTP API and
must return data: at least one series, at least one of them a number (not NaN).

No Grafana server installs on these machines, so no screenshot is taken: the queries
are what a Grafana would send, with its variables substituted."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agents.test_sentinel import encrypt, make_docs
from tests.conftest import PASSWORD, run_corestate
from tests.distributed.conftest import ROOT, Cluster, stop
from tests.distributed.test_incremental import WatchingAgent
from tests.kafka_broker import free_ports
from tests.telemetry.prom import (Prometheus, Pushgateway, running_prometheus,
                                  running_pushgateway)
from tests.telemetry.test_instruments import dashboard_queries

pytestmark = [pytest.mark.kafka]

# What Grafana would put in: every repository and host, and a rate window that covers
# the whole test.
GRAFANA = {"$__rate_interval": "5m", "$repository": ".*", "$host": ".*"}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    yield from running_prometheus(tmp_path_factory.mktemp("prometheus"))


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    yield from running_pushgateway(tmp_path_factory.mktemp("pushgateway"))


class Lines:
    """A process's JSON lines on stdout, read on a thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.messages: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.messages.append(json.loads(line))

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in list(self.messages) if m.get("message_type") == kind]
            if found:
                return found[0]
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                f"no {kind} within {timeout}s: {self.messages}"
            time.sleep(0.1)


def attack(docs: list[Path]) -> None:
    for d in docs:  # in-place encryption, 5 files a second
        encrypt(d)
        time.sleep(0.2)


def test_every_dashboard_panel_shows_data(tmp_path: Path, cluster: Cluster,
                                          prometheus: Prometheus, pushgateway: Pushgateway) -> None:
    ports = free_ports(3)
    listen = [f"127.0.0.1:{p}" for p in ports]
    prometheus.scrape("test", *listen)
    prometheus.scrape_pushgateway(pushgateway.address)
    env = {**cluster.env(), "CORESTATE_STATE_DIR": str(tmp_path / "state")}

    # embedded: a protect with detection, a one-shot backup and a check that push
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    protected = tmp_path / "protected"
    protected_docs = make_docs(protected, 12)
    protect = subprocess.Popen(
        [sys.executable, "-m", "corestate", "protect", str(protected), "--repo", str(repo),
         "--json", "--alerts", str(tmp_path / "alerts.jsonl"), "--interval", "0.5",
         "--host", "protect-host", "--metrics-listen", listen[0]],
        env=env, stdout=subprocess.PIPE, stderr=open(tmp_path / "protect.log", "ab"), cwd=ROOT)
    # distributed: a worker and a watching agent (detection on by default)
    agent_repo = tmp_path / "agent-repo"
    run_corestate("init", "--repo", str(agent_repo))
    worker = subprocess.Popen(
        cluster.cli("worker", "--bootstrap", cluster.broker.bootstrap, "--repo", str(agent_repo),
                    "--prefix", cluster.prefix, "--metrics-listen", listen[1]),
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "ab"), cwd=ROOT)
    watched = tmp_path / "watched"
    watched_docs = make_docs(watched, 12)
    agent = WatchingAgent(cluster, watched, tmp_path / "agent.log", "--metrics-listen", listen[2])
    protect_lines = Lines(protect)
    try:
        other = tmp_path / "other"
        other.mkdir()
        (other / "notes.txt").write_text("a cron job's backup\n")
        url = f"http://{pushgateway.address}"
        run_corestate("backup", str(other), "--repo", str(repo), "--metrics-push", url, env=env)
        run_corestate("check", "--repo", str(repo), "--metrics-push", url, env=env)

        protect_lines.wait_for("snapshot", timeout=60)
        agent.settle(after=0, quiet=0.5)
        time.sleep(2.0)  # both sketch the existing files in the background
        for root in (protected, watched):  # ordinary work
            for i in range(5):
                (root / f"new-{i}.txt").write_text(f"note {i}\n" * 50)
        time.sleep(2.0)
        attack(protected_docs[:6])
        attack(watched_docs[:6])
        protect_lines.wait_for("alert", timeout=60)
        deadline = time.monotonic() + 60
        while not any(m.get("message_type") == "alert" for m in agent.messages):
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)

        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": cluster.broker.bootstrap})
        producer.produce(f"{cluster.prefix}.captures", key=b"h1\0/x", value=b"not an event")
        assert producer.flush(30) == 0

        for expr in ('sum(corestate_kafka_dead_letters_total{reason="undecodable"}) > 0',
                     "sum(corestate_anomaly_alerts_total) >= 2",
                     "sum(corestate_snapshot_commit_latency_seconds_count) > 0",
                     "sum(corestate_protect_rpo_seconds_count) > 0",
                     'up{job="corestate"} == 1', 'up{job="pushgateway"} == 1',
                     "corestate_check_success == 1"):
            prometheus.wait_for(expr, timeout=120)
        assert len(prometheus.values('up{job="corestate"} == 1')) == 3
        # a rate needs an increase between two scrapes: commits that all came before the
        # first scrape give none, so one more change on each side, seen in the rates
        for root in (protected, watched):
            (root / "late.txt").write_text("one more change\n")
        for expr in ("sum(rate(corestate_snapshot_commit_latency_seconds_count[5m])) > 0",
                     "sum(rate(corestate_protect_rpo_seconds_count[5m])) > 0"):
            prometheus.wait_for(expr, timeout=120)
        time.sleep(3.0)  # a few more scrapes, so rates have two points everywhere

        queries = dashboard_queries()
        problems = []
        for uid, title, expr in queries:
            query = expr
            for var, value in GRAFANA.items():
                query = query.replace(var, value)
            assert "$" not in query, query
            values = prometheus.values(query)
            if not values:
                problems.append(f"{uid} / {title}: no series for {query}")
            elif all(math.isnan(v) for v in values):
                problems.append(f"{uid} / {title}: only NaN for {query}")
        assert not problems, "\n".join(problems)
        assert len(queries) >= 40
    finally:
        protect.terminate()
        try:
            protect.wait(60)
        except subprocess.TimeoutExpired:
            protect.kill()
        agent.stop()
        stop(worker)
    assert protect.returncode == 0, (tmp_path / "protect.log").read_text()
