"""Distributed-mode benchmark: agent and workers on a real broker vs embedded `corestate backup`.

What is measured, and why
-------------------------
One loopback Apache Kafka broker is started with the project's own
``deploy/kafka/broker.sh`` (free ports, its own data directory, stopped at the end).
The corpus is backup_bench's (``--corpus mixed`` by default: ~1 GB, 21k files;
``--quick``: ~61 MiB, 3k files), read once first so the page cache is warm for all.

1. *Throughput.* The same corpus is backed up, each run into a fresh repository
   (``init`` not timed):

   - ``embedded``: ``corestate backup`` (wall time of the process);
   - ``one``: one ``corestate worker`` process with all roles;
   - ``two``: two such processes in one group (each gets half the partitions);
   - ``split``: ``--roles chunk`` in one process and ``--roles pack,commit`` in the
     other (one core each for the two halves of the work, on this 2-core machine).

   For a distributed run: fresh topics (``corestate topics create --partitions N``
   under a new prefix), the workers are started and *start-up* is the time until the
   consumer group ``<prefix>.worker`` is stable with every worker a member holding an
   assignment that covers the input topics of its roles. Only then is ``corestate
   agent --once`` started; the measured *wall* runs from the agent's start to the
   moment the harness (a consumer of ``<prefix>.snapshots``) sees the
   ``SnapshotCommitted`` of the agent's snapshot: process start counted, as for
   ``corestate backup``. Throughput = corpus MiB / wall; the ratio is to the median
   embedded throughput of the same invocation. CPU seconds are read from /proc for
   the workers and the broker's JVM and from ``wait4`` for the agent, so the table
   shows whether two cores were saturated; the machine's busy time (/proc/stat) minus
   ours is what other processes took meanwhile (others share this machine). A
   committed snapshot must count every corpus file, and one snapshot per invocation
   is restored and compared with the corpus byte for byte (``--no-verify`` skips it).

2. *Latency from a file's close to the commit of the first snapshot that holds it.*
   A watching agent (``corestate agent PATH`` without ``--once``, ``--no-detect``)
   runs on a small tree; a writer creates new files at a steady rate, recording each
   close time; the harness records when each ``SnapshotCommitted`` is seen. After
   the writes, ``corestate find --json`` lists the written files in every committed
   snapshot; a file's latency is the time the first snapshot holding it was seen minus
   its close. Also reported: each run's start (the snapshot time the agent chose) to
   its commit, and the CPU the agent, workers and broker used while the writes ran.

``--profile`` adds, per configuration, one extra run (not in the figures) with
``py-spy record`` attached to every worker (blocking samples: the run is slower), and
summarises where each worker's time went (see :func:`classify`); the raw profiles are
left in the temporary directory as ``distributed_bench-<config>-w<k>.txt``.
``--code DIR`` runs every corestate command from another revision's package (e.g.
``git archive REV corestate | tar -x -C DIR``), to compare runners with one harness.

Run: ``python benchmarks/distributed_bench.py [--quick] [--profile] [--out FILE]``
(``--help`` for the rest). ``--quick``: ~61 MiB corpus, configuration ``two``, one
run, one short latency run: under a minute.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backup_bench import Measurement, compare_trees, machine, measure_child, tree_digest
from corpora import DATA, ensure
from rpo_bench import CLK_TCK, cpu_seconds, percentile

ROOT = Path(__file__).resolve().parent.parent
BROKER_SH = ROOT / "deploy" / "kafka" / "broker.sh"
PASSWORD = "bench"
ALL_ROLES = "chunk,pack,commit"
CONFIGS: dict[str, tuple[str, ...]] = {      # name -> one --roles value per worker process
    "one": (ALL_ROLES,), "two": (ALL_ROLES, ALL_ROLES), "split": ("chunk", "pack,commit")}
INPUTS = {"chunk": ("captures",), "pack": ("chunks",), "commit": ("files", "stored")}
TARGET = ("two", 0.6)  # configuration, minimum throughput ratio to embedded
RUN_TIMEOUT = 1200.0


CODE: Path | None = None   # --code: another tree's corestate package instead of the installed one


def corestate(*args: str) -> list[str]:
    if CODE is None:
        return [sys.executable, "-m", "corestate", *args]
    boot = (f"import sys; sys.path.insert(0, {str(CODE)!r}); sys.argv[0] = 'corestate'; "
            "from corestate.cli.main import main; main()")
    return [sys.executable, "-c", boot, *args]


def code_revision(code: Path | None) -> str:
    """Which corestate ran: the commit, and whether the tree had uncommitted changes."""
    where = code or ROOT
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "corestate"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        rev, dirty = "", ""
    if code is not None and not rev:
        return f"corestate from `{code}` (--code)"
    text = f"corestate at {rev or 'unknown commit'}"
    text += " + uncommitted changes in corestate/" if dirty else ""
    return text + (f" from `{code}` (--code)" if code is not None else "")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def load1() -> float:
    return os.getloadavg()[0]


def busy_seconds() -> float:
    """CPU seconds the machine spent not idle since boot, all cores (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_seconds() -> float:
    """CPU seconds of this harness process (its threads, not its children)."""
    t = os.times()
    return t.user + t.system


class Broker:
    """deploy/kafka/broker.sh on free loopback ports with its own data directory."""

    def __init__(self, data: Path) -> None:
        self.port, self.cport = free_ports(2)
        self.data = data
        self.started_s = 0.0
        self._admin: Any = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def script(self, action: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.cport),
               "KAFKA_DATA_DIR": str(self.data), "PYTHON": sys.executable}
        return subprocess.run(["bash", str(BROKER_SH), action], env=env, capture_output=True,
                              text=True, timeout=600, cwd="/")

    def start(self) -> None:
        t = time.perf_counter()
        proc = self.script("start")
        if proc.returncode != 0:
            raise RuntimeError(f"broker.sh start exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        self.started_s = time.perf_counter() - t

    def stop(self) -> None:
        self._admin = None   # its connection would log the broker's going away
        self.script("stop")

    def pid(self) -> int | None:
        try:
            return int((self.data / "kafka.pid").read_text())
        except (OSError, ValueError):
            return None

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return self._admin

    def delete_topics(self, prefix: str) -> None:
        """Every topic of a run (ours and faust's changelog/assignor topics): keeps the
        broker's disk use to one run's worth."""
        names = [t for t in self.admin.list_topics(timeout=30).topics if t.startswith(prefix + ".")]
        for fut in self.admin.delete_topics(names, operation_timeout=60).values():
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 -- cleanup only
                print(f"  (could not delete a topic: {exc})", file=sys.stderr)

    def group(self, name: str) -> tuple[str, list[set[tuple[str, int]]]]:
        """(state, each member's assigned (topic, partition)s) of a consumer group."""
        desc = self.admin.describe_consumer_groups([name])[name].result(timeout=10)
        members = [{(tp.topic, tp.partition) for tp in (m.assignment.topic_partitions or [])}
                   for m in desc.members]
        return str(desc.state).rsplit(".", 1)[-1], members


@dataclass
class Setup:
    """One run's topics, repository and worker processes."""
    broker: Broker
    config: str
    prefix: str
    repo: Path
    work: Path
    env: dict[str, str]
    partitions: int
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    startup_s: float = 0.0

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def run(self, *args: str) -> None:
        proc = subprocess.run(corestate(*args), env=self.env, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"corestate {' '.join(args)} exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-400:]}")

    def prepare(self) -> None:
        """Topics, an initialised repository, workers started and their group stable."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.run("topics", "create", "--bootstrap", self.broker.bootstrap, "--prefix", self.prefix,
                 "--partitions", str(self.partitions), "--replication", "1")
        self.run("init", "--repo", str(self.repo), "-q")
        os.sync()
        t = time.perf_counter()
        for k, roles in enumerate(CONFIGS[self.config]):
            with open(self.work / f"worker{k}.log", "wb") as log:
                self.workers.append(subprocess.Popen(
                    corestate("worker", "--bootstrap", self.broker.bootstrap, "--prefix", self.prefix,
                              "--repo", str(self.repo), "--roles", roles),
                    env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
        self.wait_stable(timeout=180)
        self.startup_s = time.perf_counter() - t

    def wait_stable(self, timeout: float) -> None:
        """Until the workers' consumer groups are stable with every worker a member holding
        an assignment, and the assignments cover every partition of every input topic.
        The faust worker has one group, ``<prefix>.worker``; a runner with one group per
        role (``<prefix>.worker.<role>``, the confluent-kafka runner before it) is
        recognised too, for ``--code``."""
        per_role: dict[str, int] = Counter(r for roles in CONFIGS[self.config] for r in roles.split(","))
        layouts = {f"{self.prefix}.worker": (len(self.workers), set(per_role))}
        split = {f"{self.prefix}.worker.{r}": (n, {r}) for r, n in per_role.items()}
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for w in self.workers:
                if w.poll() is not None:
                    raise RuntimeError(f"a worker exited ({w.returncode}) during start-up; "
                                       f"see {self.work}/worker*.log")
            try:
                for groups in (layouts, split):
                    problems = [p for name, (n, roles) in groups.items()
                                if (p := self._unready(name, n, roles))]
                    if not problems:
                        return
                    last = problems[0]
            except Exception as exc:  # noqa: BLE001 -- the group may not exist yet
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(f"worker group not stable after {timeout:.0f}s: {last}")

    def _unready(self, group: str, members_wanted: int, roles: set[str]) -> str | None:
        want = {(f"{self.prefix}.{topic}", p) for role in roles for topic in INPUTS[role]
                for p in range(self.partitions)}
        state, members = self.broker.group(group)
        covered = set().union(*members) if members else set()
        if state == "STABLE" and len(members) == members_wanted and all(members) and want <= covered:
            return None
        return f"{group}: {state}, {len(members)} members, {len(want - covered)} partitions unassigned"

    def stop_workers(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()

    def cleanup(self, keep: bool) -> None:
        self.stop_workers()
        self.broker.delete_topics(self.prefix)
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)


class CommitWatch:
    """Every ``SnapshotCommitted`` on ``<prefix>.snapshots`` with the time it was seen,
    read by a background thread (:class:`corestate.connectors.kafka_agent.CommitFeed`)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        from corestate.connectors.kafka_agent import CommitFeed

        self.feed = CommitFeed({"bootstrap.servers": bootstrap}, prefix)
        self.seen: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for event in self.feed.poll(0.02):
                self.seen.append((time.time(), event))

    def find(self, snapshot_id: str) -> tuple[float, Any] | None:
        return next((s for s in list(self.seen) if s[1].snapshot_id == snapshot_id), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.feed.close()


@dataclass
class DistRun:
    config: str
    startup_s: float = 0.0       # workers spawned -> group stable
    agent_startup_s: float = 0.0  # agent start -> its run's start (the snapshot time)
    publish_s: float = 0.0       # agent start -> agent exit (every record acknowledged)
    wall_s: float = 0.0          # agent start -> SnapshotCommitted seen
    agent_cpu_s: float = 0.0
    worker_cpu_s: list[float] = field(default_factory=list)
    broker_cpu_s: float = 0.0
    others_cpu_s: float = 0.0    # every other process on the machine (other users' tests)
    load1: float = 0.0
    files: int = 0
    restic_id: str = ""
    error: str | None = None
    verify: str | None = None


def cpu_of(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            out.append(cpu_seconds(pid))
        except OSError:
            out.append(0.0)
    return out


def run_agent_once(s: Setup, corpus: Path, run: DistRun, watch: CommitWatch) -> Any:
    """Start the agent, wait for its exit and for its snapshot's commit; the event."""
    broker_pid = s.broker.pid()
    procs = s.worker_pids + ([broker_pid] if broker_pid else [])
    os.sync()
    cpu0, busy0, own0 = cpu_of(procs), busy_seconds(), own_seconds()
    out = s.work / "agent.out"
    run.load1 = load1()
    with open(out, "wb") as f, open(s.work / "agent.err", "wb") as err:
        t0, t0_wall = time.perf_counter(), time.time()
        agent = subprocess.Popen(corestate("agent", str(corpus), "--bootstrap", s.broker.bootstrap,
                                           "--prefix", s.prefix, "--host-id", "bench", "--once",
                                           "--json"), env=s.env, stdin=subprocess.DEVNULL,
                                 stdout=f, stderr=err)
        snapshot_id = None
        deadline = t0 + RUN_TIMEOUT
        while time.perf_counter() < deadline:
            if snapshot_id is None:
                pid, status, ru = os.wait4(agent.pid, os.WNOHANG)
                if pid:
                    run.publish_s = time.perf_counter() - t0
                    agent.returncode = os.waitstatus_to_exitcode(status)
                    run.agent_cpu_s = ru.ru_utime + ru.ru_stime
                    if agent.returncode != 0:
                        raise RuntimeError(f"agent exited {agent.returncode}: "
                                           f"{(s.work / 'agent.err').read_text()[-400:]}")
                    lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
                    snapshot_id = next((x["snapshot_id"] for x in lines if "snapshot_id" in x), None)
                    if snapshot_id is None:
                        raise RuntimeError(f"agent printed no snapshot id: {out.read_text()[-300:]}")
            if snapshot_id is not None and (hit := watch.find(snapshot_id)):
                run.wall_s = hit[0] - t0_wall
                break
            for w in s.workers:
                if w.poll() is not None:
                    raise RuntimeError(f"a worker exited ({w.returncode}); see {s.work}")
            time.sleep(0.01)
        else:
            agent.kill()
            raise RuntimeError(f"no commit within {RUN_TIMEOUT:.0f}s")
    cpu1, busy1, own1 = cpu_of(procs), busy_seconds(), own_seconds()
    deltas = [b - a for a, b in zip(cpu0, cpu1)]
    run.worker_cpu_s = deltas[:len(s.workers)]
    run.broker_cpu_s = deltas[len(s.workers)] if broker_pid else 0.0
    run.others_cpu_s = max(0.0, busy1 - busy0 - sum(deltas) - run.agent_cpu_s - (own1 - own0))
    event = hit[1]
    run.files, run.restic_id = event.files, event.restic_id
    run.agent_startup_s = event.time.timestamp() - t0_wall
    return event


def distributed_run(broker: Broker, config: str, corpus: Path, expected_files: int,
                    work: Path, env: dict[str, str], partitions: int, tag: str,
                    verify_digest: dict[str, str] | None, keep: bool,
                    profile_dir: Path | None = None) -> DistRun:
    run = DistRun(config)
    s = Setup(broker, config, f"bench-{tag}", work / "repo", work, env, partitions)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        s.prepare()
        run.startup_s = s.startup_s
        watch = CommitWatch(broker.bootstrap, s.prefix)
        try:
            if profile_dir is not None:
                spies = [subprocess.Popen(["py-spy", "record", "--pid", str(pid), "-r", "100",
                                           "--threads", "-f", "raw", "-o",
                                           str(profile_dir / f"{config}-w{k}.txt")],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for k, pid in enumerate(s.worker_pids)]
                time.sleep(1.0)  # py-spy attaches
            run_agent_once(s, corpus, run, watch)
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
            for spy in spies:
                spy.wait(timeout=60)
            watch.close()
        if run.files != expected_files:
            run.error = f"snapshot has {run.files} files, the corpus {expected_files}"
        s.stop_workers()
        if verify_digest is not None and run.error is None:
            target = work / "restore"
            s.run("restore", run.restic_id, "--repo", str(s.repo), "--target", str(target), "-q")
            problem = compare_trees(verify_digest, tree_digest(target / corpus.relative_to("/")))
            run.verify = problem or f"ok ({len(verify_digest)} files identical)"
            shutil.rmtree(target, ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 -- reported in the table, the run goes on
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        s.cleanup(keep)
    return run


@dataclass
class LatencyRun:
    config: str
    rate: float
    written: int = 0
    covered: int = 0
    latencies: list[float] = field(default_factory=list)
    run_latencies: list[float] = field(default_factory=list)   # run start -> commit seen
    snapshots: int = 0
    startup_s: float = 0.0
    first_commit_s: float = 0.0
    window_s: float = 0.0        # first write -> commit of the last write
    agent_cpu_s: float = 0.0     # CPU seconds in that window
    worker_cpu_s: float = 0.0
    broker_cpu_s: float = 0.0
    others_cpu_s: float = 0.0
    error: str | None = None


def writer(src: Path, rate: float, seconds: float, seed: int) -> dict[str, float]:
    """Create new 1-8 KiB files at ``rate`` per second; absolute path -> close time."""
    rng = random.Random(seed)
    closes: dict[str, float] = {}
    start = time.monotonic()
    for k in range(int(rate * seconds)):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        path = src / f"d{k % 10}" / f"w{seed}-{k:05d}.dat"
        with open(path, "wb") as f:
            f.write(rng.randbytes(rng.randint(1024, 8192)))
        closes[str(path)] = time.time()
    return closes


def listed(s: Setup, pattern: str) -> dict[str, set[str]]:
    """restic snapshot id -> paths matching ``pattern`` in it (one `corestate find`)."""
    proc = subprocess.run(corestate("find", pattern, "--repo", str(s.repo), "--json"), env=s.env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"corestate find exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    out: dict[str, set[str]] = {}
    for match in json.loads(proc.stdout or "[]"):
        out.setdefault(match["snapshot"], set()).add(match["path"])
    return out


def latency_run(broker: Broker, config: str, work: Path, env: dict[str, str], partitions: int,
                tag: str, rate: float, seconds: float, seed: int, keep: bool) -> LatencyRun:
    res = LatencyRun(config, rate)
    s = Setup(broker, config, f"bench-{tag}", work / "repo", work, env, partitions)
    src = work / "watched"
    agent = None
    try:
        for d in range(10):        # a small tree: 10 directories of 20 files
            (src / f"d{d}").mkdir(parents=True)
            for i in range(20):
                (src / f"d{d}" / f"base{i:02d}.txt").write_bytes(b"base %d %d\n" % (d, i) * 50)
        s.prepare()
        res.startup_s = s.startup_s
        watch = CommitWatch(broker.bootstrap, s.prefix)
        try:
            t0 = time.time()
            with open(work / "agent.out", "wb") as out, open(work / "agent.err", "wb") as err:
                agent = subprocess.Popen(corestate("agent", str(src), "--bootstrap", broker.bootstrap,
                                                   "--prefix", s.prefix, "--host-id", "bench",
                                                   "--no-detect", "--json"),
                                         env=s.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            while not watch.seen:                      # the first (full) run
                if agent.poll() is not None or time.time() - t0 > 120:
                    raise RuntimeError("the watching agent committed no first run: "
                                       + (work / "agent.err").read_text()[-300:])
                time.sleep(0.02)
            res.first_commit_s = watch.seen[0][0] - t0
            time.sleep(1.0)
            pids = [agent.pid, *s.worker_pids, *([p] if (p := broker.pid()) else [])]
            cpu0, busy0, own0, w0 = cpu_of(pids), busy_seconds(), own_seconds(), time.perf_counter()
            closes = writer(src, rate, seconds, seed)
            res.written = len(closes)
            last_close = max(closes.values())
            deadline = time.time() + 120
            while not any(ev.time.timestamp() >= last_close for _, ev in list(watch.seen)):
                if time.time() > deadline:
                    raise RuntimeError("no run started after the last write was committed")
                time.sleep(0.05)
            cpu1, busy1, own1 = cpu_of(pids), busy_seconds(), own_seconds()
            res.window_s = time.perf_counter() - w0
            spent = [b - a for a, b in zip(cpu0, cpu1)]
            res.agent_cpu_s, res.worker_cpu_s = spent[0], sum(spent[1:1 + len(s.workers)])
            res.broker_cpu_s = sum(spent[1 + len(s.workers):])
            res.others_cpu_s = max(0.0, busy1 - busy0 - sum(spent) - (own1 - own0))
        finally:
            if agent is not None and agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    agent.kill()
            watch.close()
        s.stop_workers()
        commits = sorted(watch.seen, key=lambda x: x[0])[1:]   # after the first, full run
        res.snapshots = len(commits)
        res.run_latencies = [seen - ev.time.timestamp() for seen, ev in commits]
        contents = listed(s, "w*.dat")
        first_seen: dict[str, float] = {}
        for seen, ev in commits:
            for path in contents.get(ev.restic_id, set()) & closes.keys():
                first_seen.setdefault(path, seen)
        res.latencies = sorted(first_seen[p] - t for p, t in closes.items() if p in first_seen)
        res.covered = len(res.latencies)
    except Exception as exc:  # noqa: BLE001 -- reported in the table
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        s.cleanup(keep)
    return res


# ---------------------------------------------------------------- profile summary

WAITS = ("EpollSelector.select", "Condition.wait", "Event.wait", "Queue.get", "sleep",
         "Lock.acquire", "Thread.join", "_wait_for_tstate_lock")
CATEGORIES = (("corestate/schemas/codec", "event codec"), ("corestate/", "corestate stages"),
              ("aiokafka/", "aiokafka"), ("kafka/", "aiokafka"),
              ("faust/", "faust + mode"), ("mode/", "faust + mode"))


def classify(frames: list[str]) -> str:
    """A sample's bucket: ``wait`` if its leaf frame blocks; else the innermost frame
    that belongs to corestate (the stage, split by role, or the event codec),
    aiokafka, or faust/mode; else ``asyncio + other`` (the loop's own work)."""
    leaf = frames[-1].split(" (")[0]
    if any(leaf.endswith(w) for w in WAITS):
        return "wait"
    for frame in reversed(frames):
        for needle, name in CATEGORIES:
            if needle in frame:
                if name != "corestate stages":
                    return name
                stack = ";".join(frames)
                for role in ("ChunkStage", "PackStage", "CommitStage"):
                    if role + "." in stack:
                        return f"stage: {role[:-5].lower()}"
                return "corestate other"
    return "asyncio + other"


def summarise_profile(path: Path, rate: float = 100.0) -> dict[str, Any]:
    """Seconds of samples per bucket on the main thread (faust's event loop: the stages,
    the producer, faust), and busy (non-waiting) seconds of the other threads: faust
    runs the aiokafka consumer in a thread with its own loop, the packer writes packs
    from ``pack-writer``."""
    loop: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    consumer: set[str] = set()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or not stack.startswith("thread ("):
            continue
        thread, *frames = stack.split(";")
        name = thread.split(": ", 1)[-1]
        if not frames:
            continue
        bucket = classify(frames)
        if name == "MainThread":
            loop[bucket] += int(n)
        elif bucket != "wait":
            busy[name] += int(n)
        if "AIOKafkaConsumerThread" in stack or "ServiceThread" in stack:
            consumer.add(name)
    threads = {("consumer thread" if k in consumer else k): v / rate for k, v in busy.most_common()}
    return {"loop": {k: v / rate for k, v in loop.most_common()}, "threads": threads}


# ---------------------------------------------------------------- report

def mm(values: list[float], fmt: str = ".2f") -> str:
    """min / median."""
    if not values:
        return "—"
    return f"{min(values):{fmt}} / {statistics.median(values):{fmt}}"


def throughput_table(mib: float, meta: dict[str, Any], embedded: list[Measurement],
                     dist: dict[str, list[DistRun]]) -> list[str]:
    emb_ok = [m for m in embedded if not m.error]
    emb_tp = statistics.median([mib / m.wall_s for m in emb_ok]) if emb_ok else None
    out = ["- wall = process start to snapshot committed (embedded: `corestate backup` exits; "
           "distributed: `corestate agent --once` started → its `SnapshotCommitted` seen on "
           "`<prefix>.snapshots`); worker start-up (spawn → group stable with every partition "
           "assigned) is not in it; agent start-up (process start → the run's start) is. CPU s "
           "over the wall time, from /proc and wait4; CPU used = (agent + workers + broker) ÷ "
           "(2 × wall); other processes = the machine's busy time (/proc/stat) minus ours: "
           "what others running on this machine took", "",
           "| configuration | worker processes (--roles) | worker start-up s | agent start-up s | "
           "agent publish s | wall s | MiB/s (median) | ratio to embedded | "
           "CPU s: agent / workers (run 1 per worker) / broker (median) | CPU used of 2 cores | "
           "CPU s of other processes |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    if emb_ok:
        cpu = statistics.median([m.cpu_s for m in emb_ok])
        walls = [m.wall_s for m in emb_ok]
        out.append(f"| embedded `corestate backup` | — | — | — | — | {mm(walls)} | {emb_tp:.1f} | "
                   f"1.00 | {cpu:.1f} (one process) | {cpu / statistics.median(walls) / 2:.0%} | "
                   f"{mm(meta['embedded_others'], '.1f')} |")
    elif embedded:
        out.append("| embedded `corestate backup` | — | FAILED: "
                   + "; ".join(m.error or "" for m in embedded) + " ||||||||")
    ratios: dict[str, float] = {}
    for config, runs in dist.items():
        if not runs:
            continue
        ok = [r for r in runs if not r.error]
        roles = " + ".join(f"`{r}`" for r in CONFIGS[config])
        if not ok:
            out.append(f"| {config} | {roles} | FAILED: {runs[0].error} ||||||||")
            continue
        walls = [r.wall_s for r in ok]
        tp = statistics.median([mib / w for w in walls])
        ratios[config] = ratio = tp / emb_tp if emb_tp else float("nan")
        agent_cpu = statistics.median([r.agent_cpu_s for r in ok])
        wcpu = statistics.median([sum(r.worker_cpu_s) for r in ok])
        bcpu = statistics.median([r.broker_cpu_s for r in ok])
        per = "+".join(f"{c:.1f}" for c in ok[0].worker_cpu_s)
        used = statistics.median([(r.agent_cpu_s + sum(r.worker_cpu_s) + r.broker_cpu_s) / r.wall_s / 2
                                  for r in ok])
        failed = f" ({len(runs) - len(ok)} failed: {runs[-1].error})" if len(ok) < len(runs) else ""
        out.append(f"| {config}{failed} | {roles} | {mm([r.startup_s for r in ok])} | "
                   f"{mm([r.agent_startup_s for r in ok])} | {mm([r.publish_s for r in ok])} | "
                   f"{mm(walls)} | {tp:.1f} | {ratio:.2f} | "
                   f"{agent_cpu:.1f} / {wcpu:.1f} ({per}) / {bcpu:.1f} | {used:.0%} | "
                   f"{mm([r.others_cpu_s for r in ok], '.1f')} |")
    out.append("")
    name, limit = TARGET
    if name in ratios:
        verdict = "✅ pass" if ratios[name] >= limit else "❌ miss"
        out.append(f"- Target: `{name}` ≥ {limit}× embedded throughput: {ratios[name]:.2f}× {verdict}")
    verified = [f"{r.config}: {r.verify}" for runs in dist.values() for r in runs if r.verify]
    out.append("- Restore of a distributed snapshot compared with the corpus: "
               + ("; ".join(verified) if verified else "not done"))
    return out


def render(meta: dict[str, Any], info: dict[str, Any], embedded: list[Measurement],
           dist: dict[str, list[DistRun]], lat: list[LatencyRun],
           profiles: dict[str, list[dict[str, Any]]]) -> str:
    out = [f"## Distributed benchmark — corpus `{meta['corpus']}`{' (quick)' if meta['quick'] else ''}"
           f" — {meta['date']}", "",
           f"- Command: `{meta['command']}`",
           f"- Machine: {meta['machine']}; load average (1 min) {meta['load_start']:.2f} at the start, "
           f"{meta['load_end']:.2f} at the end",
           f"- Code: {meta['code']}",
           f"- Broker: deploy/kafka/broker.sh, one KRaft node on loopback (started in "
           f"{meta['broker_start_s']:.1f} s); {meta['partitions']} partitions per scalable topic; "
           f"{meta['clients']}",
           f"- Corpus: {info['files']} files, {info['mib']} MiB (backup_bench's generator), page cache "
           "warm; each run into a fresh repository and, distributed, fresh topics; runs per "
           f"configuration: {meta['repeat']}, interleaved; cells show min / median"]
    if embedded or any(dist.values()):
        out += throughput_table(info["mib"], meta, embedded, dist)
    if lat:
        out += ["", f"Latency, file closed → `SnapshotCommitted` of the first snapshot listing it "
                    f"(watching agent, `--no-detect`, on a tree of 200 files; new 1–8 KiB files "
                    f"written at a steady rate for {meta['latency_seconds']:g} s; snapshot "
                    "contents from `corestate find`; the window for CPU is first write → last "
                    "write committed):", "",
                "| configuration | files/s | run | files written | covered | p50 s | p99 s | max s | "
                "snapshots | run start → commit p50 s | p99 s | worker start-up s | "
                "first full run committed s | CPU % of one core while writing: agent / workers / broker | "
                "CPU s of other processes |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        runs_seen: Counter[tuple[str, float]] = Counter()
        for r in lat:
            runs_seen[(r.config, r.rate)] += 1
            k = runs_seen[(r.config, r.rate)]
            if r.error:
                out.append(f"| {r.config} | {r.rate:g} | {k} | FAILED: {r.error} ||||||||||||")
                continue
            pct = "/".join(f"{100 * c / r.window_s:.0f}" for c in (r.agent_cpu_s, r.worker_cpu_s,
                                                                     r.broker_cpu_s))
            out.append(f"| {r.config} | {r.rate:g} | {k} | {r.written} | {r.covered} | "
                       f"{percentile(r.latencies, .5):.2f} | "
                       f"{percentile(r.latencies, .99):.2f} | {max(r.latencies, default=float('nan')):.2f} | "
                       f"{r.snapshots} | {percentile(r.run_latencies, .5):.2f} | "
                       f"{percentile(r.run_latencies, .99):.2f} | {r.startup_s:.2f} | "
                       f"{r.first_commit_s:.2f} | {pct} | {r.others_cpu_s:.1f} |")
    if profiles:
        out += ["", "Profile (`py-spy record -r 100 --threads` of each worker during one extra run "
                    "per configuration, not in the figures above): seconds of samples on the main "
                    "thread (faust's event loop) by innermost frame (see `classify`), and busy "
                    "seconds of the other threads", "",
                "| configuration | worker | wall s | main: " + " | ".join(PROFILE_COLUMNS)
                + " | other threads, busy s |",
                "|---|---|---|" + "---|" * (len(PROFILE_COLUMNS) + 1)]
        for config, summaries in profiles.items():
            for k, p in enumerate(summaries):
                cells = [f"{p['loop'].get(c, 0.0):.1f}" for c in PROFILE_COLUMNS]
                threads = ", ".join(f"{n} {v:.1f}" for n, v in p["threads"].items()) or "—"
                out.append(f"| {config} | {k} (`{CONFIGS[config][k]}`) | {p['wall_s']:.1f} | "
                           + " | ".join(cells) + f" | {threads} |")
    return "\n".join(out) + "\n"


PROFILE_COLUMNS = ("stage: chunk", "stage: pack", "stage: commit", "corestate other", "event codec",
                   "aiokafka", "faust + mode", "asyncio + other", "wait")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=("mixed", "usr"), default="mixed")
    ap.add_argument("--quick", action="store_true",
                    help="small corpus, one run, configurations `two` only: a smoke test under a minute")
    ap.add_argument("--configs",
                    help=f"comma-separated, from {', '.join(CONFIGS)} (default: all; quick: two)")
    ap.add_argument("--repeat", type=int, help="runs per measurement (default 2; quick 1; 0 with "
                                               "--profile: the profile runs only)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--latency-configs", help="configurations for the latency runs (default: two; "
                                              "'' for none)")
    ap.add_argument("--rates", help="files per second for the latency runs (default 10,100; quick 10)")
    ap.add_argument("--seconds", type=float, help="seconds of writes per latency run (default 15; quick 4)")
    ap.add_argument("--profile", action="store_true", help="one extra run per configuration under py-spy")
    ap.add_argument("--no-verify", action="store_true", help="do not restore a snapshot to compare")
    ap.add_argument("--out", type=Path, help="append the markdown section to this file")
    ap.add_argument("--json", type=Path, help="write raw numbers to this file")
    ap.add_argument("--keep", action="store_true", help="keep work directories (benchmarks/.data/work)")
    ap.add_argument("--code", type=Path, metavar="DIR",
                    help="run every corestate command from DIR/corestate (another revision, e.g. "
                         "`git archive REV corestate | tar -x -C DIR`) instead of the installed one")
    args = ap.parse_args(argv)
    global CODE
    CODE = args.code.resolve() if args.code else None
    configs = (args.configs or ("two" if args.quick else ",".join(CONFIGS))).split(",")
    lat_configs = [c for c in (args.latency_configs if args.latency_configs is not None
                               else "two").split(",") if c]
    if unknown := [c for c in configs + lat_configs if c not in CONFIGS]:
        ap.error(f"unknown configurations: {unknown}")
    rates = [float(r) for r in (args.rates or ("10" if args.quick else "10,100")).split(",") if r]
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 2)
    seconds = args.seconds or (4.0 if args.quick else 15.0)
    import aiokafka
    import confluent_kafka
    import faust
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "command": shlex.join(["python", *sys.argv]), "corpus": args.corpus, "quick": args.quick,
        "partitions": args.partitions, "repeat": repeat, "latency_seconds": seconds,
        "load_start": load1(),
        "clients": f"workers: faust-streaming {faust.__version__}, aiokafka {aiokafka.__version__}; "
                   f"agent and harness: confluent-kafka {confluent_kafka.__version__}"}
    meta["code"] = code_revision(CODE)
    corpus, info = ensure(args.corpus, "quick" if args.quick else "full")
    print(f"[{args.corpus}] {info['files']} files, {info['mib']} MiB; warming the page cache",
          file=sys.stderr, flush=True)
    digest = tree_digest(corpus)
    (DATA / "work").mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(dir=DATA / "work", prefix="distributed-"))
    env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD, "CORESTATE_STATE_DIR": str(top / "state"),
           "XDG_CACHE_HOME": str(top / "cache")}
    broker = Broker(top / "kafka")
    embedded: list[Measurement] = []
    meta["embedded_others"] = []
    dist: dict[str, list[DistRun]] = {c: [] for c in configs}
    lat: list[LatencyRun] = []
    profiles: dict[str, list[dict[str, Any]]] = {}
    t_start = time.perf_counter()
    try:
        print("starting the broker", file=sys.stderr, flush=True)
        broker.start()
        meta["broker_start_s"] = broker.started_s
        verify = None if args.no_verify else digest
        for k in range(repeat):   # interleaved, so a load change hits every configuration alike
            work = top / f"embedded{k}"
            work.mkdir()
            subprocess.run(corestate("init", "--repo", str(work / "repo"), "-q"), env=env, check=True)
            busy0, own0 = busy_seconds(), own_seconds()
            m = measure_child(corestate("backup", "--repo", str(work / "repo"), "-q", str(corpus)),
                              env, work, work / "backup")
            meta["embedded_others"].append(max(0.0, busy_seconds() - busy0 - m.cpu_s
                                               - (own_seconds() - own0)))
            embedded.append(m)
            print(f"  embedded  run {k + 1}: {m.wall_s:7.2f} s wall {m.cpu_s:6.1f} s cpu"
                  f"{'  ' + m.error if m.error else ''}", file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            for config in configs:
                r = distributed_run(broker, config, corpus, info["files"], top / f"{config}{k}", env,
                                    args.partitions, f"{config}{k}", verify, args.keep)
                if r.verify:
                    verify = None     # one restore per invocation is enough
                dist[config].append(r)
                print(f"  {config:9s} run {k + 1}: {r.wall_s:7.2f} s wall (start-up {r.startup_s:.2f} s, "
                      f"publish {r.publish_s:.2f} s; cpu agent {r.agent_cpu_s:.1f} workers "
                      f"{'+'.join(f'{c:.1f}' for c in r.worker_cpu_s)} broker {r.broker_cpu_s:.1f})"
                      f"{'  ERROR ' + r.error if r.error else ''}", file=sys.stderr, flush=True)
        for rate, k, config in ((r, k, c) for r in rates for k in range(repeat) for c in lat_configs):
            lr = latency_run(broker, config, top / f"latency-{config}{k}-{rate:g}", env,
                             args.partitions, f"lat-{config}{k}-{rate:g}", rate, seconds, seed=k,
                             keep=args.keep)
            lat.append(lr)
            print(f"  latency {config} {rate:g}/s run {k + 1}: {lr.covered}/{lr.written} covered, p50 "
                  f"{percentile(lr.latencies, .5):.2f} s p99 {percentile(lr.latencies, .99):.2f} s"
                  f"{'  ERROR ' + lr.error if lr.error else ''}", file=sys.stderr, flush=True)
        if args.profile:
            pdir = top / "profiles"
            pdir.mkdir()
            for config in configs:
                r = distributed_run(broker, config, corpus, info["files"], top / f"profile-{config}",
                                    env, args.partitions, f"profile-{config}", None, args.keep,
                                    profile_dir=pdir)
                summaries = []
                for k in range(len(CONFIGS[config])):
                    p = summarise_profile(pdir / f"{config}-w{k}.txt")
                    summaries.append({**p, "wall_s": r.wall_s})
                    shutil.copy(pdir / f"{config}-w{k}.txt", Path(tempfile.gettempdir())
                                / f"distributed_bench-{config}-w{k}.txt")
                profiles[config] = summaries
                print(f"  profile {config}: {r.wall_s:.2f} s wall{'  ERROR ' + r.error if r.error else ''}",
                      file=sys.stderr, flush=True)
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(top, ignore_errors=True)
    meta["load_end"] = load1()
    meta["elapsed_s"] = time.perf_counter() - t_start
    text = render(meta, info, embedded, dist, lat, profiles)
    text += f"\nRun took {meta['elapsed_s']:.0f} s.\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({
            "meta": meta, "corpus": info, "embedded": [asdict(m) for m in embedded],
            "distributed": {c: [asdict(r) for r in runs] for c, runs in dist.items()},
            "latency": [asdict(r) for r in lat], "profiles": profiles}, indent=1, default=str))
    failed = [m.error for m in embedded if m.error] + [r.error for runs in dist.values() for r in runs
                                                        if r.error] + [r.error for r in lat if r.error]
    failed += [r.verify for runs in dist.values() for r in runs if r.verify and not r.verify.startswith("ok")]
    if failed:
        print(f"distributed_bench: {len(failed)} failures, first: {failed[0]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
