"""The sentinel: in process with a simulated clock, and end to end through
`corestate protect --alerts` against a small simulated attack."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from corestate.agents.protect import ConsistencyPoint, ProtectOptions
from corestate.agents.sentinel import AgentSentinel, ProtectSentinel, SentinelOptions
from corestate.connectors.url import open_backend
from corestate.kernel.watch import ChangeBatch
from corestate.repository.protected import load_protected
from corestate.repository.alerts import AlertLedger
from corestate.models.detector import CheckpointRefused, Detector, Verdict
from corestate.repository.alerts import alert_id
from corestate.pipeline.backup import BackupSummary
from corestate.repository.crypto import Key
from corestate.repository.repository import Repository
from corestate.schemas.events import SnapshotCommitted
from tests.conftest import PASSWORD, restored_root, run_corestate

REQUIRED = {"time", "host", "score", "reason", "paths", "clean_snapshot"}


def prose(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = ("quarterly report budget meeting draft review customer revenue plan team "
             "schedule risk summary figure table result the of and to in").split()
    out = bytearray()
    while len(out) < n:
        out += (" ".join(rng.choices(words, k=rng.randint(6, 16))).capitalize() + ".\n").encode()
    return bytes(out[:n])


def make_docs(src: Path, n: int) -> list[Path]:
    (src / "docs").mkdir(parents=True)
    docs = []
    for i in range(n):
        p = src / "docs" / f"report-{i}.txt"
        p.write_bytes(prose(20_000 + 997 * i, seed=i))
        docs.append(p)
    return docs


def encrypt(path: Path) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    data = path.read_bytes()
    enc = Cipher(algorithms.AES(b"k" * 32), modes.CTR(os.urandom(16))).encryptor()
    with open(path, "r+b") as f:
        f.write(enc.update(data) + enc.finalize())


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def point(snap_id: str, started: float, committed: float) -> ConsistencyPoint:
    return ConsistencyPoint(BackupSummary(snapshot_id=snap_id), started, committed, False, 1,
                            frozenset())


def written(*paths: Path) -> ChangeBatch:
    kinds = {os.fsencode(p): {"modify", "close_write"} for p in paths}
    return ChangeBatch(dirty_dirs=frozenset(os.path.dirname(p) for p in kinds),
                       paths=frozenset(kinds), kinds=kinds)


@pytest.fixture
def repo(tmp_path):
    r = Repository.init(open_backend(str(tmp_path / "repo")), PASSWORD)
    yield r
    r.close()


def test_alert_protects_the_clean_snapshot_boosts_cadence_and_learns_only_normal_work(tmp_path, repo):
    src = tmp_path / "src"
    docs = make_docs(src, 8)
    t0 = time.time() - 1000  # simulated times in the past: real ctimes come after them
    for d in docs:
        os.utime(d, (t0 - 3600, t0 - 3600))  # written an hour before protection began
    clock = Clock(t0)
    opts = ProtectOptions([str(src)], interval=2.0)
    alerts_file = tmp_path / "alerts.jsonl"
    sentinel = ProtectSentinel(repo, opts, SentinelOptions(
        alerts_file=str(alerts_file), state_path=str(tmp_path / "state" / "detector.pkl"),
        boost_seconds=600.0), clock=clock)
    sentinel.start()
    assert sentinel.primed.wait(10)
    learned = sentinel.detector.learned

    sentinel.on_point(point("a" * 64, t0, t0 + 1))  # catch-up snapshot
    clock.t = t0 + 5  # an ordinary edit: appended lines
    with open(docs[0], "ab") as f:
        f.write(prose(500, seed=99))
    os.utime(docs[0], (clock.t, clock.t))
    sentinel.on_batch(written(docs[0]))
    sentinel.on_point(point("b" * 64, t0 + 5.1, t0 + 6))
    clock.t = t0 + 20
    sentinel.on_point(point("b" * 64, t0 + 5.1, t0 + 6))  # closes the edit's window
    assert sentinel.detector.learned == learned + 1
    assert not sentinel.alerts and not alerts_file.exists()

    clock.t = t0 + 40  # the attack: three reports encrypted in place
    for d in docs[1:4]:
        encrypt(d)
        os.utime(d, (clock.t - 0.2, clock.t - 0.2))
    sentinel.on_batch(written(*docs[1:4]))
    assert len(sentinel.alerts) == 1
    (line,) = [json.loads(ln) for ln in alerts_file.read_text().splitlines()]
    assert REQUIRED <= set(line)
    # the last snapshot committed before the attack: b, which holds the edit
    assert line["clean_snapshot"] == "b" * 64
    assert set(line["paths"][:3]) == {os.fspath(d) for d in docs[1:4]}
    assert "σ" in line["reason"] and line["score"] >= line["threshold"]
    assert "b" * 64 in load_protected(repo)
    (recorded,) = AlertLedger(repo).load()
    assert recorded.id == line["id"] and not recorded.acked and not recorded.released
    assert opts.interval == 0.5  # cadence raised

    clock.t = t0 + 41  # the attack goes on: the same episode, no second alert
    encrypt(docs[4])
    sentinel.on_batch(written(docs[4]))
    clock.t = t0 + 45
    sentinel.on_point(point("c" * 64, t0 + 42, t0 + 45))
    assert len(sentinel.alerts) == 1
    # one truth: the ledger and the file's last line for the id both show the grown alert
    first, grown = [json.loads(ln) for ln in alerts_file.read_text().splitlines()]
    (recorded,) = AlertLedger(repo).load()
    assert grown["id"] == first["id"] == recorded.id
    assert os.fspath(docs[4]) in recorded.paths and os.fspath(docs[4]) in grown["paths"]
    assert os.fspath(docs[4]) not in first["paths"]
    assert grown["paths"] == recorded.paths and grown["score"] == round(recorded.score, 6)
    assert sentinel.detector.learned == learned + 1  # attack windows are never learned

    clock.t = t0 + 40 + 601
    sentinel.on_point(point("d" * 64, t0 + 640, t0 + 641))
    assert opts.interval == 2.0  # cadence restored
    assert 0.5 <= sentinel.proposed_interval() <= 60.0
    sentinel.close()
    # the checkpoint is signed with the repository's key: it loads with that key only,
    # and a restarted sentinel starts from what this one learned
    state = tmp_path / "state" / "detector.pkl"
    assert Detector.load(state, repo.key.derive("detector checkpoint")).learned == learned + 1
    with pytest.raises(CheckpointRefused):
        Detector.load(state, Key.random().derive("detector checkpoint"))
    again = ProtectSentinel(repo, opts, SentinelOptions(state_path=str(state), prime=False))
    assert again.detector.learned == learned + 1


def test_protect_refuses_a_checkpoint_written_without_the_repository_key(tmp_path, repo, caplog):
    state = tmp_path / "state" / "detector.pkl"
    forged = Detector.prior()
    forged.threshold = 1.5  # blind: nothing would ever alert
    forged.save(state)  # as ransomware without the repository's key would write it
    with caplog.at_level(logging.WARNING):
        sentinel = ProtectSentinel(repo, ProtectOptions([str(tmp_path)]),
                                   SentinelOptions(state_path=str(state), prime=False))
    assert sentinel.detector.threshold == Detector.prior().threshold < 1.0
    assert "detector checkpoint refused" in caplog.text and "not signed" in caplog.text
    assert (tmp_path / "state" / "detector.pkl.refused").exists()


def test_a_slow_attack_looks_back_to_its_first_file(tmp_path, repo):
    src = tmp_path / "src"
    docs = make_docs(src, 6)
    t0 = time.time() - 1000  # simulated times in the past: real ctimes come after them
    clock = Clock(t0)
    opts = ProtectOptions([str(src)], interval=2.0)
    sentinel = ProtectSentinel(repo, opts, SentinelOptions(), clock=clock)
    sentinel.start()
    assert sentinel.primed.wait(10)
    sentinel.on_point(point("a" * 64, t0, t0 + 1))
    for i, d in enumerate(docs[:3]):  # one file every 20 s; snapshots in between
        clock.t = t0 + 10 + 20 * i
        encrypt(d)
        os.utime(d, (clock.t - 0.1, clock.t - 0.1))
        sentinel.on_batch(written(d))
        clock.t += 2
        sentinel.on_point(point(f"{i}" * 64, clock.t - 1, clock.t))
    assert sentinel.alerts, "the slow attack was not detected"
    # whichever file alerted, the clean snapshot predates the first encrypted file
    assert sentinel.alerts[0].clean_snapshot == "a" * 64


class StubDetector(Detector):
    """Scores encrypted-looking writes by how many there are; busy writing alone is
    suspect but never alerts."""

    def __init__(self) -> None:
        super().__init__(threshold=0.5, suspect_threshold=0.3)

    def judge(self, x: dict[str, float], top: int = 3) -> Verdict:
        score = x["opaque_share"] * x["write_rate"]
        if x["write_rate"] > 1.0:
            score = max(score, 0.35)
        return Verdict(score, self.threshold, self.suspect_threshold, [("opaque_share", 9.9)])

    def learn(self, x: dict[str, float]) -> None:
        pass


def test_look_back_follows_encrypted_files_not_busy_benign_work(tmp_path, repo):
    src = tmp_path / "src"
    docs = make_docs(src, 12)
    t0 = time.time() - 1000
    clock = Clock(t0)
    sentinel = ProtectSentinel(repo, ProtectOptions([str(src)]), SentinelOptions(),
                        detector=StubDetector(), clock=clock)
    sentinel.start()
    assert sentinel.primed.wait(10)

    def at(t: float, *paths: Path) -> None:
        clock.t = t0 + t
        for p in paths:
            os.utime(p, (clock.t - 0.1, clock.t - 0.1))
        sentinel.on_batch(written(*paths))

    sentinel.on_point(point("a" * 64, t0, t0 + 1))
    for d in docs[6:12]:  # busy, benign: six reports edited at once
        with open(d, "ab") as f:
            f.write(b"one more line\n")
    at(10, *docs[6:12])
    sentinel.on_point(point("b" * 64, t0 + 11, t0 + 13))  # holds the edits
    encrypt(docs[0])  # the first file: suspect, below the alert threshold
    at(30, docs[0])
    sentinel.on_point(point("c" * 64, t0 + 31, t0 + 33))  # holds an encrypted file
    assert not sentinel.alerts
    encrypt(docs[1])
    encrypt(docs[2])
    at(50, docs[1], docs[2])
    assert len(sentinel.alerts) == 1
    # not c (holds docs[0] encrypted), not a (misses the benign edits): b
    assert sentinel.alerts[0].clean_snapshot == "b" * 64


# -- end to end --------------------------------------------------------------------

class Protect:
    """A running `corestate protect --json --alerts FILE`."""

    def __init__(self, repo: Path, src: Path, alerts: Path, state: Path) -> None:
        env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD, "CORESTATE_STATE_DIR": str(state)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corestate", "protect", str(src), "--repo", str(repo), "--json",
             "--alerts", str(alerts), "--interval", "0.5"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.messages: list[dict] = []

    def wait_for(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages:
                if m.get("message_type") == kind:
                    return m
            assert time.monotonic() < deadline, f"no {kind} within {timeout}s: {self.messages}"
            line = self.proc.stdout.readline()
            assert line, self.proc.stderr.read()
            self.messages.append(json.loads(line))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        self.messages += [json.loads(ln) for ln in out.splitlines() if ln.strip()]


def snapshot_ids(repo: Path) -> list[str]:
    return [s["id"] for s in json.loads(run_corestate("snapshots", "--repo", str(repo), "--json").stdout)]


def test_protect_with_alerts_end_to_end(tmp_path):
    src = tmp_path / "src"
    docs = make_docs(src, 10)
    originals = {d: d.read_bytes() for d in docs}
    repo = tmp_path / "repo"
    alerts = tmp_path / "alerts.jsonl"
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src, alerts, tmp_path / "state")
    try:
        p.wait_for("snapshot", timeout=30)
        time.sleep(1.5)  # the sketch scan of the existing files runs in the background
        victims = docs[:5]
        for d in victims:  # in-place encryption, 5 files a second
            encrypt(d)
            time.sleep(0.2)
        alert = p.wait_for("alert", timeout=20)
        time.sleep(1.0)
    finally:
        p.stop()
    (line, *_) = [json.loads(ln) for ln in alerts.read_text().splitlines()]
    assert REQUIRED <= set(line) and line["id"] == alert["id"]
    assert any(os.fspath(d) in line["paths"] for d in victims)
    clean = line["clean_snapshot"]
    assert clean in snapshot_ids(repo)

    listed = json.loads(run_corestate("alerts", "list", "--repo", str(repo), "--json").stdout)
    assert [a["id"] for a in listed] == [line["id"]] and not listed[0]["released"]
    r = Repository.open(open_backend(str(repo)), PASSWORD)
    assert clean in load_protected(r)

    run_corestate("forget", "--keep-last", "1", "--repo", str(repo))
    kept = snapshot_ids(repo)
    assert clean in kept and len(kept) == 2  # the newest and the protected clean one

    target = tmp_path / "restored"
    run_corestate("restore", clean, "--target", str(target), "--repo", str(repo))
    root = restored_root(target, src)
    for d in victims:
        assert (root / d.relative_to(src)).read_bytes() == originals[d], d

    run_corestate("alerts", "ack", line["id"][:6], "--repo", str(repo))
    released = json.loads(run_corestate("alerts", "release", line["id"], "--repo", str(repo),
                                        "--json").stdout)
    assert released["released"] and released["unprotected"]
    assert clean not in load_protected(r)
    run_corestate("forget", "--keep-last", "1", "--repo", str(repo))
    assert clean not in snapshot_ids(repo)


# -- distributed mode: the agent's sentinel ----------------------------------------------

def committed(run: str, restic_id: str, t: float, host: str = "h1",
              paths: tuple[str, ...] = ()) -> SnapshotCommitted:
    return SnapshotCommitted(snapshot_id=run, restic_id=restic_id, host=host, paths=paths,
                             time=datetime.fromtimestamp(t, timezone.utc), tree="cd" * 32,
                             files=1, bytes_added=0)


def attack(clock: Clock, t: float, docs: list[Path]) -> ChangeBatch:
    clock.t = t
    for d in docs:
        encrypt(d)
        os.utime(d, (t - 0.2, t - 0.2))
    return written(*docs)


def test_agent_sentinel_waits_for_the_commit_of_the_last_run_before_the_attack(tmp_path):
    src = tmp_path / "src"
    docs = make_docs(src, 8)
    t0 = time.time() - 1000
    clock = Clock(t0)
    alerts_file = tmp_path / "alerts.jsonl"
    sentinel = AgentSentinel([str(src)], SentinelOptions(host="h1", alerts_file=str(alerts_file)),
                             clock=clock)
    sentinel.start()
    assert sentinel.primed.wait(10)
    paths = (str(src),)
    sentinel.on_committed(committed("earlier-session", "e" * 64, t0 - 500, paths=paths))
    sentinel.on_run("r1", settled=t0 + 1)
    sentinel.on_committed(committed("r1", "f" * 64, t0 + 2, host="other", paths=paths))  # not ours
    sentinel.on_batch(attack(clock, t0 + 40, docs[:3]))
    assert len(sentinel.alerts) == 1 and sentinel.drain() == []  # held: r1 may still commit
    assert not alerts_file.exists()
    sentinel.on_run("r2", settled=t0 + 41)  # the run that captured the attack
    clock.t = t0 + 42
    sentinel.on_committed(committed("r2", "b" * 64, t0 + 40.5, paths=paths))
    assert sentinel.drain() == []  # r2 is not clean: still waiting for r1
    sentinel.on_committed(committed("r1", "a" * 64, t0, paths=paths))
    [event] = sentinel.drain()
    assert event.clean_snapshot == "a" * 64 and event.host == "h1" and event.score >= 0.5
    assert alert_id(event) == sentinel.alerts[0].id  # the guard records it under this id
    assert set(event.paths[:3]) == {os.fsencode(d) for d in docs[:3]}
    assert event.top_features and event.reason
    assert json.loads(alerts_file.read_text())["clean_snapshot"] == "a" * 64
    sentinel.on_batch(attack(clock, t0 + 43, docs[3:5]))  # the episode grows
    clock.t = t0 + 46
    sentinel.tick()
    [grown] = sentinel.drain()  # published again: the guard updates the same entry
    assert alert_id(grown) == alert_id(event) and len(grown.paths) == 5
    first, last = [json.loads(ln) for ln in alerts_file.read_text().splitlines()]
    assert first["id"] == last["id"] and len(last["paths"]) == 5
    sentinel.close()
    assert sentinel.drain() == [] and len(alerts_file.read_text().splitlines()) == 2


def test_agent_sentinel_falls_back_to_an_earlier_session_when_the_run_never_commits(tmp_path):
    src = tmp_path / "src"
    docs = make_docs(src, 8)
    t0 = time.time() - 1000
    clock = Clock(t0)
    sentinel = AgentSentinel([str(src)], SentinelOptions(host="h1", commit_wait=30.0), clock=clock)
    sentinel.start()
    assert sentinel.primed.wait(10)
    sentinel.on_committed(committed("s-old", "c" * 64, t0 - 900, paths=(str(src),)))
    sentinel.on_committed(committed("s-newer", "e" * 64, t0 - 500, paths=(str(src),)))
    sentinel.on_run("r1", settled=t0 + 1)  # its snapshot is rejected: no commit will come
    sentinel.on_batch(attack(clock, t0 + 20, docs[:3]))
    assert sentinel.alerts and sentinel.drain() == []
    clock.t = t0 + 1 + 31
    sentinel.tick()
    [event] = sentinel.drain()
    assert event.clean_snapshot == "e" * 64  # the newest from before this session


def test_a_path_that_is_not_utf8_is_shown_escaped_in_alert_lines_and_the_ledger(tmp_path, repo):
    src = tmp_path / "src"
    docs = make_docs(src, 4)
    odd = os.fsencode(str(src / "docs")) + b"/caf\xe9.txt"
    with open(odd, "wb") as f:
        f.write(prose(20_000, seed=7))
    t0 = time.time() - 1000
    clock = Clock(t0)
    alerts_file = tmp_path / "alerts.jsonl"
    sentinel = ProtectSentinel(repo, ProtectOptions([str(src)]),
                               SentinelOptions(alerts_file=str(alerts_file)),
                               detector=StubDetector(), clock=clock)
    sentinel.start()
    assert sentinel.primed.wait(10)
    clock.t = t0 + 10
    for p in (odd, *map(os.fsencode, docs)):
        encrypt(Path(os.fsdecode(p)))
    kinds = {p: {"modify", "close_write"} for p in (odd, *map(os.fsencode, docs))}
    sentinel.on_batch(ChangeBatch(dirty_dirs=frozenset({os.path.dirname(odd)}),
                                  paths=frozenset(kinds), kinds=kinds))
    [alert] = sentinel.alerts
    assert os.fsencode(alert.paths[0]) in kinds  # kept exact: events carry the raw bytes
    line = json.loads(alerts_file.read_text())
    assert os.fsdecode(str(src / "docs")) + "/caf\\xe9.txt" in line["paths"]
    assert AlertLedger(repo).load()[0].paths == line["paths"]
    sentinel.close()
