"""`corestate protect` detects ransomware by default: alerts in the repository's ledger
(`corestate alerts list`), a copy in `--alerts FILE`, none with `--no-detect`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from corestate.connectors.url import open_backend
from corestate.repository.protected import load_protected
from corestate.repository.repository import Repository
from tests.conftest import PASSWORD, run_corestate

PROSE = b"The quarterly budget review moved to Thursday; please read the draft first.\n"


class Protect:
    """A running `corestate protect --json`; its JSON messages collected by type."""

    def __init__(self, repo: Path, src: Path, *args: str) -> None:
        env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD,
               "CORESTATE_STATE_DIR": str(repo.parent / "state")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corestate", "protect", str(src), "--repo", str(repo),
             "--json", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.messages: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.messages.append(json.loads(line))

    def wait(self, kind: str, n: int = 1, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < n:
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, f"no {kind}: {self.messages}"
            time.sleep(0.05)
        return self.of(kind)

    def of(self, kind: str) -> list[dict]:
        return [m for m in list(self.messages) if m["message_type"] == kind]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, self.proc.stderr.read()


def documents(src: Path, n: int) -> list[Path]:
    docs = []
    for i in range(n):
        p = src / "docs" / f"report-{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(PROSE * (300 + 40 * i))
        docs.append(p)
    return docs


def encrypt(*paths: Path) -> None:
    for p in paths:
        size = p.stat().st_size
        with open(p, "r+b") as f:
            f.write(os.urandom(size))


def started(tmp_path: Path, n: int, *args: str) -> tuple[Path, list[Path], Protect]:
    src, repo = tmp_path / "src", tmp_path / "repo"
    docs = documents(src, n)
    run_corestate("init", "--repo", str(repo))
    p = Protect(repo, src, *args)
    p.wait("snapshot")
    # the detector sketches the existing files in the background; and a snapshot counts as
    # clean only if it was committed more than the sentinel's slack (1 s) before an attack
    time.sleep(2.5)
    return repo, docs, p


def ledger(repo: Path) -> list[dict]:
    return json.loads(run_corestate("alerts", "list", "--repo", str(repo), "--json").stdout)


def test_protect_without_flags_detects_in_place_encryption(tmp_path):
    repo, docs, p = started(tmp_path, 4)
    try:
        encrypt(*docs[:3])
        (alert,) = p.wait("alert")
    finally:
        p.stop()
    (recorded,) = ledger(repo)
    assert recorded["id"] == alert["id"] and not recorded["released"]
    assert {os.fspath(d) for d in docs[:3]} <= set(recorded["paths"])
    assert recorded["clean_snapshot"] == p.of("snapshot")[0]["snapshot_id"]
    r = Repository.open(open_backend(str(repo)), PASSWORD)
    assert load_protected(r) == [recorded["clean_snapshot"]]  # locked against forget


def test_the_alerts_file_copy_shows_the_grown_episode(tmp_path):
    alerts = tmp_path / "alerts.jsonl"
    repo, docs, p = started(tmp_path, 8, "--alerts", str(alerts))
    try:
        encrypt(*docs[:2])
        p.wait("alert")
        time.sleep(0.5)
        encrypt(*docs[2:6])  # the same episode goes on
        time.sleep(1.0)
    finally:
        p.stop()
    lines = [json.loads(ln) for ln in alerts.read_text().splitlines()]
    last = {ln["id"]: ln for ln in lines}  # the last line of an id is the alert as it stands
    (recorded,) = ledger(repo)
    assert len(lines) >= 2 and list(last) == [recorded["id"]]
    assert last[recorded["id"]]["paths"] == recorded["paths"]
    assert last[recorded["id"]]["score"] == round(recorded["score"], 6)
    assert {os.fspath(d) for d in docs[:6]} <= set(recorded["paths"])
    assert len(lines[0]["paths"]) < len(recorded["paths"])


def test_no_detect_raises_no_alert(tmp_path):
    repo, docs, p = started(tmp_path, 4, "--no-detect")
    try:
        encrypt(*docs[:3])
        p.wait("snapshot", n=2)
        time.sleep(0.5)
    finally:
        p.stop()
    assert p.of("alert") == [] and ledger(repo) == []
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").rglob("detector.pkl"))
    out = run_corestate("protect", str(tmp_path / "src"), "--repo", str(repo), "--no-detect",
                        "--alerts", str(tmp_path / "a.jsonl"), check=False)
    assert out.returncode == 2 and "--alerts needs detection" in out.stderr
