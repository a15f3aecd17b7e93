"""A distributed backup end to end on a real broker: `corestate agent --once` publishes,
`corestate worker` (all roles, one process) chunks, stores and commits, and the real
restic checks and restores the result."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from corestate.connectors.url import open_backend
from corestate.pipeline.chunk import chunk_stream
from corestate.repository.pack import BlobType
from corestate.repository.repository import Repository
from corestate.schemas.codec import decode
from corestate.schemas.events import DeadLetter, SnapshotCommitted
from tests.conftest import PASSWORD, build_rich_tree, restored_root, run_corestate, run_restic, tree_manifest
from tests.distributed.conftest import Cluster, stop

pytestmark = [pytest.mark.kafka]


def init_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    run_corestate("init", "--repo", str(repo))
    return repo


def committed(cluster: Cluster, n: int, timeout: float = 120) -> list[SnapshotCommitted]:
    records = cluster.consume("snapshots", n, timeout)
    assert len(records) == n, f"{len(records)} of {n} snapshots committed\n{cluster.log_tails()}"
    return [decode(v, SnapshotCommitted) for _, v in records]

def assert_restic_restores(repo: Path, event: SnapshotCommitted, src: Path, target: Path) -> None:
    """The real restic accepts the repository and restores the snapshot as ``src``."""
    run_restic("-r", str(repo), "check", "--read-data")
    run_restic("-r", str(repo), "restore", event.restic_id, "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)



def test_distributed_backup_restores_byte_identically_with_restic(tmp_path: Path, cluster: Cluster) -> None:
    src = build_rich_tree(tmp_path)
    repo = init_repo(tmp_path)
    worker = cluster.worker(repo, log=tmp_path / "worker.log")
    try:
        cluster.agent(str(src), host_id="h1")
        [event] = committed(cluster, 1)
    finally:
        stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert worker.returncode == 0, log
    assert event.host == "h1" and event.paths == (str(src),)
    # one line per committed snapshot, at the default log level
    assert re.search(rf"snapshot {event.restic_id[:8]} committed: host h1, {event.files} files, "
                     r"[\d.]+ MiB added, [\d.]+ s after its run began", log), log
    run_restic("-r", str(repo), "check", "--read-data")
    snaps = run_restic("-r", str(repo), "snapshots", "--json").stdout
    assert event.restic_id in snaps and '"hostname":"h1"' in snaps.replace(" ", "")
    target = tmp_path / "out"
    run_restic("-r", str(repo), "restore", event.restic_id, "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)


def test_blobs_shared_by_two_agents_are_stored_once(tmp_path: Path, cluster: Cluster) -> None:
    shared = os.urandom(3 * 1024 * 1024 + 5)
    trees = []
    own: dict[str, bytes] = {}
    for name in ("a", "b"):
        root = tmp_path / f"host-{name}"
        root.mkdir()
        (root / "same.bin").write_bytes(shared)
        own[name] = os.urandom(700_000)
        (root / f"own-{name}.bin").write_bytes(own[name])
        trees.append(root)
    repo = init_repo(tmp_path)
    worker = cluster.worker(repo, log=tmp_path / "worker.log")
    try:
        cluster.agent(str(trees[0]), host_id="host-a")
        cluster.agent(str(trees[1]), host_id="host-b")
        events = committed(cluster, 2)
    finally:
        stop(worker)
    assert {e.host for e in events} == {"host-a", "host-b"}
    run_restic("-r", str(repo), "check", "--read-data")
    # every data blob of both trees is stored exactly once: one index entry, one copy
    expected = {hashlib.sha256(c).digest() for data in (shared, *own.values())
                for c in chunk_stream(io.BytesIO(data))}
    r = Repository.open(open_backend(str(repo)), PASSWORD)
    r.load_index()
    stored = [b for b in r.index.blob_ids() if r.index.has_type(b, BlobType.DATA)]
    assert sorted(stored) == sorted(expected)
    assert all(len(r.index.all_locations(b)) == 1 for b in expected)
    for e, root in zip(sorted(events, key=lambda e: e.host), trees):
        target = tmp_path / f"out-{e.host}"
        run_restic("-r", str(repo), "restore", e.restic_id, "--target", str(target))
        assert tree_manifest(restored_root(target, root)) == tree_manifest(root)


def test_a_malformed_capture_goes_to_the_dlq_and_the_backup_completes(tmp_path: Path,
                                                                      cluster: Cluster) -> None:
    from confluent_kafka import Producer

    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"payload\n" * 1000)
    repo = init_repo(tmp_path)
    p = Producer({"bootstrap.servers": cluster.broker.bootstrap})
    p.produce(f"{cluster.prefix}.captures", key=b"evil\x00/x", value=b"\xc3\x01 not avro at all")
    p.flush(30)
    worker = cluster.worker(repo, log=tmp_path / "worker.log")
    try:
        cluster.agent(str(src), host_id="h1")
        [event] = committed(cluster, 1)
        [(key, value)] = cluster.consume("dlq", 1)
    finally:
        stop(worker)
    dead = decode(value, DeadLetter)
    assert key == b"evil\x00/x" == dead.key and dead.value == b"\xc3\x01 not avro at all"
    assert dead.topic == f"{cluster.prefix}.captures" and dead.reason
    target = tmp_path / "out"
    run_restic("-r", str(repo), "restore", event.restic_id, "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)


def big_tree(root: Path, files: int = 6, size: int = 8 << 20) -> Path:
    root.mkdir()
    for i in range(files):
        (root / f"f{i}.bin").write_bytes(os.urandom(size))
    return root


def test_a_worker_killed_mid_backup_and_restarted_completes_the_snapshot(tmp_path: Path,
                                                                         cluster: Cluster) -> None:
    src = big_tree(tmp_path / "src")
    repo = init_repo(tmp_path)
    cluster.agent(str(src), host_id="h1")  # the whole run waits in Kafka
    log = tmp_path / "worker.log"
    worker = cluster.worker(repo, log=log)
    deadline = time.monotonic() + 60
    while not any((repo / "data").rglob("*")) or not [p for p in (repo / "data").rglob("*") if p.is_file()]:
        assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)  # mid-backup: the first pack is written, no snapshot yet
    worker.wait()
    assert not list((repo / "snapshots").iterdir())
    worker = cluster.worker(repo, log=log)
    try:
        [event] = committed(cluster, 1)
    finally:
        stop(worker)
    assert_restic_restores(repo, event, src, tmp_path / "out")


def test_two_workers_in_one_group_share_the_partitions(tmp_path: Path, cluster: Cluster) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    src = big_tree(tmp_path / "src", files=4, size=4 << 20)
    repo = init_repo(tmp_path)
    log = tmp_path / "worker.log"
    workers = [cluster.worker(repo, log=log), cluster.worker(repo, log=log)]
    try:
        # one group (the faust app) with both workers; each owns part of every input
        # topic, and the same partitions of files and stored (the committer joins them)
        admin = AdminClient({"bootstrap.servers": cluster.broker.bootstrap})
        inputs = ("captures", "chunks", "files", "stored")

        def shares() -> list[dict[str, list[int]]]:
            group = f"{cluster.prefix}.worker"
            try:
                desc = admin.describe_consumer_groups([group])[group].result(timeout=30)
            except KafkaException:  # the group does not exist yet
                return []
            out = []
            for m in desc.members:
                mine: dict[str, list[int]] = {t: [] for t in inputs}
                for tp in m.assignment.topic_partitions:
                    suffix = tp.topic[len(cluster.prefix) + 1:]
                    if suffix in mine:
                        mine[suffix].append(tp.partition)
                out.append({t: sorted(p) for t, p in mine.items()})
            return out

        def balanced(members: list[dict[str, list[int]]]) -> bool:
            return len(members) == 2 and all(
                all(m[t] for t in inputs) and m["files"] == m["stored"] for m in members) \
                and all(sorted(members[0][t] + members[1][t]) == list(range(cluster.partitions))
                        for t in inputs)

        deadline = time.monotonic() + 60
        while not balanced(shares()):
            assert time.monotonic() < deadline, shares()
            time.sleep(0.5)
        want = shares()
        cluster.agent(str(src), host_id="h1")
        [event] = committed(cluster, 1)
        assert sorted(map(str, shares())) == sorted(map(str, want))  # no rebalance meanwhile
    finally:
        for w in workers:
            stop(w)
    assert all(w.returncode == 0 for w in workers), log.read_text()
    assert_restic_restores(repo, event, src, tmp_path / "out")


def test_the_backup_completes_when_the_broker_returns_after_a_stop(tmp_path: Path,
                                                                  cluster: Cluster) -> None:
    src = big_tree(tmp_path / "src")
    repo = init_repo(tmp_path)
    cluster.agent(str(src), host_id="h1")
    log = tmp_path / "worker.log"
    worker = cluster.worker(repo, log=log)
    try:
        deadline = time.monotonic() + 60
        while not [p for p in (repo / "data").rglob("*") if p.is_file()]:
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.05)
        proc = cluster.broker.script("stop", timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert not list((repo / "snapshots").iterdir())  # stopped mid-backup
        time.sleep(8)  # longer than the worker's grace before it says so
        proc = cluster.broker.script("start")
        assert proc.returncode == 0, proc.stderr
        [event] = committed(cluster, 1)
    finally:
        stop(worker)
    text = log.read_text()
    assert worker.returncode == 0, text
    # the outage is one warning, not the Kafka client's error lines (~100 a second)
    lines = text.splitlines()
    assert any("has not answered for" in line for line in lines), text
    assert not [line for line in lines if "Unable connect" in line and "answered" not in line], text
    assert len(lines) < 15, text
    assert_restic_restores(repo, event, src, tmp_path / "out")


def test_a_worker_takes_its_topics_again_when_they_come_back(tmp_path: Path,
                                                          cluster: Cluster) -> None:
    """A worker whose topics are not listed when it joins the group (right after a broker
    restart, seen in the soak; here: deleted and created again) is assigned nothing. It
    must notice them at its next metadata refresh and take its partitions again, not
    sit idle until something else makes the group rebalance (faust's default refresh:
    5 minutes)."""
    from confluent_kafka.admin import AdminClient

    from corestate.connectors import kafka_topics as kt

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("after the topics came back\n")
    repo = init_repo(tmp_path)
    log = tmp_path / "worker.log"
    worker = cluster.worker(repo, log=log)
    try:
        time.sleep(12)  # the group forms
        admin = AdminClient({"bootstrap.servers": cluster.broker.bootstrap})
        ours = [s.name(cluster.prefix) for s in kt.TOPICS]
        for done in admin.delete_topics(ours).values():
            done.result()
        while set(ours) & set(admin.list_topics(timeout=10).topics):
            time.sleep(0.5)
        time.sleep(10)  # the worker rejoins with nothing to read
        statuses = kt.create_topics(cluster.broker.bootstrap, partitions=cluster.partitions,
                                    prefix=cluster.prefix)
        assert all(s.ok for s in statuses), [s.problems for s in statuses]
        cluster.agent(str(src), host_id="h1")
        records = cluster.consume("snapshots", 1, timeout=90)
        assert len(records) == 1, log.read_text()[-3000:]
    finally:
        stop(worker)
    assert_restic_restores(repo, decode(records[0][1], SnapshotCommitted), src, tmp_path / "out")


def test_an_agent_killed_mid_run_then_run_again_gives_a_complete_snapshot(tmp_path: Path,
                                                                         cluster: Cluster) -> None:
    from confluent_kafka import Consumer, TopicPartition

    src = big_tree(tmp_path / "src", files=12, size=4 << 20)
    repo = init_repo(tmp_path)
    log = tmp_path / "worker.log"
    worker = cluster.worker(repo, log=log)
    watch = Consumer({"bootstrap.servers": cluster.broker.bootstrap, "group.id": "watch"})
    topic = f"{cluster.prefix}.captures"

    def published() -> int:
        return sum(watch.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(cluster.partitions))

    try:
        agent = subprocess.Popen(cluster.cli("agent", str(src), "--bootstrap", cluster.broker.bootstrap,
                                             "--host-id", "h1", "--once", "--prefix", cluster.prefix),
                                 env=cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while published() < cluster.partitions + 8:  # begin markers and a few segments
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.01)
        agent.send_signal(signal.SIGKILL)  # mid-run: no end marker
        agent.wait()
        cluster.agent(str(src), host_id="h1")  # the next run, from the start
        [event] = committed(cluster, 1)
    finally:
        watch.close()
        stop(worker)
    assert worker.returncode == 0, log.read_text()
    assert_restic_restores(repo, event, src, tmp_path / "out")


def test_a_watching_agent_publishes_a_new_snapshot_after_a_change(tmp_path: Path, cluster: Cluster) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("version 1\n")
    repo = init_repo(tmp_path)
    worker = cluster.worker(repo, log=tmp_path / "worker.log")
    agent = subprocess.Popen(cluster.cli("agent", str(src), "--bootstrap", cluster.broker.bootstrap,
                                         "--host-id", "h1", "--prefix", cluster.prefix),
                             env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        [first] = committed(cluster, 1)
        (src / "d" / "f.txt").write_text("version 2, longer\n")
        (src / "d" / "new.txt").write_text("created while watched\n")
        second = committed(cluster, 2)[1]
    finally:
        stop(agent)  # type: ignore[arg-type]
        stop(worker)
    assert agent.returncode == 0, agent.stdout.read()  # type: ignore[union-attr]
    assert first.restic_id != second.restic_id
    target = tmp_path / "out"
    run_restic("-r", str(repo), "restore", second.restic_id, "--target", str(target))
    assert tree_manifest(restored_root(target, src)) == tree_manifest(src)
    run_restic("-r", str(repo), "restore", first.restic_id, "--target", str(tmp_path / "old"))
    assert (restored_root(tmp_path / "old", src) / "d" / "f.txt").read_text() == "version 1\n"


def test_each_role_in_its_own_process(tmp_path: Path, cluster: Cluster) -> None:
    src = big_tree(tmp_path / "src", files=3, size=2 << 20)
    repo = init_repo(tmp_path)
    log = tmp_path / "worker.log"
    workers = [cluster.worker(repo, roles=r, log=log) for r in ("chunk", "pack", "commit")]
    try:
        cluster.agent(str(src), host_id="h1")
        [event] = committed(cluster, 1)
    finally:
        for w in workers:
            stop(w)
    assert all(w.returncode == 0 for w in workers), log.read_text()
    assert_restic_restores(repo, event, src, tmp_path / "out")


def test_a_restarted_packer_recovers_its_index_share_from_the_changelog(tmp_path: Path,
                                                                        cluster: Cluster) -> None:
    """The packer's exact index is its faust table alone (the repository index is not
    read): only if the new worker restores the table from its changelog does the second
    run of the same tree store nothing twice."""
    src = big_tree(tmp_path / "src", files=3, size=3 << 20)
    repo = init_repo(tmp_path)
    log = tmp_path / "worker.log"
    worker = cluster.worker(repo, log=log, verbose=True)
    try:
        cluster.agent(str(src), host_id="h1")
        [run1] = committed(cluster, 1)
        assert list((repo / "locks").iterdir()), "a running worker holds a repository lock"
    finally:
        stop(worker)
    assert worker.returncode == 0, log.read_text()
    assert not list((repo / "locks").iterdir()), "a stopped worker leaves no lock"
    packs_before = {p.name for p in (repo / "data").rglob("*") if p.is_file()}

    worker = cluster.worker(repo, log=log, verbose=True)
    try:
        # The agent publishes while the new worker restores its table: records fetched
        # then were dropped and never read again (CI, twice) until the worker learned to
        # read a stalled partition again (Role.stalled).
        cluster.agent(str(src), host_id="h1")
        first, second = committed(cluster, 2, timeout=240)
    finally:
        stop(worker)
    assert first.restic_id != second.restic_id
    # bytes added: the packers' new chunks (9 MiB of random data) and the trees; then
    # nothing but trees (every chunk was in the restored share)
    assert first == run1 and 9 << 20 <= first.bytes_added < 10 << 20
    assert second.bytes_added < 64 << 10
    r = Repository.open(open_backend(str(repo)), PASSWORD)
    r.refresh_index()
    stored_twice = [b.hex()[:12] for b in r.index.blob_ids() if len(r.index.all_locations(b)) > 1]
    assert stored_twice == []
    new_packs = {p.name for p in (repo / "data").rglob("*") if p.is_file()} - packs_before
    data_in_new = [loc for b in r.index.blob_ids() for loc in r.index.all_locations(b)
                   if loc.pack in new_packs and loc.blob.type == BlobType.DATA]
    assert data_in_new == []
    run_restic("-r", str(repo), "check", "--read-data")


def test_an_alert_on_the_alerts_topic_protects_its_clean_snapshot(tmp_path: Path,
                                                                  cluster: Cluster) -> None:
    """The worker's guard role (on by default) reads <prefix>.alerts and puts the alert's
    clean snapshot on the repository's protection list, once, even when replayed."""
    from datetime import datetime, timezone

    from confluent_kafka import Producer

    from corestate.repository.protected import load_protected
    from corestate.schemas.codec import encode
    from corestate.schemas.events import Alert

    src = big_tree(tmp_path / "src", files=2, size=1 << 20)
    repo = init_repo(tmp_path)
    log = tmp_path / "worker.log"
    worker = cluster.worker(repo, log=log)
    try:
        cluster.agent(str(src), host_id="h1")
        [event] = committed(cluster, 1)
        r = Repository.open(open_backend(str(repo)), PASSWORD)
        assert load_protected(r) == []
        alert = Alert(time=datetime.now(timezone.utc), host="h1", score=0.97,
                      reason="entropy +9σ", paths=(b"/srv/a",), clean_snapshot=event.restic_id)
        p = Producer({"bootstrap.servers": cluster.broker.bootstrap})
        for _ in range(2):  # a replay must not add it twice
            p.produce(f"{cluster.prefix}.alerts", key=b"h1", value=encode(alert))
        p.flush(30)
        deadline = time.monotonic() + 60
        while load_protected(r) != [event.restic_id]:
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.5)
    finally:
        stop(worker)
    alerts = run_corestate("alerts", "list", "--repo", str(repo), "--json")
    assert event.restic_id in alerts.stdout
    forget = run_corestate("forget", "--repo", str(repo), "--keep-last", "0", "--prune",
                           check=False)
    assert (repo / "snapshots" / event.restic_id).exists(), forget.stdout + forget.stderr
