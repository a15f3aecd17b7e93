"""Soak: many distributed runs under faults, every committed snapshot compared with its
source tree. Nothing may be lost, ever.

Each *run* builds a fresh tree with awkward entries (odd names, a sparse file, a fifo,
hard links, a deep directory, files of many sizes), starts one or two workers and then
``corestate agent --once`` at once, while a competing process keeps a core busy. While
the run is on its way the harness picks, at random, some of: SIGKILL a worker (and start
another), start an extra worker and stop it again (rebalances); once per soak of ten
runs or more it restarts the broker mid-run. A run is *complete* when its snapshot is
committed; it is then restored with the real restic and compared entry by entry with
its tree (content, mode, mtime, size, link targets, hard links), and the repository is
checked with ``restic check --read-data``.

The report (printed, and in the assertion message) counts runs, kills, rebalances,
broker restarts, runs the committer *refused* as incomplete (a manifest missing: the run
goes to the DLQ, never into a snapshot) and sent again, as an agent's next run would,
runs not committed in time and *differences* (runs whose restored tree differs from the
source). Assertion: no difference and no lost run (every run, resent if refused, ends in
a complete snapshot); refusals are reported (goal: none).

Short form (CI): 3 runs. ``CORESTATE_SLOW=1``: 50 runs (``CORESTATE_SOAK_RUNS`` to
choose). Run the long form with
``CORESTATE_SLOW=1 python -m pytest tests/distributed/test_soak.py -s -p no:cacheprovider``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corestate.schemas.codec import decode
from corestate.schemas.events import DeadLetter, SnapshotCommitted
from tests.conftest import restored_root, run_corestate, run_restic, tree_manifest
from tests.distributed.conftest import Cluster, stop

SLOW = os.environ.get("CORESTATE_SLOW") == "1"
RUNS = int(os.environ.get("CORESTATE_SOAK_RUNS", "50" if SLOW else "3"))
COMMIT_TIMEOUT = 240.0

pytestmark = [pytest.mark.kafka, pytest.mark.restic, pytest.mark.slow,
              pytest.mark.timeout(max(600, RUNS * 300))]


@dataclass
class Report:
    runs: int = 0
    committed: int = 0
    kills: int = 0
    rebalances: int = 0
    broker_restarts: int = 0
    agent_retries: int = 0
    rejected: list[str] = field(default_factory=list)  # refused as incomplete, then resent
    not_committed: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"soak: {self.runs} runs, {self.committed} committed, {self.kills} worker kills, "
                f"{self.rebalances} extra workers started and stopped, {self.broker_restarts} broker "
                f"restarts, {self.agent_retries} agent retries, {len(self.rejected)} refused as "
                f"incomplete and resent, {len(self.not_committed)} not committed, "
                f"{len(self.differences)} with differences, {self.seconds:.0f} s")


def make_tree(root: Path, rng: random.Random) -> Path:
    src = root / "src"
    (src / "docs").mkdir(parents=True)
    for i in range(rng.randint(60, 160)):
        size = rng.choice([0, 1, 100, 4096, 70_000, 600_000, 1_500_000])
        (src / "docs" / f"note-{i:03d}.txt").write_bytes(rng.randbytes(size))
    for name in ("sp ace", "tab\tname", "ünï", "star*?", "new\nline", "-dash"):
        (src / name).write_text(name)
    (src / os.fsdecode(b"latin-\xe9")).write_text("latin-1 name")
    with open(src / "sparse", "wb") as f:
        f.truncate(8 << 20)
        f.seek(3 << 20)
        f.write(b"middle")
    os.mkfifo(src / "fifo")
    os.link(src / "docs" / "note-000.txt", src / "hard")
    os.symlink("docs/note-001.txt", src / "link")
    deep = src / "deep"
    for i in range(40):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("bottom")
    return src


class Workers:
    """The run's workers: started, killed, replaced."""

    def __init__(self, cluster: Cluster, repo: Path, log: Path) -> None:
        self.cluster, self.repo, self.log = cluster, repo, log
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        proc = self.cluster.worker(self.repo, log=self.log)
        self.procs.append(proc)
        return proc

    def kill_one(self, rng: random.Random) -> None:
        live = [p for p in self.procs if p.poll() is None]
        if live:
            victim = rng.choice(live)
            victim.send_signal(signal.SIGKILL)
            victim.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            stop(proc)


