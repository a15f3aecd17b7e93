"""Incremental runs of the watching agent on a real broker: after the first (full) run,
a run sends only what changed and the committer takes the rest from the parent
snapshot; the real restic checks and restores the result."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corestate.schemas.codec import decode
from corestate.schemas.events import DataSegment, FileBegin, SnapshotCommitted, SnapshotMarker
from tests.conftest import restored_root, run_corestate, run_restic, tree_manifest
from tests.distributed.conftest import Cluster, stop

pytestmark = [pytest.mark.kafka]


class WatchingAgent:
    """A running `corestate agent PATH --json` (no --once); its JSON lines collected."""

    def __init__(self, cluster: Cluster, src: Path, log: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            cluster.cli("agent", str(src), "--bootstrap", cluster.broker.bootstrap, "--host-id", "h1",
                        "--prefix", cluster.prefix, "--json", *extra),
            env=cluster.env(), stdout=subprocess.PIPE, stderr=open(log, "ab"))
        self.messages: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.messages.append(json.loads(line))

    def runs(self) -> list[dict[str, Any]]:
        return [m for m in list(self.messages) if m.get("message_type") == "run"]

    def settle(self, after: int, quiet: float = 3.0, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Wait for more than ``after`` runs, then until no new run came for ``quiet`` s."""
        deadline = time.monotonic() + timeout
        seen, since = len(self.runs()), time.monotonic()
        while True:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.messages
            n = len(self.runs())
            if n != seen:
                seen, since = n, time.monotonic()
            if n > after and time.monotonic() - since >= quiet:
                return self.runs()
            time.sleep(0.1)

    def stop(self) -> int:
        stop(self.proc)  # type: ignore[arg-type]
        self._reader.join(10)
        return self.proc.returncode


def commits(cluster: Cluster, want: set[str], timeout: float = 120.0) -> dict[str, SnapshotCommitted]:
    """The SnapshotCommitted events of the runs ``want``, waiting for all of them."""
    found = cluster.commits(want, timeout)
    assert want <= set(found), f"committed {sorted(found)}, want {sorted(want)}"
    return found


