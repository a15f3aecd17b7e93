"""RPO benchmark for `corestate protect` (embedded mode), beside restic on a schedule.

What is measured, and why:

- *RPO* of a write = time from the writer closing the file to the commit of the first
  snapshot that began reading after that close (so it holds that version or a newer
  one). A writer process modifies and creates files at a fixed rate (10, 100, 1000
  files/s) for a fixed time while `corestate protect --json` runs; the snapshot lines
  it prints carry their start and commit times. We report p50/p99/max.
- *restic every 60 s*: restic has no watcher, so its RPO is bound by its schedule: a
  write waits for the next run, then for that run to finish. We measure restic's backup
  duration on the same tree after the writes and compute the RPO of the same writes
  against a 60 s schedule with that duration.
- *Agent cost*: CPU (utime+stime from /proc) and RSS of the protect process while idle
  (watching the whole tree, no writes) and under each write rate.

Run: `python benchmarks/rpo_bench.py [--quick] [--files N] [--seconds S] [--interval I]`
(`--quick`: 10k files, 10 s per rate). Prints a markdown section; `--out FILE` appends it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PASSWORD = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_tree(root: Path, files: int) -> None:
    per_dir = 100
    for i in range(files):
        d = root / f"d{i // (per_dir * 100)}" / f"e{(i // per_dir) % 100}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(b"initial %d\n" % i * 8)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class Protect:
    def __init__(self, repo: Path, src: Path, interval: float) -> None:
        env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD,
               "CORESTATE_STATE_DIR": str(repo.parent / "state")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corestate", "protect", str(src), "--repo", str(repo),
             "--json", "--interval", str(interval)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.points: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.points.append(json.loads(line))

    def wait_points(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.points) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(self.points) < n:
            raise RuntimeError(f"protect made {len(self.points)} snapshots, wanted {n}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self._reader.join(timeout=10)


def writer(src: Path, rate: float, seconds: float, files: int, seed: int) -> list[float]:
    """Modify (and every tenth time create) files at ``rate``/s; the close times."""
    import random
    rng = random.Random(seed)
    closes = []
    start = time.monotonic()
    n = int(rate * seconds)
    for k in range(n):
        due = start + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        i = rng.randrange(files)
        d = src / f"d{i // 10000}" / f"e{(i // 100) % 100}"
        name = d / (f"new{seed}-{k}.txt" if k % 10 == 0 else f"f{i}.txt")
        with open(name, "ab") as f:
            f.write(b"change %d\n" % k)
        closes.append(time.time())
    return closes


def rpo(closes: list[float], points: list[dict]) -> list[float]:
    out = []
    for t in closes:
        later = [p for p in points if p["started"] >= t]
        if later:
            out.append(later[0]["committed"] - t)
    return out


def restic_schedule_rpo(closes: list[float], period: float, duration: float) -> list[float]:
    """RPO of the same writes if restic ran every ``period`` s, each run taking
    ``duration`` s (the schedule's phase is that of the first write)."""
    t0 = closes[0]
    return [(period - (t - t0) % period) + duration for t in closes]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--files", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--rates", default="10,100,1000")
    ap.add_argument("--out")
    args = ap.parse_args()
    files = args.files or (10_000 if args.quick else 100_000)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    rates = [float(r) for r in args.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rpo-", dir=os.environ.get("TMPDIR")))
    try:
        src, repo = work / "src", work / "repo"
        src.mkdir()
        print(f"making {files} files", file=sys.stderr)
        make_tree(src, files)
        env = {**os.environ, "CORESTATE_PASSWORD": PASSWORD}
        subprocess.run([sys.executable, "-m", "corestate", "init", "--repo", str(repo), "-q"],
                       env=env, check=True)
        p = Protect(repo, src, args.interval)
        p.wait_points(1, timeout=600)
        first = p.points[0]
        print(f"catch-up scan: {first['committed'] - first['started']:.2f}s", file=sys.stderr)
        time.sleep(2)
        cpu0, t0 = cpu_seconds(p.proc.pid), time.monotonic()
        time.sleep(20 if not args.quick else 10)
        idle_cpu = (cpu_seconds(p.proc.pid) - cpu0) / (time.monotonic() - t0) * 100
        idle_rss = rss_mib(p.proc.pid)
        rows = []
        for k, rate in enumerate(rates):
            before = len(p.points)
            cpu0, t0 = cpu_seconds(p.proc.pid), time.monotonic()
            peak = [0.0]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.5):
                    peak[0] = max(peak[0], rss_mib(p.proc.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            closes = writer(src, rate, seconds, files, seed=k)
            p.wait_points(before + 1, timeout=60)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(
                    q["started"] >= closes[-1] for q in p.points[before:]):
                time.sleep(0.1)
            load_cpu = (cpu_seconds(p.proc.pid) - cpu0) / (time.monotonic() - t0) * 100
            stop.set()
            r = rpo(closes, p.points[before:])
            durations = [q["committed"] - q["started"] for q in p.points[before:]]
            rows.append((rate, len(closes), len(r), r, load_cpu, peak[0],
                         len(p.points) - before, statistics.mean(durations)))
            print(f"{rate:g}/s: p50 {percentile(r, .5):.2f}s p99 {percentile(r, .99):.2f}s",
                  file=sys.stderr)
            time.sleep(2)
        p.stop()
        # restic on the same final tree: how long one scheduled run takes
        renv = {**os.environ, "RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "rcache")}
        rrepo = work / "restic"
        subprocess.run(["restic", "init", "-q", "--repo", str(rrepo)], env=renv, check=True)
        subprocess.run(["restic", "backup", "-q", "--repo", str(rrepo), str(src)], env=renv, check=True)
        (src / "d0" / "e0" / "f0.txt").write_text("touch")
        t = time.monotonic()
        subprocess.run(["restic", "backup", "-q", "--repo", str(rrepo), str(src)], env=renv, check=True)
        restic_run = time.monotonic() - t
        cmd = "python benchmarks/rpo_bench.py " + " ".join(sys.argv[1:])
        lines = [f"## RPO benchmark — `corestate protect` (embedded) — {time.strftime('%Y-%m-%dT%H:%M:%S')}",
                 "",
                 f"- Command: `{cmd}`",
                 f"- Machine: {os.cpu_count()} CPUs; tree of {files} files; each rate runs {seconds:g} s; "
                 f"`--interval {args.interval:g}`; catch-up scan of the tree took "
                 f"{first['committed'] - first['started']:.2f} s",
                 f"- Idle (watching all {files} files, no writes): agent CPU {idle_cpu:.2f}% of one core, "
                 f"RSS {idle_rss:.0f} MiB",
                 f"- restic every 60 s: one incremental run on this tree takes {restic_run:.2f} s; its RPO is "
                 "the wait for the next run plus that",
                 "",
                 "| writes/s | writes | covered | corestate RPO p50 s | p99 s | max s | snapshots | mean snapshot s "
                 "| agent CPU % | agent peak RSS MiB | restic/60s RPO p50 s | p99 s |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for rate, n, covered, r, cpu, peak_rss, snaps, mean_d in rows:
            rr = restic_schedule_rpo([0.0] + [i / rate for i in range(1, n)], 60.0, restic_run)
            lines.append(f"| {rate:g} | {n} | {covered} | {percentile(r, .5):.2f} | {percentile(r, .99):.2f} | "
                         f"{max(r) if r else float('nan'):.2f} | {snaps} | {mean_d:.2f} | {cpu:.0f} | "
                         f"{peak_rss:.0f} | {percentile(rr, .5):.1f} | {percentile(rr, .99):.1f} |")
        lines.append("")
        text = "\n".join(lines)
        print(text)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + text + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
