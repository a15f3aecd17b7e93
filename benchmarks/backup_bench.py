"""Side-by-side backup benchmark: corestate against restic 0.14, restic 0.18.1, rustic and borg.

What is measured, and why
-------------------------
Every tool runs the same phases against the same corpus (``corpora.py``):

1. ``init`` -- create an empty repository (key derivation, config).
2. ``backup1`` -- first backup: chunking, hashing, compression, encryption, writing.
3. ``backup2`` -- unchanged re-backup: the cost of change detection (files cache or
   parent snapshot), which dominates day-to-day backups.
4. ``backup3`` -- backup after ~1% of the files were modified in place (seeded: the
   same files change the same way for every tool and round).
5. ``restore`` -- full restore of the latest snapshot into an empty directory, then a
   check that the restored tree equals the source (file list and sha256 of every
   file); a mismatch fails the run.

A *round* runs every tool once through all phases, one tool after another; rounds are
interleaved (round 1: A B C, round 2: B C A, ...) so drift in the machine's load hits
every tool alike, and each figure reported is the *median* over the rounds.

For each phase: wall time (perf_counter around the child), CPU time (user+sys from
``wait4``, which covers every descendant the tool waited for) and *peak memory*: the
largest sum of resident sets over the tool's whole process tree during the phase
(``proctree.py``; corestate runs worker processes). After each backup the repository's
allocated size (``du``, hard links once) is recorded.

Each corestate figure is compared with the *best peer* in that phase (the fastest for
times, the smallest repository), except peak memory, which is compared with restic
0.14, against the targets of issue 10 (``TARGETS``). A peer whose binary is absent
(restic 0.18.1 and rustic are built by ``benchmarks/peers.sh``) is left out and the
table says so.

Fairness: every tool backs up a fresh ``cp -a`` of the pristine corpus at the same
absolute path, synced and read once just before (page cache warm for all); every tool
gets empty cache, config and state directories (XDG_CACHE_HOME, XDG_CONFIG_HOME,
XDG_STATE_HOME: restic's and rustic's cache, corestate's listing cache) each round.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import corpora  # beside this script: on sys.path when run as one
from proctree import PeakSampler

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("PEERS_DIR", HERE / ".peers")) / "bin"
PASSWORD = "bench"
PHASES: dict[str, str] = {"init": "init", "backup1": "first backup",
                          "backup2": "unchanged re-backup", "backup3": "backup after 1% changed",
                          "restore": "full restore"}
MEMORY, REPO = "peak memory MiB (sum over processes, max of phases)", "repository MiB after the 1%-changed backup"
SUBJECT = "corestate"
_CODE_VERSION = (  # which corestate ran: where it was imported from, and its commit
    "import os, subprocess, corestate; "
    "d = os.path.dirname(os.path.dirname(os.path.abspath(corestate.__file__))); "
    "c = subprocess.run(['git', '-C', d, 'describe', '--always', '--dirty'], "
    "capture_output=True, text=True).stdout.strip() or 'no git'; "
    "print(f'corestate from {d}/ at {c}')")
MEMORY_BASE = "restic-0.14"
# row -> limit on corestate ÷ best peer (memory: ÷ restic 0.14)
TARGETS: dict[str, float] = {"backup1": 0.5, "backup2": 0.7, "backup3": 0.7, "restore": 0.7,
                             MEMORY: 1.0, REPO: 1.0}
MIB = 1 << 20


@dataclass(frozen=True)
class Tool:
    """How to drive one backup tool; argv builders get (exe, repo, source|target, snapshot no)."""
    label: str
    find: Callable[[], str | None]       # the executable, or None when absent
    absent_hint: str
    env: dict[str, str]
    version: Callable[[str], list[str]]
    init: Callable[[str, Path], list[str]]
    backup: Callable[[str, Path, Path, int], list[str]]
    restore: Callable[[str, Path, Path, int], list[str]]
    restore_in_target: bool = False      # run restore with cwd=target (borg extract)


def _executable(path: Path) -> Callable[[], str | None]:
    return lambda: str(path) if os.access(path, os.X_OK) else None


def _restic(label: str, path: Path, hint: str) -> Tool:
    return Tool(
        label=label, find=_executable(path), absent_hint=hint,
        env={"RESTIC_PASSWORD": PASSWORD},
        version=lambda x: [x, "version"],
        init=lambda x, r: [x, "init", "--repo", str(r)],
        backup=lambda x, r, s, n: [x, "backup", "--repo", str(r), "--host", "bench", str(s)],
        restore=lambda x, r, t, n: [x, "restore", "latest", "--repo", str(r), "--target", str(t)])


TOOLS: dict[str, Tool] = {
    "restic-0.14": _restic("restic 0.14", Path("/usr/bin/restic"), "apt-get install restic"),
    "restic-0.18": _restic("restic 0.18.1", PEERS / "restic", "run benchmarks/peers.sh restic"),
    "rustic": Tool(
        label="rustic", find=_executable(PEERS / "rustic"),
        absent_hint="run benchmarks/peers.sh rustic (about 15 minutes)",
        env={"RUSTIC_PASSWORD": PASSWORD, "RUSTIC_NO_PROGRESS": "true"},
        version=lambda x: [x, "--version"],
        init=lambda x, r: [x, "--no-progress", "-r", str(r), "init"],
        backup=lambda x, r, s, n: [x, "--no-progress", "-r", str(r), "backup", "--host", "bench", str(s)],
        restore=lambda x, r, t, n: [x, "--no-progress", "-r", str(r), "restore", "latest", str(t)]),
    "borg": Tool(
        label="borg", find=lambda: shutil.which("borg"), absent_hint="apt-get install borgbackup",
        env={"BORG_PASSPHRASE": PASSWORD, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
             "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"},
        version=lambda x: [x, "--version"],
        init=lambda x, r: [x, "init", "-e", "repokey-blake2", str(r)],
        backup=lambda x, r, s, n: [x, "create", "--compression", "zstd,3", f"{r}::snap{n}", str(s)],
        restore=lambda x, r, t, n: [x, "extract", f"{r}::snap{n}"],
        restore_in_target=True),
    SUBJECT: Tool(
        label="corestate", find=lambda: sys.executable, absent_hint="",
        # the checkout this script belongs to, whatever else the interpreter would import
        # (an editable install of another clone, or the current directory's tree)
        env={"CORESTATE_PASSWORD": PASSWORD, "PYTHONPATH": str(HERE.parent)},
        version=lambda x: [x, "-c", _CODE_VERSION],
        init=lambda x, r: [x, "-m", "corestate", "init", "--repo", str(r)],
        backup=lambda x, r, s, n: [x, "-m", "corestate", "backup", "--repo", str(r), "--host", "bench",
                                   str(s)],
        restore=lambda x, r, t, n: [x, "-m", "corestate", "restore", "latest", "--repo", str(r),
                                    "--target", str(t)]),
}


@dataclass
class Measurement:
    rc: int
    wall_s: float
    cpu_s: float
    peak_mib: float
    processes: int = 1                  # most processes seen at once in the tree
    error: str | None = None
    repo_mib: float | None = None


def measure_child(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Measurement:
    """Run argv to completion: wall time, CPU time of the child and all it waited for
    (wait4), peak summed RSS of its process tree (sampled until it exits, before reaping)."""
    os.sync()   # earlier writes (copies, previous phases) must not be flushed on our clock
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err)
        except OSError as exc:
            return Measurement(127, 0.0, 0.0, 0.0, error=f"cannot start: {exc}")
        sampler = PeakSampler(proc.pid).start()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)   # exited, not yet reaped
        wall = time.perf_counter() - t0
        sampler.stop()
        _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    error = None
    if rc != 0:
        lines = log.with_suffix(".err").read_text(errors="replace").strip().splitlines()
        error = f"exit {rc}: {lines[-1].strip() if lines else '(no stderr)'}"
    return Measurement(rc, wall, ru.ru_utime + ru.ru_stime, sampler.peak_mib, sampler.max_processes,
                       error)


def du_mib(path: Path) -> float:
    """Allocated size of a tree like `du -s` (hard links once), in MiB."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total / MIB


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 for regular files, 'symlink:<target>' / 'other' otherwise."""
    digest: dict[str, str] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            mode = os.lstat(p).st_mode
            if stat.S_ISREG(mode):
                with open(p, "rb") as f:
                    value = hashlib.file_digest(f, "sha256").hexdigest()
            else:
                value = f"symlink:{os.readlink(p)}" if stat.S_ISLNK(mode) else "other"
            digest[os.path.relpath(p, root)] = value
    return digest


def compare_trees(expected: dict[str, str], actual: dict[str, str]) -> str | None:
    """None if equal, else a short description of the difference."""
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    differ = sorted(k for k in expected.keys() & actual.keys() if expected[k] != actual[k])
    if not (missing or extra or differ):
        return None
    parts = [f"{label} {len(xs)} (e.g. {xs[:3]})" for label, xs in
             (("missing", missing), ("extra", extra), ("content differs", differ)) if xs]
    return "restore verification FAILED: " + "; ".join(parts)


def change_files(root: Path, seed: int, fraction: float = 0.01) -> dict[str, int]:
    """Deterministically modify ~fraction of the files in place and move their mtime on."""
    files = corpora.iter_files(root)
    rng = random.Random(seed)
    chosen = rng.sample(files, max(1, round(len(files) * fraction)))
    changed_bytes = 0
    for path in chosen:
        size = path.stat().st_size
        data = rng.randbytes(rng.randint(1, 4096))
        with open(path, "r+b") as f:
            if size and rng.random() < 0.5:          # overwrite at a random offset
                f.seek(rng.randrange(size))
            else:                                     # append
                f.seek(0, os.SEEK_END)
            f.write(data)
        now = time.time_ns()
        os.utime(path, ns=(now, max(now, path.stat().st_mtime_ns + 10**9)))
        changed_bytes += len(data)
    return {"files": len(chosen), "of": len(files), "bytes": changed_bytes}


@dataclass
class ToolResult:
    version: str                        # "absent (...)" when the binary is missing
    rounds: list[dict[str, Measurement]] = field(default_factory=list)
    failure: str | None = None          # first failing phase: "phase: exit N: last stderr line"
    verify: str | None = None           # "ok (N files)" or failure text (last round)
    changed: dict[str, int] = field(default_factory=dict)

    @property
    def absent(self) -> bool:
        return self.version.startswith("absent")

    def median(self, phase: str, metric: str) -> float | None:
        values = [getattr(r[phase], metric) for r in self.rounds
                  if phase in r and not r[phase].error and getattr(r[phase], metric) is not None]
        return statistics.median(values) if values else None

    def peak_memory(self) -> float | None:
        """Median over rounds of the largest peak of any phase."""
        values = [max(m.peak_mib for m in r.values()) for r in self.rounds
                  if r and not any(m.error for m in r.values())]
        return statistics.median(values) if values else None


def tool_version(tool: Tool) -> str:
    exe = tool.find()
    if exe is None:
        return f"absent ({tool.absent_hint})"
    try:
        out = subprocess.run(tool.version(exe), capture_output=True, text=True, timeout=60,
                             env={**os.environ, **tool.env})
        text = (out.stdout or out.stderr).strip().splitlines() or [f"exit {out.returncode}"]
        return text[0] if out.returncode == 0 else f"unusable ({text[-1]})"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unusable ({exc})"


def _progress(tool: str, rnd: int, phase: str, m: Measurement) -> None:
    repo = "" if m.repo_mib is None else f" {m.repo_mib:8.1f} MiB repo"
    print(f"  r{rnd} {tool:11s} {phase:8s} {m.wall_s:8.2f} s wall {m.cpu_s:8.2f} s cpu "
          f"{m.peak_mib:6.0f} MiB peak ({m.processes} proc){repo}{'  ' + m.error if m.error else ''}",
          file=sys.stderr, flush=True)


def run_round(name: str, res: ToolResult, rnd: int, src: Path, work: Path) -> None:
    """One round of every phase for one tool, into res (failure recorded, not raised)."""
    tool, exe = TOOLS[name], TOOLS[name].find()
    assert exe is not None
    repo, target, logs = work / "repo", work / "restore", work / "logs"
    for d in (target, logs, work / "cache", work / "config", work / "state"):
        d.mkdir(parents=True)
    env = {**os.environ, **tool.env, "XDG_CACHE_HOME": str(work / "cache"),
           "XDG_CONFIG_HOME": str(work / "config"), "XDG_STATE_HOME": str(work / "state")}
    env.pop("CORESTATE_STATE_DIR", None)
    phases: dict[str, Measurement] = {}
    res.rounds.append(phases)
    steps: list[tuple[str, list[str], Path]] = [("init", tool.init(exe, repo), work)]
    steps += [(f"backup{n}", tool.backup(exe, repo, src, n), work) for n in (1, 2, 3)]
    steps.append(("restore", tool.restore(exe, repo, target, 3),
                  target if tool.restore_in_target else work))
    for phase, argv, cwd in steps:
        if phase == "backup3":
            res.changed = change_files(src, corpora.SEED + 1)
        m = measure_child(argv, env, cwd, logs / phase)
        if phase.startswith("backup"):
            m.repo_mib = du_mib(repo)
        phases[phase] = m
        _progress(name, rnd, phase, m)
        if m.error:
            res.failure = f"round {rnd} {phase}: {m.error}"
            return
    expected = tree_digest(src)
    # restic, rustic, corestate: T/<abs path>; borg (cwd=T, leading "/" stripped): the same.
    problem = compare_trees(expected, tree_digest(target / src.relative_to("/")))
    res.verify = problem or f"ok ({len(expected)} files identical)"
    if problem:
        res.failure = f"round {rnd} restore: {problem}"
        print(f"\n!!! {name}: {problem}\n", file=sys.stderr, flush=True)


def prepare_source(corpus: Path, src: Path) -> None:
    """Fresh copy of the pristine corpus at a fixed path, synced, then read once (warm cache)."""
    shutil.rmtree(src, ignore_errors=True)
    src.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(corpus), str(src)], check=True)
    os.sync()
    tree_digest(src)


def run_corpus(tools: list[str], corpus: Path, run_dir: Path, rounds: int, keep: bool
               ) -> dict[str, ToolResult]:
    """Interleaved rounds: round r runs the present tools rotated by r."""
    results = {name: ToolResult(tool_version(TOOLS[name])) for name in tools}
    for name, res in results.items():
        if not res.absent:
            continue
        print(f"  {name}: {res.version}: left out", file=sys.stderr, flush=True)
    src = run_dir / "src" / corpus.name
    for rnd in range(1, rounds + 1):
        present = [t for t in tools if not results[t].absent and results[t].failure is None
                   and not results[t].version.startswith("unusable")]
        k = (rnd - 1) % max(len(present), 1)
        for name in present[k:] + present[:k]:
            print(f"[{corpus.name}] round {rnd}/{rounds}: {name}", file=sys.stderr, flush=True)
            prepare_source(corpus, src)
            work = run_dir / f"{name}-r{rnd}"
            run_round(name, results[name], rnd, src, work)
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
    return results


def _best_peer(results: dict[str, ToolResult], value: Callable[[ToolResult], float | None]
               ) -> tuple[str, float] | None:
    scored = [(v, t) for t, r in results.items() if t != SUBJECT and (v := value(r)) is not None]
    return (min(scored)[1], min(scored)[0]) if scored else None


def rows(results: dict[str, ToolResult]
         ) -> list[tuple[str, str, dict[str, float | None], tuple[str, float] | None]]:
    """(row key, title, tool -> median, (reference tool, its value) or None)."""
    out = []
    for phase, title in PHASES.items():
        vals = {t: r.median(phase, "wall_s") for t, r in results.items()}
        out.append((phase, f"{title} (wall s)", vals,
                    _best_peer(results, lambda r, p=phase: r.median(p, "wall_s"))))
    mem = {t: r.peak_memory() for t, r in results.items()}
    out.append((MEMORY, MEMORY, mem,
                (MEMORY_BASE, mem[MEMORY_BASE]) if mem.get(MEMORY_BASE) is not None else None))
    repo = {t: r.median("backup3", "repo_mib") for t, r in results.items()}
    out.append((REPO, REPO, repo, _best_peer(results, lambda r: r.median("backup3", "repo_mib"))))
    return out


def _fmt(v: float | None, key: str) -> str:
    if v is None:
        return "—"
    return f"{v:.0f}" if key == MEMORY else f"{v:.1f}" if key == REPO else f"{v:.2f}"


def _absent_cell(r: ToolResult) -> str | None:
    if r.absent:
        return "absent"
    if r.version.startswith("unusable"):
        return "unusable"
    return None


def render_table(results: dict[str, ToolResult]) -> str:
    """Medians; the reference (best peer, or restic 0.14 for memory); corestate's ratio, target."""
    head = (["Phase"] + [TOOLS[t].label for t in results]
            + ["reference", "corestate ÷ reference", "target", "met?"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, title, vals, ref in rows(results):
        row = [title]
        for t, r in results.items():
            special = _absent_cell(r)
            cell = special or _fmt(vals[t], key)
            if vals[t] is None and not special and r.failure:
                cell = "FAIL"
            row.append(cell)
        subject = vals.get(SUBJECT)
        ratio = subject / ref[1] if subject is not None and ref and ref[1] else None
        limit = TARGETS.get(key)
        row.append(f"{TOOLS[ref[0]].label}: {_fmt(ref[1], key)}" if ref else "—")
        # rounded up: a ratio just over its target never prints as the target itself
        shown = math.ceil(round(ratio * 100, 6)) / 100 if ratio is not None else None
        row.append(f"{shown:.2f}×" if shown is not None else "—")
        row.append(f"≤ {limit}×" if limit is not None else "—")
        row.append("—" if limit is None else "n/a" if ratio is None
                   else "✅ met" if ratio <= limit else "❌ missed")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def render_detail(results: dict[str, ToolResult]) -> str:
    """CPU seconds and peak memory per phase (medians), the most processes at once, and the
    range of wall times over the rounds."""
    present = [t for t, r in results.items() if _absent_cell(r) is None]
    head = ["Phase"] + [f"{TOOLS[t].label} CPU s / peak MiB; wall range" for t in present]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for phase, title in PHASES.items():
        row = [title]
        for t in present:
            r = results[t]
            cpu, mem = r.median(phase, "cpu_s"), r.median(phase, "peak_mib")
            procs = max((rd[phase].processes for rd in r.rounds if phase in rd), default=0)
            walls = [rd[phase].wall_s for rd in r.rounds if phase in rd and not rd[phase].error]
            spread = f"; wall {min(walls):.2f}–{max(walls):.2f}" if len(walls) > 1 else ""
            row.append("—" if cpu is None or mem is None else
                       f"{cpu:.2f} / {mem:.0f}" + (f" ({procs} proc)" if procs > 1 else "") + spread)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def machine() -> str:
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return (f"{os.cpu_count()} CPUs ({model}), {mem / 1024**2:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def render_section(kind: str, scale: str, info: dict[str, Any], results: dict[str, ToolResult],
                   meta: dict[str, str], rounds: int, load: tuple[str, str]) -> str:
    changed = next((r.changed for r in results.values() if r.changed), None)
    out = [f"## Backup benchmark — corpus `{kind}` ({scale}) — {meta['date']}", "",
           f"- Machine: {meta['machine']}; load average (1, 5, 15 min) {load[0]} at the start, "
           f"{load[1]} at the end of this corpus",
           f"- Command: `{meta['command']}`",
           "- Tools: " + "; ".join(f"{TOOLS[t].label}: {r.version}" for t, r in results.items()),
           f"- Corpus: {info['files']} files, {info['mib']} MiB; the 1%-changed backup saw "
           + (f"{changed['files']} of {changed['of']} files changed ({changed['bytes']} bytes)"
              if changed else "n/a"),
           f"- Medians of {rounds} interleaved round(s). Reference: the best peer in that row "
           "(fastest, smallest repository); for peak memory restic 0.14. Peak memory = largest "
           "sum of RSS over the tool's process tree, sampled every 50 ms (benchmarks/proctree.py).",
           "", render_table(results), "", render_detail(results), ""]
    for t, r in results.items():
        status = (r.version if _absent_cell(r) else f"**FAILED** — {r.failure}" if r.failure
                  else f"restore verification {r.verify}")
        out.append(f"- {TOOLS[t].label}: {status}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="mixed",
                    help=f"comma-separated kinds of {', '.join(corpora.KINDS)}, or 'all' (default: mixed)")
    ap.add_argument("--scale", choices=corpora.SCALES, default="full",
                    help="corpus size: tiny (tests), quick, medium, full (default)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians reported")
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help=f"comma-separated, of {', '.join(TOOLS)} (default: all)")
    ap.add_argument("--data", type=Path, default=corpora.DATA,
                    help="where corpora are cached and runs happen (default: benchmarks/.data)")
    ap.add_argument("--out", type=Path, help="append the markdown sections to this file")
    ap.add_argument("--json", type=Path, help="write every round's raw numbers to this file")
    ap.add_argument("--keep", action="store_true", help="keep repositories, restores and logs")
    args = ap.parse_args(argv)
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    kinds = list(corpora.KINDS) if args.corpus == "all" else [k.strip() for k in args.corpus.split(",")]
    if unknown := [t for t in wanted if t not in TOOLS] + [k for k in kinds if k not in corpora.KINDS]:
        ap.error(f"unknown tools or corpora: {unknown}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    tools = sorted(wanted, key=list(TOOLS).index)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
            "command": shlex.join(["python", *sys.argv] if argv is None else
                                  ["python", "benchmarks/backup_bench.py", *argv])}
    raw: dict[str, Any] = {"meta": meta, "corpora": {}}
    ok = True
    for kind in kinds:
        corpus, info = corpora.ensure(kind, args.scale, args.data)
        (args.data / "work").mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(dir=args.data / "work", prefix=f"{kind}-"))
        load_start = loadavg()
        try:
            results = run_corpus(tools, corpus, run_dir, args.rounds, args.keep)
        finally:
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        ok &= all(r.failure is None for r in results.values())
        # each corpus is reported as soon as it is done: a long run stopped later keeps it
        section = render_section(kind, args.scale, info, results, meta, args.rounds,
                                 (load_start, loadavg()))
        print(section, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + section)
        raw["corpora"][kind] = {"scale": args.scale, "corpus": info, "tools": {
            t: {**{k: v for k, v in asdict(r).items() if k != "rounds"},
                "rounds": [{p: asdict(m) for p, m in rd.items()} for rd in r.rounds]}
            for t, r in results.items()}}
        if args.json:
            args.json.write_text(json.dumps(raw, indent=1))
    if not ok:
        print("backup_bench: at least one tool failed or a restore did not match the source",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
