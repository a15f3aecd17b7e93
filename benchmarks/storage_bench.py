"""Backup and restore to a local S3 server: corestate beside restic, same server, same data.

What is measured, and why
-------------------------
One versitygw S3 server is started with the project's own ``deploy/storage/s3.sh`` (a
free port, its own data directory on this disk, stopped at the end). The corpus is
backup_bench's (``--corpus mixed``: ~1 GB, 21k files; ``--quick``: ~61 MiB, 3k files),
copied to a fixed path and read once, so the page cache is warm for every run.

For each run and tool, in a fresh bucket (``init`` not timed):

1. ``backup1``: first backup of the corpus into the bucket (chunking, compression,
   encryption and the uploads);
2. ``backup2``: unchanged re-backup (listing and index reads, nothing uploaded);
3. ``restore``: full restore of the latest snapshot from the bucket into an empty
   directory, verified byte for byte against the corpus (a mismatch fails the run).

Each phase is a child process measured as backup_bench does (wall time, the child's own
CPU time from ``wait4``, peak RSS); the server's CPU seconds in the phase (from
/proc/<pid>/stat) are reported beside it, since client and server share the machine's
two cores. Runs alternate the order of the tools; the table shows the median of the
runs, and corestate's figures as a ratio to restic's. The machine is shared with other
work: the load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from backup_bench import Measurement, compare_trees, machine, measure_child, prepare_source, tree_digest
from corpora import DATA, ensure
from rpo_bench import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "storage" / "s3.sh"
KEYS = {"AWS_ACCESS_KEY_ID": "corestate", "AWS_SECRET_ACCESS_KEY": "corestate-secret",
        "AWS_DEFAULT_REGION": "us-east-1"}
PASSWORD = "bench"
PHASES = {"backup1": "first backup", "backup2": "unchanged re-backup", "restore": "full restore"}


def corestate(*args: str) -> list[str]:
    exe = shutil.which("corestate")
    return [exe, *args] if exe else [sys.executable, "-m", "corestate", *args]


TOOLS = {
    "restic": {"env": {"RESTIC_PASSWORD": PASSWORD},
               "init": lambda r: ["restic", "-r", r, "init"],
               "backup": lambda r, s: ["restic", "-r", r, "backup", "--host", "bench", s],
               "restore": lambda r, t: ["restic", "-r", r, "restore", "latest", "--target", t]},
    "corestate": {"env": {"CORESTATE_PASSWORD": PASSWORD},
                  "init": lambda r: corestate("init", "--repo", r),
                  "backup": lambda r, s: corestate("backup", "--repo", r, s),
                  "restore": lambda r, t: corestate("restore", "latest", "--repo", r, "--target", t)},
}


@dataclass
class Phase:
    """One phase of one tool: the client's measurement and the server's CPU seconds."""

    client: Measurement
    server_cpu: float

    def get(self, what: str) -> float:
        return {"wall": self.client.wall_s, "cpu": self.client.cpu_s, "server": self.server_cpu}[what]


class Server:
    def __init__(self, work: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = work / "s3"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                    "S3_PORT": str(self.port), "S3_DATA_DIR": str(self.data)}

    def script(self, command: str) -> None:
        subprocess.run(["bash", str(SCRIPT), command], env=self.env, check=True, timeout=1800)

    @property
    def pid(self) -> int:
        return int((self.data / "s3.pid").read_text())


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_tool(name: str, server: Server, src: Path, work: Path) -> dict[str, Phase]:
    tool = TOOLS[name]
    url = f"s3:http://127.0.0.1:{server.port}/b{uuid.uuid4().hex[:16]}"
    target, logs = work / "restore", work / "logs"
    for d in (target, logs, work / "cache"):
        d.mkdir(parents=True)
    env = {**os.environ, **KEYS, **tool["env"], "XDG_CACHE_HOME": str(work / "cache"),
           "CORESTATE_STATE_DIR": str(work / "state")}
    if name == "restic":  # restic creates no bucket
        subprocess.run([sys.executable, "-c", "import sys; from corestate.connectors.url import "
                        "open_backend; open_backend(sys.argv[1]).create()", url], env=env, check=True)
    init = measure_child(tool["init"](url), env, work, logs / "init")
    if init.error:
        raise SystemExit(f"{name} init: {init.error}")
    out: dict[str, Phase] = {}
    for phase in PHASES:
        argv = tool["restore"](url, str(target)) if phase == "restore" else tool["backup"](url, str(src))
        before = cpu_seconds(server.pid)
        m = measure_child(argv, env, work, logs / phase)
        out[phase] = Phase(m, cpu_seconds(server.pid) - before)
        if m.error:
            raise SystemExit(f"{name} {phase}: {m.error}")
        print(f"  {name:9s} {phase:8s} {m.wall_s:7.2f} s wall {m.cpu_s:7.2f} s cpu "
              f"{m.peak_mib:5.0f} MiB peak, server {out[phase].server_cpu:6.2f} s cpu "
              f"(load {load()})", file=sys.stderr, flush=True)
    problem = compare_trees(tree_digest(src), tree_digest(target / src.relative_to("/")))
    if problem:
        raise SystemExit(f"{name}: {problem}")
    return out


def render(runs: list[dict[str, dict[str, Phase]]], info: dict[str, object],
           meta: dict[str, str]) -> str:
    def med(tool: str, phase: str, what: str) -> float:
        return statistics.median(r[tool][phase].get(what) for r in runs)

    lines = [f"## Storage benchmark — S3 (versitygw v1.8.0 on this machine) — {meta['date']}", "",
             f"- Machine: {meta['machine']}; load average before {meta['load_before']}, after "
             f"{meta['load_after']} (shared with other work: figures vary with it)",
             f"- Command: `{meta['command']}`",
             f"- Corpus: {info['files']} files, {info['mib']} MiB (backup_bench's generator); "
             f"{len(runs)} runs, tools in alternating order; medians shown",
             "- Each phase: a fresh bucket for the first backup; *server CPU* is versitygw's CPU "
             "seconds during the phase; restores verified byte for byte", "",
             "| Phase | restic wall s | restic CPU s | server CPU s | corestate wall s | "
             "corestate CPU s | server CPU s | corestate ÷ restic (wall) |",
             "|---|---|---|---|---|---|---|---|"]
    for phase, label in PHASES.items():
        rw, cw = med("restic", phase, "wall"), med("corestate", phase, "wall")
        lines.append(f"| {label} | {rw:.2f} | {med('restic', phase, 'cpu'):.2f} | "
                     f"{med('restic', phase, 'server'):.2f} | {cw:.2f} | "
                     f"{med('corestate', phase, 'cpu'):.2f} | {med('corestate', phase, 'server'):.2f} | "
                     f"{cw / rw:.2f}× |")
    lines.append("")
    for phase in PHASES:
        walls = {t: [round(r[t][phase].client.wall_s, 2) for r in runs] for t in ("restic", "corestate")}
        lines.append(f"- {phase} wall per run: restic {walls['restic']}, corestate {walls['corestate']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the small corpus (~61 MiB)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", type=Path, help="append the markdown section to this file")
    args = ap.parse_args(argv)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
            "command": shlex.join(["python", *sys.argv]), "load_before": load()}
    corpus, info = ensure("mixed", "quick" if args.quick else "full")
    (DATA / "work").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=DATA / "work", prefix="storage-"))
    server = Server(work)
    runs: list[dict[str, dict[str, Phase]]] = []
    try:
        server.script("start")
        src = work / "src" / "mixed"
        prepare_source(corpus, src)
        for n in range(args.runs):
            order = ["restic", "corestate"] if n % 2 == 0 else ["corestate", "restic"]
            run = {}
            for name in order:
                print(f"run {n + 1}: {name}", file=sys.stderr, flush=True)
                run[name] = run_tool(name, server, src, work / f"{name}-{n}")
                shutil.rmtree(work / f"{name}-{n}", ignore_errors=True)
            runs.append(run)
    finally:
        server.script("stop")
        shutil.rmtree(work, ignore_errors=True)
    meta["load_after"] = load()
    text = render(runs, info, meta)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
