"""Cost of metrics: `corestate backup` with metrics on against the same backup with them off.

What is measured, and why
-------------------------
Metrics must not slow the data path. Each *pair* is two first backups of the same corpus
(backup_bench's ``mixed`` corpus) into fresh repositories, one plain (``off``) and one
with ``--metrics-file`` (``on``: the OpenTelemetry SDK loaded, every storage operation
metered, every measurement recorded, the textfile written at the end), in alternating
order (off-on, on-off, ...) so drift of a shared machine falls on both. Each run is a
child reaped with ``os.wait4``: wall time, CPU time (user+sys). Reported: the median of
each, and the median of the per-pair ratios on/off, which is what the 3% target is
judged on. An unchanged re-backup pair is measured too: it is short, so there the fixed
start-up cost of loading OpenTelemetry shows, and so does a backup of a one-file tree
(measured in each pair too). Runs use byte-compiled modules (a warm-up
pair on a tiny tree writes them; ``PYTHONDONTWRITEBYTECODE`` is dropped), as an
installed package has them.

Run: ``python benchmarks/metrics_bench.py [--pairs N] [--quick] [--out FILE]``. The
machine's load (``/proc/loadavg``) is printed before and after: other work on a shared
machine moves every figure.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from backup_bench import PASSWORD, measure_child, prepare_source  # noqa: E402
from corpora import ensure  # noqa: E402


# Byte-compiled modules, as an installed package has them: with PYTHONDONTWRITEBYTECODE
# every run would compile the OpenTelemetry SDK from source, a cost users do not pay.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(kind: str, src: Path, work: Path, metrics: bool, n: int) -> tuple[float, float, float, float]:
    """Init a repository, back up twice (first, unchanged); the two (wall, CPU) figures."""
    repo = work / f"repo-{kind}-{n}"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    env = {**ENV, "CORESTATE_PASSWORD": PASSWORD,
           "CORESTATE_STATE_DIR": str(work / f"state-{kind}-{n}")}
    init = measure_child([sys.executable, "-m", "corestate", "init", "--repo", str(repo)], env, work, logs / "init")
    assert init.rc == 0, init.error
    extra = ["--metrics-file", str(work / f"m-{kind}-{n}.prom")] if metrics else []
    out = []
    for phase in ("first", "unchanged"):
        m = measure_child([sys.executable, "-m", "corestate", "backup", "--repo", str(repo), str(src), *extra],
                          env, work, logs / f"{kind}-{n}-{phase}")
        assert m.rc == 0, m.error
        out += [m.wall_s, m.cpu_s]
    shutil.rmtree(repo)
    if metrics:
        text = (work / f"m-{kind}-{n}.prom").read_text()
        assert "corestate_backup_last_success_timestamp_seconds" in text
    return out[0], out[1], out[2], out[3]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="the small corpus (~60 MB)")
    ap.add_argument("--out", type=Path, help="append the markdown section to this file")
    args = ap.parse_args()
    corpus, info = ensure("mixed", "quick" if args.quick else "full")
    before = load()
    with tempfile.TemporaryDirectory(prefix="metrics-bench-", dir=HERE / ".data") as tmp:
        work = Path(tmp)
        src = work / "src"
        prepare_source(corpus, src)
        tiny = work / "tiny"
        tiny.mkdir()
        (tiny / "f").write_text("warm-up")
        for kind in ("off", "on"):  # not counted: writes the .pyc files of both variants
            run(kind, tiny, work, kind == "on", -1)
        figures: dict[str, list[tuple[float, float, float, float]]] = {"off": [], "on": []}
        small: dict[str, list[tuple[float, float, float, float]]] = {"off": [], "on": []}
        for n in range(args.pairs):
            order = ("off", "on") if n % 2 == 0 else ("on", "off")
            for kind in order:
                small[kind].append(run(kind, tiny, work, kind == "on", 1000 + n))
                figures[kind].append(run(kind, src, work, kind == "on", n))
                w1, c1, w2, c2 = figures[kind][-1]
                print(f"  pair {n} {kind:3s}: first {w1:6.2f} s wall {c1:6.2f} s CPU; "
                      f"unchanged {w2:5.2f} s wall {c2:5.2f} s CPU", file=sys.stderr, flush=True)
    after = load()
    rows = []
    for table, i, phase in ((figures, 0, "first backup"), (figures, 2, "unchanged re-backup"),
                            (small, 0, "one-file backup (start-up cost)")):
        for j, what in ((0, "wall s"), (1, "CPU s")):
            off = [f[i + j] for f in table["off"]]
            on = [f[i + j] for f in table["on"]]
            ratios = [b / a for a, b in zip(off, on)]
            rows.append(f"| {phase} | {what} | {statistics.median(off):.2f} | "
                        f"{statistics.median(on):.2f} | {statistics.median(ratios):.3f} "
                        f"({min(ratios):.3f}–{max(ratios):.3f}) |")
    cmd = "python benchmarks/metrics_bench.py " + " ".join(sys.argv[1:])
    section = "\n".join([
        f"## Metrics cost — corpus `mixed{'-quick' if args.quick else ''}` — "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"- Command: `{cmd.strip()}`",
        f"- Corpus: {info['files']} files, {info['mib']} MiB; {args.pairs} pairs, order "
        "alternating; `on` = `--metrics-file` (OpenTelemetry recorder, metered backend, "
        "textfile written)",
        f"- Load average (1/5/15 min) before: {before}; after: {after} (2 cores, shared)",
        "",
        "| phase | figure | off (median) | on (median) | on/off per pair: median (min–max) |",
        "|---|---|---|---|---|",
        *rows, ""])
    print(section)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