def publish(cluster: Cluster, src: Path, report: Report) -> str:
    """The agent's run id, once the agent has published (retried after a broker restart)."""
    for attempt in range(5):
        proc = subprocess.run(cluster.cli("agent", str(src), "--bootstrap", cluster.broker.bootstrap,
                                          "--host-id", "soak", "--once", "--full", "--prefix",
                                          cluster.prefix, "--json"),
                              capture_output=True, text=True, timeout=300, env=cluster.env())
        if proc.returncode == 0:
            import json
            [run] = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
            return str(run["snapshot_id"])
        report.agent_retries += 1
        time.sleep(2)
    raise AssertionError(f"the agent failed 5 times: {proc.stderr}")


def outcome(cluster: Cluster, snapshot_id: str, timeout: float
            ) -> tuple[SnapshotCommitted | None, str | None]:
    """The run's commit, or the reason the committer refused it (from the DLQ), or
    neither within ``timeout``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    dlq = Consumer({"bootstrap.servers": cluster.broker.bootstrap, "group.id": "soak-dlq",
                    "enable.auto.commit": "false"})
    dlq.assign([TopicPartition(f"{cluster.prefix}.dlq", 0, OFFSET_BEGINNING)])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            found = cluster.commits({snapshot_id}, timeout=5).get(snapshot_id)
            if found is not None:
                return found, None
            while (msg := dlq.poll(0.2)) is not None:
                if msg.error():
                    continue
                letter = decode(msg.value(), DeadLetter)
                if snapshot_id in letter.reason:
                    return None, letter.reason
    finally:
        dlq.close()
    return None, None


def one_run(cluster: Cluster, root: Path, rng: random.Random, report: Report,
            restart_broker: bool) -> None:
    src = make_tree(root, rng)
    repo = root / "repo"
    run_corestate("init", "--repo", str(repo))
    workers = Workers(cluster, repo, root / "worker.log")
    for _ in range(rng.choice([1, 2])):
        workers.start()
    try:
        chaos = rng.sample(["kill", "rebalance", "none"], k=rng.randint(1, 2))
        if restart_broker:
            chaos.append("broker")
        # the agent publishes at once, while the workers are still joining their group
        snapshot_id = publish(cluster, src, report)
        for action in chaos:
            time.sleep(rng.uniform(0.0, 2.0))
            if action == "kill":
                workers.kill_one(rng)
                report.kills += 1
                workers.start()
            elif action == "rebalance":
                extra = workers.start()
                time.sleep(rng.uniform(1.0, 4.0))
                stop(extra)
                report.rebalances += 1
            elif action == "broker":
                assert cluster.broker.script("stop", timeout=120).returncode == 0
                time.sleep(rng.uniform(1.0, 6.0))
                cluster.broker.start()
                report.broker_restarts += 1
        if not any(p.poll() is None for p in workers.procs):
            workers.start()
        event = None
        for _ in range(3):  # a run the committer refused (incomplete) is sent again
            event, reason = outcome(cluster, snapshot_id, COMMIT_TIMEOUT)
            if reason is None:
                break
            report.rejected.append(f"{root.name}: {reason}")
            snapshot_id = publish(cluster, src, report)
    finally:
        workers.stop_all()
    report.runs += 1
    if event is None:
        report.not_committed.append(f"{root.name}: {snapshot_id}")
        return
    report.committed += 1
    target = root / "out"
    run_restic("-r", str(repo), "restore", event.restic_id, "--target", str(target))
    want, got = tree_manifest(src), tree_manifest(restored_root(target, src))
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        wrong = sorted(p for p in set(want) & set(got) if want[p] != got[p])[:5]
        report.differences.append(f"{root.name}: missing {missing}, differing {wrong}, "
                                  f"extra {sorted(set(got) - set(want))[:5]}")
    run_restic("-r", str(repo), "check", "--read-data")


def test_soak_distributed_runs_under_faults_lose_nothing(tmp_path: Path, cluster: Cluster) -> None:
    rng = random.Random(int(os.environ.get("CORESTATE_SOAK_SEED", "11")))
    report = Report()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    started = time.monotonic()
    try:
        for i in range(RUNS):
            one_run(cluster, tmp_path / f"run{i:02d}", rng, report,
                    restart_broker=RUNS >= 10 and i == RUNS // 2)
    finally:
        burner.kill()
        burner.wait()
        report.seconds = time.monotonic() - started
        print(report.line())
        for line in report.rejected:
            print("refused:", line)
    assert report.runs == RUNS
    assert not report.not_committed and not report.differences, \
        f"{report.line()}\nnot committed: {report.not_committed}\ndifferences: {report.differences}"
