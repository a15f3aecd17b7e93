"""Side-by-side backup benchmark: corestate vs restic vs borg on the same data.

What is measured, and why
-------------------------
Each tool runs the same four phases against the same corpus, in the same order:

1. ``backup1`` -- first backup into a fresh repository (``init`` is run but not
   timed): raw chunking/hashing/compression/encryption/upload throughput.
2. ``backup2`` -- unchanged re-backup: cost of change detection (files cache /
   parent snapshot), which dominates day-to-day backups.
3. ``backup3`` -- backup after ~1% of the files were modified in place (seeded,
   deterministic: bytes appended or overwritten, mtime touched): incremental cost
   and how much new data the repository grows by.
4. ``restore`` -- full restore of the latest snapshot into an empty directory,
   then verification that the restored tree equals the source byte for byte
   (file list + sha256 of every file); a mismatch fails the run loudly.

For every phase the tool is a ``subprocess.Popen`` child reaped with
``os.wait4``, which yields its own rusage: wall time (perf_counter around the
child), CPU time (ru_utime + ru_stime, user+sys, including any threads) and peak
RSS (ru_maxrss, KiB -> MiB). After each backup phase the repository directory's
on-disk size (``du``: allocated blocks, hard links counted once) is recorded.

Fairness: every tool gets a fresh copy of the pristine corpus at the *same*
absolute path (so snapshot paths are identical), the copy is synced and read
once before the first backup, so the page cache is warm for every tool (dropping
caches is not reliably possible here). Each tool gets fresh, empty cache/config
directories (XDG_CACHE_HOME / XDG_CONFIG_HOME), so no state leaks between runs.
Every figure is also reported as a ratio to restic's, with corestate's targets.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
PASSWORD = "bench"
SEED = 20240601
CORPUS_VERSION = 1
PHASES: dict[str, str] = {"backup1": "first backup", "backup2": "unchanged re-backup",
                          "backup3": "backup after 1% changed", "restore": "full restore"}
# (phase or "max", metric, limit): corestate/restic must be <= limit.
TARGETS: list[tuple[str, str, float]] = [("backup1", "wall", 0.4), ("backup2", "wall", 0.5),
                                         ("restore", "wall", 1.0), ("max", "rss", 1.0),
                                         ("backup3", "repo", 1.0)]
MIB = 1 << 20


def _corestate() -> list[str]:
    exe = shutil.which("corestate")
    return [exe] if exe else [sys.executable, "-m", "corestate.cli.main"]


@dataclass(frozen=True)
class Tool:
    """How to drive one backup tool; argv builders get (repo, source|target, snapshot no)."""
    env: dict[str, str]
    version: Callable[[], list[str]]
    init: Callable[[Path], list[str]]
    backup: Callable[[Path, Path, int], list[str]]
    restore: Callable[[Path, Path, int], list[str]]
    restore_in_target: bool = False  # run restore with cwd=target (borg extract)


TOOLS: dict[str, Tool] = {
    "restic": Tool(
        env={"RESTIC_PASSWORD": PASSWORD},
        version=lambda: ["restic", "version"],
        init=lambda r: ["restic", "init", "--repo", str(r)],
        backup=lambda r, s, n: ["restic", "backup", "--repo", str(r), "--host", "bench", str(s)],
        restore=lambda r, t, n: ["restic", "restore", "latest", "--repo", str(r), "--target", str(t)]),
    "corestate": Tool(
        env={"CORESTATE_PASSWORD": PASSWORD},
        version=lambda: [*_corestate(), "--version"],
        init=lambda r: [*_corestate(), "init", "--repo", str(r)],
        backup=lambda r, s, n: [*_corestate(), "backup", "--repo", str(r), str(s)],
        restore=lambda r, t, n: [*_corestate(), "restore", "latest", "--repo", str(r), "--target", str(t)]),
    "borg": Tool(
        env={"BORG_PASSPHRASE": PASSWORD, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
             "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"},
        version=lambda: ["borg", "--version"],
        init=lambda r: ["borg", "init", "-e", "repokey-blake2", str(r)],
        backup=lambda r, s, n: ["borg", "create", "--compression", "zstd,3", f"{r}::snap{n}", str(s)],
        restore=lambda r, t, n: ["borg", "extract", f"{r}::snap{n}"],
        restore_in_target=True),
}
BASELINE = "restic"


@dataclass
class Measurement:
    argv: list[str]
    rc: int
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_mib: float
    error: str | None = None
    repo_mib: float | None = None

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def reset_peak_rss() -> None:
    """Shrink our RSS (gc, malloc_trim) and reset our VmHWM to it (clear_refs "5").

    A child's ru_maxrss starts at the parent's peak (exec records the vforked-from address
    space's high-water mark), so this bounds that floor by our *current* RSS, ~20-25 MiB;
    the report states the floor (ru_maxrss of `true`)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_child(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> Measurement:
    """Run argv to completion; wall time, and rusage of exactly this child via wait4."""
    os.sync()   # earlier writes (copies, previous phases) must not be flushed on our clock
    reset_peak_rss()
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err)
        except OSError as exc:
            return Measurement(argv, 127, 0.0, 0.0, 0.0, 0.0, f"cannot start: {exc}")
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    error = None
    if rc != 0:
        lines = log.with_suffix(".err").read_text(errors="replace").strip().splitlines()
        error = f"exit {rc}: {lines[-1].strip() if lines else '(no stderr)'}"
    return Measurement(argv, rc, wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss / 1024, error)


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


def iter_files(root: Path) -> list[Path]:
    """All regular files below root, sorted (deterministic)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(Path(dirpath, f) for f in sorted(filenames)
                     if stat.S_ISREG(os.lstat(os.path.join(dirpath, f)).st_mode))
    return found


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



def _text(rng: random.Random, vocab: list[str], size: int) -> bytes:
    words = rng.choices(vocab, k=size // 5 + 16)
    lines = (" ".join(words[i:i + 12]) for i in range(0, len(words), 12))
    return "\n".join(lines).encode()[:size]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _randbytes(rng: random.Random, size: int) -> bytes:
    return b"".join(rng.randbytes(min(MIB, size - o)) for o in range(0, size, MIB))


def mixed_params(quick: bool) -> dict[str, Any]:
    sizes = (12, 8, 12, 3000, 8) if quick else (200, 100, 200, 20000, 200)   # ~61 MiB / ~1 GB
    keys = ("text_mib", "bin_mib", "random_mib", "small_files", "big_mib")
    return {"kind": "mixed", "seed": SEED, "v": CORPUS_VERSION, "big_count": 2,
            **dict(zip(keys, sizes, strict=True))}


def generate_mixed(root: Path, p: dict[str, Any]) -> None:
    """Seeded mix: compressible text, ELF binaries, random data, small files, big files."""
    rng = random.Random(p["seed"])
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(400)]
    left, i = p["text_mib"] * MIB, 0
    while left > 0:                      # text: 1 KiB .. 4 MiB, compressible
        size = min(left, int(rng.lognormvariate(11, 1.6)) + 1024, 4 * MIB)
        _write(root / "text" / f"t{i // 100:02d}" / f"doc{i:05d}.txt", _text(rng, vocab, size))
        left, i = left - size, i + 1
    left = p["bin_mib"] * MIB            # binaries: real ELF files, sorted walk
    for src in iter_files(Path("/usr/bin")) + iter_files(Path("/usr/lib/x86_64-linux-gnu")):
        size = src.stat().st_size
        if left <= 0 or not 16 * 1024 <= size <= min(left, 32 * MIB):
            continue
        with open(src, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        dst = root / "bin" / src.relative_to("/usr")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        left -= size
    left, i = p["random_mib"] * MIB, 0
    while left > 0:                      # random: 64 KiB .. 16 MiB, incompressible
        size = min(left, rng.randint(64 * 1024, 16 * MIB))
        _write(root / "random" / f"r{i:04d}.bin", _randbytes(rng, size))
        left, i = left - size, i + 1
    for i in range(p["small_files"]):    # many small files, nested dirs
        size = rng.randint(1024, 8192)
        data = _text(rng, vocab, size) if rng.random() < 0.7 else rng.randbytes(size)
        _write(root / "small" / f"d{i % 40:02d}" / f"e{i // 40 % 25:02d}" / f"f{i:06d}.dat", data)
    pool = [rng.randbytes(MIB) for _ in range(8)]
    for k in range(p["big_count"]):      # big files: repeated 1 MiB blocks at shifted offsets
        parts: list[bytes] = [rng.randbytes(12345 * k)]
        for _ in range(p["big_mib"]):
            roll = rng.random()
            parts.append(rng.choice(pool) if roll < 0.45 else
                         _text(rng, vocab, MIB) if roll < 0.65 else rng.randbytes(MIB))
        _write(root / "big" / f"big{k}.img", b"".join(parts)[:p["big_mib"] * MIB])


def usr_params(quick: bool) -> dict[str, Any]:
    return {"kind": "usr", "budget_mib": 100 if quick else 1536, "v": CORPUS_VERSION,
            "shares": {"/usr/bin": 0.15, "/usr/lib": 0.55, "/usr/share": 0.30}}


def generate_usr(root: Path, p: dict[str, Any]) -> None:
    """Real files from /usr: regular files only, sorted walk, per-root share of the budget."""
    carry = 0
    for top, share in p["shares"].items():
        left = int(p["budget_mib"] * MIB * share) + carry
        for dirpath, dirnames, filenames in os.walk(top):   # followlinks=False
            dirnames.sort()
            for name in sorted(filenames):
                src = os.path.join(dirpath, name)
                st = os.lstat(src)
                if not stat.S_ISREG(st.st_mode) or st.st_size > left:
                    continue
                dst = root / os.path.relpath(src, "/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                os.chmod(dst, stat.S_IMODE(st.st_mode) & 0o777)   # no setuid copies
                left -= st.st_size
            if left < 64 * 1024:
                break
        carry = max(left, 0)


def ensure_corpus(kind: str, quick: bool) -> tuple[Path, dict[str, Any]]:
    """Generate the pristine corpus unless a marker with the same parameters exists."""
    params = mixed_params(quick) if kind == "mixed" else usr_params(quick)
    name = f"corpus-{kind}{'-quick' if quick else ''}"
    root, marker = DATA / name, DATA / f"{name}.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params and root.is_dir():
        return root, json.loads(marker.read_text())
    print(f"[{kind}] generating corpus in {root} ...", file=sys.stderr, flush=True)
    marker.unlink(missing_ok=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (generate_mixed if kind == "mixed" else generate_usr)(root, params)
    files = iter_files(root)
    info = {"params": params, "files": len(files),
            "mib": round(sum(f.stat().st_size for f in files) / MIB, 1)}
    marker.write_text(json.dumps(info, indent=1))
    return root, info


def change_files(root: Path, seed: int, fraction: float = 0.01) -> dict[str, int]:
    """Deterministically modify ~fraction of the files in place and touch their mtime."""
    files = iter_files(root)
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
    version: str
    phases: dict[str, Measurement] = field(default_factory=dict)
    failure: str | None = None          # first failing phase: "phase: exit N: last stderr line"
    verify: str | None = None           # "ok (N files)" or failure text
    changed: dict[str, int] = field(default_factory=dict)
    cache_mib: float | None = None


def tool_version(tool: Tool) -> str:
    try:
        out = subprocess.run(tool.version(), capture_output=True, text=True, timeout=60)
        text = (out.stdout or out.stderr).strip().splitlines() or [f"exit {out.returncode}"]
        return text[0] if out.returncode == 0 else f"unavailable ({text[-1]})"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"


def _progress(tool: str, phase: str, m: Measurement) -> None:
    repo = "" if m.repo_mib is None else f" {m.repo_mib:8.1f} MiB repo"
    print(f"  {tool:9s} {phase:8s} {m.wall_s:8.2f} s wall {m.cpu_s:8.2f} s cpu {m.maxrss_mib:6.0f} "
          f"MiB rss{repo}{'  ' + m.error if m.error else ''}", file=sys.stderr, flush=True)


def run_tool(name: str, src: Path, work: Path) -> ToolResult:
    tool = TOOLS[name]
    res = ToolResult(version=tool_version(tool))
    repo, target, logs = work / "repo", work / "restore", work / "logs"
    for d in (target, logs, work / "cache", work / "config"):
        d.mkdir(parents=True)
    env = {**os.environ, **tool.env, "XDG_CACHE_HOME": str(work / "cache"),
           "XDG_CONFIG_HOME": str(work / "config")}
    init = measure_child(tool.init(repo), env, work, logs / "init")
    if init.error:
        res.failure = f"init: {init.error}"
        return res
    for n, phase in enumerate(("backup1", "backup2", "backup3"), start=1):
        if phase == "backup3":
            res.changed = change_files(src, SEED + 1)
        m = measure_child(tool.backup(repo, src, n), env, work, logs / phase)
        m.repo_mib = du_mib(repo)
        res.phases[phase] = m
        _progress(name, phase, m)
        if m.error:
            res.failure = f"{phase}: {m.error}"
            return res
    m = measure_child(tool.restore(repo, target, 3), env, target if tool.restore_in_target else work,
                      logs / "restore")
    res.phases["restore"] = m
    res.cache_mib = du_mib(work / "cache")
    _progress(name, "restore", m)
    if m.error:
        res.failure = f"restore: {m.error}"
        return res
    expected = tree_digest(src)   # after the restore, to keep the harness small while it runs
    # restic/corestate: T/<abs path>; borg (cwd=T, leading "/" stripped): the same place.
    problem = compare_trees(expected, tree_digest(target / src.relative_to("/")))
    res.verify = problem or f"ok ({len(expected)} files identical)"
    if problem:
        print(f"\n!!! {name}: {problem}\n", file=sys.stderr, flush=True)
    return res


def prepare_source(corpus: Path, src: Path) -> dict[str, str]:
    """Fresh copy of the pristine corpus at a fixed path, synced, then read once (warm cache)."""
    shutil.rmtree(src, ignore_errors=True)
    src.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(corpus), str(src)], check=True)
    os.sync()
    return tree_digest(src)



def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _cell(value: float | None, base: float | None, fmt: str, show_ratio: bool) -> str:
    if value is None:
        return "—"
    r = _ratio(value, base)
    return f"{value:{fmt}}" + (f" ({r:.2f}×)" if show_ratio and r is not None else "")


def _metric(m: Measurement | None, metric: str) -> float | None:
    if m is None or m.error:
        return None
    return {"wall": m.wall_s, "cpu": m.cpu_s, "rss": m.maxrss_mib, "repo": m.repo_mib}[metric]


def _max_rss(r: ToolResult | None) -> float | None:
    vals = [m.maxrss_mib for m in r.phases.values() if not m.error] if r else []
    return max(vals) if vals else None


def target_marks(results: dict[str, ToolResult]) -> dict[str, str]:
    """Row key -> 'metric r× ≤ limit ✅/❌' for corestate vs restic."""
    marks: dict[str, str] = {}
    cs, base = results.get("corestate"), results.get(BASELINE)
    for phase, metric, limit in TARGETS:
        if phase == "max":
            r = _ratio(_max_rss(cs), _max_rss(base))
        else:
            r = _ratio(_metric(cs.phases.get(phase) if cs else None, metric),
                       _metric(base.phases.get(phase) if base else None, metric))
        mark = "n/a" if r is None else f"{r:.3f}× {'✅ pass' if r <= limit else '❌ miss'}"
        marks[phase] = f"{metric} ≤ {limit}×: {mark}"
    return marks


def render_table(results: dict[str, ToolResult]) -> str:
    """Rows = phases (+ max RSS); per tool wall/CPU/RSS/repo with ratio to restic; targets."""
    tools = list(results)
    base = results.get(BASELINE)
    head = ["Phase"] + [f"{t} {c}" for t in tools for c in ("wall s", "CPU s", "RSS MiB", "repo MiB")]
    head.append("corestate target (÷ restic)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    marks = target_marks(results)
    for phase, title in PHASES.items():
        row = [title]
        for t in tools:
            m, b = results[t].phases.get(phase), base.phases.get(phase) if base else None
            show = t != BASELINE
            if (m is not None and m.error) or (m is None and results[t].failure):
                row += [f"FAIL ({m.rc})" if m else "not run", "", "", ""]
                continue
            row += [_cell(_metric(m, k), _metric(b, k), f, show)
                    for k, f in (("wall", ".2f"), ("cpu", ".2f"), ("rss", ".0f"), ("repo", ".1f"))]
            if phase == "restore" and not (results[t].verify or "").startswith("ok"):
                row[-4] += " **VERIFY FAILED**"
        row.append(marks.get(phase, ""))
        lines.append("| " + " | ".join(row) + " |")
    row = ["peak RSS (max of phases)"]
    for t in tools:
        row += ["", "", _cell(_max_rss(results[t]), _max_rss(base), ".0f", t != BASELINE), ""]
    lines.append("| " + " | ".join(row + [marks["max"]]) + " |")
    return "\n".join(lines)


def machine() -> str:
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?")
    return (f"{os.cpu_count()} CPUs ({model}), {mem / 1024**2:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def render_section(kind: str, quick: bool, info: dict[str, Any],
                   results: dict[str, ToolResult], meta: dict[str, str]) -> str:
    out = [f"## Backup benchmark — corpus `{kind}`{' (quick)' if quick else ''} — {meta['date']}", "",
           f"- Machine: {meta['machine']}",
           f"- Command: `{meta['command']}`",
           "- Tools: " + "; ".join(f"{t}: {r.version}" for t, r in results.items()),
           f"- Corpus: {info['files']} files, {info['mib']} MiB; phase 3 changed "
           + next((f"{r.changed['files']} of {r.changed['of']} files ({r.changed['bytes']} bytes)"
                   for r in results.values() if r.changed), "n/a"),
           "- Page cache warm for all tools (fresh corpus copy, synced and read once before each "
           "tool's first backup); init not timed; repo MiB = `du` of the repository after the phase; "
           "cells for non-restic tools show value (ratio to restic); peak RSS = child's ru_maxrss "
           f"(floor {info['rss_floor_mib']} MiB = harness RSS, see reset_peak_rss).", "",
           render_table(results), ""]
    for t, r in results.items():
        out.append(f"- {t}: " + (f"**FAILED** — {r.failure}" if r.failure else "")
                   + (f"restore verification {r.verify}" if r.verify else ""))
    return "\n".join(out) + "\n"



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=("mixed", "usr", "both"), default="mixed")
    ap.add_argument("--quick", action="store_true", help="small corpora (~60 MB / ~100 MB)")
    ap.add_argument("--tools", default="corestate,restic,borg")
    ap.add_argument("--out", type=Path, help="append the markdown section to this file")
    ap.add_argument("--json", type=Path, help="write raw numbers to this file")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restores")
    args = ap.parse_args(argv)
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    if unknown := [t for t in wanted if t not in TOOLS]:
        ap.error(f"unknown tools: {unknown}")
    tools = sorted(wanted, key=list(TOOLS).index)     # restic (baseline) first
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
            "command": shlex.join(["python", *sys.argv])}
    kinds = ["mixed", "usr"] if args.corpus == "both" else [args.corpus]
    sections: list[str] = []
    raw: dict[str, Any] = {"meta": meta, "corpora": {}}
    ok = True
    for kind in kinds:
        corpus, info = ensure_corpus(kind, args.quick)
        (DATA / "work").mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(dir=DATA / "work", prefix=f"{kind}-"))
        src = run_dir / "src" / kind
        results: dict[str, ToolResult] = {}
        try:
            for name in tools:
                print(f"[{kind}] {name}: preparing source copy", file=sys.stderr, flush=True)
                prepare_source(corpus, src)
                results[name] = run_tool(name, src, run_dir / name)
                ok &= results[name].failure is None and (results[name].verify or "").startswith("ok")
                if not args.keep:
                    shutil.rmtree(run_dir / name, ignore_errors=True)
            floor = measure_child(["true"], dict(os.environ), run_dir, run_dir / "floor")
            info = {**info, "rss_floor_mib": round(floor.maxrss_mib, 1)}
        finally:
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
        sections.append(render_section(kind, args.quick, info, results, meta))
        raw["corpora"][kind] = {"quick": args.quick, "corpus": info, "tools": {
            t: {**{k: v for k, v in asdict(r).items() if k != "phases"},
                "phases": {p: {**asdict(m), "cpu_s": m.cpu_s} for p, m in r.phases.items()}}
            for t, r in results.items()}}
    text = "\n".join(sections)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    if not ok:
        print("backup_bench: at least one tool failed or restore verification failed",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