def captures(cluster: Cluster) -> list[Any]:
    """Every event on the captures topic."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": cluster.broker.bootstrap, "group.id": "count"})
    topic = f"{cluster.prefix}.captures"
    try:
        total = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in range(cluster.partitions))
    finally:
        c.close()
    records = cluster.consume("captures", total)
    assert len(records) == total
    return [decode(v) for _, v in records]


def test_runs_after_the_first_send_only_what_changed(tmp_path: Path, cluster: Cluster) -> None:
    src = tmp_path / "src"
    for d in ("edit", "old/inner", "keep"):
        (src / d).mkdir(parents=True)
    big = src / "big.bin"  # beside the file that will be deleted: its directory changes
    big.write_bytes(os.urandom(12 << 20))
    (src / "gone.txt").write_text("deleted while watched\n")
    (src / "edit" / "f.txt").write_text("version 1\n")
    (src / "old" / "a.txt").write_text("in a directory that will be renamed\n")
    (src / "old" / "inner" / "b.txt").write_text("deeper\n")
    (src / "keep" / "k.txt").write_text("never touched\n")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    log = tmp_path / "worker.log"
    worker = cluster.worker(repo, log=log)
    agent = WatchingAgent(cluster, src, tmp_path / "agent.log", "--no-detect")
    try:
        [first_run] = agent.settle(after=0, quiet=0.5)
        assert first_run["parent"] is None  # the first run of a session is full
        first = commits(cluster, {first_run["snapshot_id"]})[first_run["snapshot_id"]]
        before = tree_manifest(src)
        time.sleep(1.0)  # let the agent see the commit: the next run builds on it

        (src / "edit" / "f.txt").write_text("version 2, longer\n")
        (src / "gone.txt").unlink()
        (src / "old").rename(src / "new")
        (src / "new" / "inner" / "c.txt").write_text("created in the renamed directory\n")
        runs = agent.settle(after=1)
        last = runs[-1]
        done = commits(cluster, {r["snapshot_id"] for r in runs})
        assert agent.stop() == 0
    finally:
        agent.stop()
        stop(worker)
    assert all(r["parent"] for r in runs[1:]), runs  # every later run is incremental
    for prev, run in zip(runs, runs[1:]):
        assert run["parent"] == done[prev["snapshot_id"]].restic_id
    snaps = json.loads(run_restic("-r", str(repo), "snapshots", "--json").stdout)
    newest = done[last["snapshot_id"]]
    assert {s["id"]: s.get("parent") for s in snaps}[newest.restic_id] == last["parent"]
    assert newest.files == 6  # big, k, f, a, b, c: the whole tree, not what was sent

    # the new snapshot is exactly the tree now; the first one the tree before
    target = tmp_path / "out"
    run_restic("-r", str(repo), "restore", newest.restic_id, "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)
    run_restic("-r", str(repo), "restore", first.restic_id, "--target", str(tmp_path / "old"))
    assert tree_manifest(restored_root(tmp_path / "old", src)) == before
    run_restic("-r", str(repo), "check", "--read-data")

    # the unchanged big file travelled once: in the first run, not in the later ones
    events = captures(cluster)
    bigpath = os.fsencode(str(big))
    segments = [e for e in events if isinstance(e, DataSegment) and e.path == bigpath]
    assert len(segments) == 12 and {e.snapshot_id for e in segments} == {first_run["snapshot_id"]}
    later = {r["snapshot_id"] for r in runs[1:]}
    sent = {e.path for e in events if isinstance(e, FileBegin) and e.snapshot_id in later}
    assert os.fsencode(str(src / "keep" / "k.txt")) not in sent
    markers = [e for e in events if isinstance(e, SnapshotMarker) and e.snapshot_id in later]
    assert os.fsencode(str(src / "old")) in {p for m in markers for p in m.removed}
    assert os.fsencode(str(src / "new")) in {p for m in markers for p in m.rescanned}


def test_a_restarted_agent_starts_with_a_full_run(tmp_path: Path, cluster: Cluster) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("version 1\n")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    worker = cluster.worker(repo, log=tmp_path / "worker.log")
    try:
        agent = WatchingAgent(cluster, src, tmp_path / "agent.log", "--no-detect")
        [one] = agent.settle(after=0, quiet=0.5)
        commits(cluster, {one["snapshot_id"]})
        assert agent.stop() == 0
        (src / "d" / "f.txt").write_text("changed while no agent watched\n")
        (src / "d" / "new.txt").write_text("created while no agent watched\n")
        agent = WatchingAgent(cluster, src, tmp_path / "agent.log", "--no-detect")
        [two] = agent.settle(after=0, quiet=0.5)
        assert two["parent"] is None  # nothing watched in between: a full run
        done = commits(cluster, {two["snapshot_id"]})[two["snapshot_id"]]
        assert agent.stop() == 0
    finally:
        stop(worker)
    target = tmp_path / "out"
    run_restic("-r", str(repo), "restore", done.restic_id, "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)


def test_an_agent_run_once_sends_only_what_changed_since_its_last_committed_run(
        tmp_path: Path, cluster: Cluster) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    big = src / "big.bin"
    big.write_bytes(os.urandom(6 << 20))
    (src / "dir" / "f.txt").write_text("version 1\n")
    (src / "gone.txt").write_text("will be deleted\n")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    worker = cluster.worker(repo, log=tmp_path / "worker.log")

    def once(*extra: str) -> dict[str, Any]:
        proc = subprocess.run(cluster.cli("agent", str(src), "--bootstrap", cluster.broker.bootstrap,
                                          "--host-id", "h1", "--once", "--prefix", cluster.prefix,
                                          "--json", *extra),
                              capture_output=True, text=True, timeout=300, env=cluster.env())
        assert proc.returncode == 0, proc.stderr
        [run] = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
        return run

    try:
        first = once()
        assert first["parent"] is None
        c1 = commits(cluster, {first["snapshot_id"]})[first["snapshot_id"]]
        unchanged = once()  # the same tree: markers and the source directory only
        assert unchanged["parent"] == c1.restic_id and unchanged["files"] == 0, unchanged
        c2 = commits(cluster, {unchanged["snapshot_id"]})[unchanged["snapshot_id"]]
        (src / "dir" / "f.txt").write_text("version 2, longer\n")
        (src / "gone.txt").unlink()
        (src / "dir" / "new.txt").write_text("new\n")
        changed = once()
        assert changed["parent"] == c2.restic_id and changed["files"] == 2, changed
        c3 = commits(cluster, {changed["snapshot_id"]})[changed["snapshot_id"]]
        forced = once("--full")
        assert forced["parent"] is None and forced["files"] == 3, forced
    finally:
        stop(worker)
    assert worker.returncode == 0
    target = tmp_path / "out"
    run_restic("-r", str(repo), "restore", c3.restic_id, "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)
    run_restic("-r", str(repo), "check", "--read-data")
    # the big file travelled in the first run and the forced full one only
    events = captures(cluster)
    sent = {e.snapshot_id for e in events if isinstance(e, DataSegment) and e.path == os.fsencode(str(big))}
    assert sent == {first["snapshot_id"], forced["snapshot_id"]}


def test_an_agent_run_once_after_a_run_never_committed_sends_everything(
        tmp_path: Path, cluster: Cluster) -> None:
    """No worker committed the last run (none was running, or it rejected the run): the
    next run cannot build on it, so it is full, and the snapshot is complete."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    cluster.agent(str(src), host_id="h1")  # published, not committed: no worker yet
    (src / "b.txt").write_text("b\n")
    proc = subprocess.run(cluster.cli("agent", str(src), "--bootstrap", cluster.broker.bootstrap,
                                      "--host-id", "h1", "--once", "--prefix", cluster.prefix, "--json"),
                          capture_output=True, text=True, timeout=300, env=cluster.env())
    assert proc.returncode == 0, proc.stderr
    [run] = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert run["parent"] is None and run["files"] == 2, run
    assert "has no committed snapshot: sending everything" in proc.stderr
    worker = cluster.worker(repo, log=tmp_path / "worker.log")
    try:
        done = commits(cluster, {run["snapshot_id"]})
    finally:
        stop(worker)
    target = tmp_path / "out"
    run_restic("-r", str(repo), "restore", done[run["snapshot_id"]].restic_id, "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)
