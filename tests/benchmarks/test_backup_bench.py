"""The backup benchmark's harness on a tiny corpus, with the real tools: every phase
and every ratio column is in the table, each peer on this machine is measured, a peer
that is absent (restic 0.18.1 and rustic are built by ``benchmarks/peers.sh``) is
reported as absent, and peak memory is the sum over a process tree. No figure is
judged here: performance is the benchmark's business (``benchmarks/RESULTS.md``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import backup_bench  # noqa: E402
from proctree import PeakSampler  # noqa: E402

ROWS = ["init (wall s)", "first backup (wall s)", "unchanged re-backup (wall s)",
        "backup after 1% changed (wall s)", "full restore (wall s)", backup_bench.MEMORY,
        backup_bench.REPO]
RATIO_COLUMNS = ["reference", "corestate ÷ reference", "target", "met?"]


def run_bench(tmp_path: Path, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "backup_bench.py"), "--corpus", "flat", "--scale", "tiny",
         "--data", str(tmp_path / "data"), "--json", str(tmp_path / "raw.json"), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def table(stdout: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The first markdown table: its header, and row title -> column -> cell."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body: dict[str, dict[str, str]] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(head):
            break                                        # the second (detail) table
        body[cells[0]] = dict(zip(head, cells, strict=True))
    return head, body


def test_every_peer_phase_and_ratio_column(tmp_path: Path) -> None:
    proc = run_bench(tmp_path, "--rounds", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    head, body = table(proc.stdout)
    labels = [tool.label for tool in backup_bench.TOOLS.values()]
    assert head == ["Phase", *labels, *RATIO_COLUMNS]
    assert list(body) == ROWS
    for tool in backup_bench.TOOLS.values():
        for row in ROWS:
            cell = body[row][tool.label]
            if tool.find() is None:           # e.g. rustic in CI: reported, not measured
                assert cell == "absent"
            else:
                assert float(cell) > 0
        present = tool.find() is not None
        assert (f"{tool.label}: absent" in proc.stdout) is not present
        if present:
            assert f"{tool.label}: restore verification ok (500 files identical)" in proc.stdout
    for row in ROWS:
        assert body[row]["corestate ÷ reference"].endswith("×")
        limit = backup_bench.TARGETS.get(next((k for k, t in backup_bench.PHASES.items()
                                               if row.startswith(t)), row))
        if limit is None:
            assert body[row]["met?"] == "—"
        else:
            ratio = float(body[row]["corestate ÷ reference"].rstrip("×"))
            assert body[row]["target"] == f"≤ {limit}×"
            assert body[row]["met?"] == ("✅ met" if ratio <= limit else "❌ missed")
    assert body[backup_bench.MEMORY]["reference"].startswith("restic 0.14: ")
    raw = json.loads((tmp_path / "raw.json").read_text())["corpora"]["flat"]
    corestate = raw["tools"]["corestate"]["rounds"][0]
    assert list(corestate) == list(backup_bench.PHASES)
    assert all(m["peak_mib"] > 10 and m["rc"] == 0 for m in corestate.values())
    # the corestate measured is this checkout's, and the table says which commit it was
    assert "- Tools: " in proc.stdout and f"corestate: corestate from {BENCH.parent}/ at " \
        in proc.stdout


def test_absent_peers_are_named_and_left_out(tmp_path: Path) -> None:
    proc = run_bench(tmp_path, "--tools", "restic-0.18,rustic",
                     env={"PEERS_DIR": str(tmp_path / "no-peers")})
    assert proc.returncode == 0, proc.stderr
    _, body = table(proc.stdout)
    assert all(body[row]["restic 0.18.1"] == body[row]["rustic"] == "absent" for row in ROWS)
    assert "restic 0.18.1: absent (run benchmarks/peers.sh restic)" in proc.stdout
    assert "rustic: absent (run benchmarks/peers.sh rustic" in proc.stdout
    assert "restic-0.18: absent" in proc.stderr and "left out" in proc.stderr


def test_peak_memory_is_summed_over_the_process_tree() -> None:
    # a parent holding 40 MiB starts two children holding 40 MiB each; all three live at once
    hold = "b = bytearray(40 << 20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(1.5)"
    parent = (f"import subprocess, sys; {hold.split('; import')[0]}; "
              f"ps = [subprocess.Popen([sys.executable, '-c', {hold!r}]) for _ in range(2)]; "
              "[p.wait() for p in ps]")
    proc = subprocess.Popen([sys.executable, "-c", parent])
    sampler = PeakSampler(proc.pid, interval_s=0.02).start()
    proc.wait()
    sampler.stop()
    assert sampler.max_processes == 3
    assert sampler.peak_mib > 3 * 40, sampler.peak_mib
