"""Long fuzzing runs of every decoder target, with atheris (coverage-guided) or
hypothesis.

Every ``tests/fuzz/test_*.py`` module defines ``TARGETS`` (name -> callable on bytes)
and ``SEEDS`` (name -> valid inputs); see ``tests/fuzz/harness.py`` for the contract:
a target returns or raises a ``CoreStateError``, anything else is a crash. This script
runs each target for ``--seconds`` and reports, per target, the engine, the inputs
tried and the crashes, each saved under ``--out`` as a file to reproduce it with.

    python benchmarks/fuzz.py --seconds 120                  # every target, atheris
    python benchmarks/fuzz.py --engine hypothesis --seconds 30 --only repository:tree
    python benchmarks/fuzz.py --replay CRASH_FILE --only repository:tree

atheris (``pip install -e .[fuzz]``) runs each target in its own process (libFuzzer
runs once per process) with the seeds as its starting corpus and the project's code
instrumented for coverage. Without atheris, or with ``--engine hypothesis``, the
targets are fed hypothesis's mutations of the seeds (tests/fuzz/harness.py) until the
time is up. Record long runs in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules() -> list[str]:
    """The fuzz modules' short names (``repository`` for tests/fuzz/test_repository.py)."""
    return sorted(p.stem.removeprefix("test_") for p in (ROOT / "tests" / "fuzz").glob("test_*.py"))


def load(module: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"tests.fuzz.test_{module}")


def targets(only: list[str]) -> list[tuple[str, str]]:
    """(module, target) pairs, all or those named ``module`` or ``module:target``."""
    out = []
    for module in modules():
        for name in load(module).TARGETS:
            if not only or module in only or f"{module}:{name}" in only:
                out.append((module, name))
    return out


# -- atheris: one process per target -------------------------------------------------------
def _atheris_child(module: str, name: str, seconds: int, out: Path) -> None:
    import atheris

    with atheris.instrument_imports(include=["corestate"]):
        mod = load(module)
    from corestate.errors import CoreStateError

    target = mod.TARGETS[name]

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except CoreStateError:
            pass

    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for seed in mod.SEEDS.get(name, []):
        (corpus / hashlib.sha256(seed).hexdigest()[:16]).write_bytes(seed)
    out.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], str(corpus), f"-max_total_time={seconds}",
                   f"-artifact_prefix={out}/{module}-{name}-", "-print_final_stats=1",
                   "-rss_limit_mb=2048", "-timeout=20"], one_input)
    atheris.Fuzz()


def _run_atheris(module: str, name: str, seconds: int, out: Path) -> dict[str, object]:
    before = set(out.glob(f"{module}-{name}-*")) if out.exists() else set()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child", f"{module}:{name}",
                           "--seconds", str(seconds), "--out", str(out)],
                          capture_output=True, text=True, errors="replace",
                          timeout=seconds * 3 + 120)
    runs = re.findall(r"stat::number_of_executed_units: (\d+)", proc.stderr)
    crashes = sorted(set(out.glob(f"{module}-{name}-*")) - before)
    why = ""
    lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
    if crashes:
        found = re.findall(r"^(\w+(?:Error|Exception)\b.*)$", proc.stderr, re.M)
        why = found[-1] if found else lines[-1]
    elif proc.returncode != 0:  # died without an artifact (killed for memory, ...)
        why = f"the fuzzer died (exit {proc.returncode}): {lines[-1]}"
        crashes = [f"(none saved: {why})"]
    return {"target": f"{module}:{name}", "engine": "atheris",
            "seconds": round(time.monotonic() - started), "inputs": int(runs[-1]) if runs else 0,
            "crashes": [str(c) for c in crashes], "error": why, "exit": proc.returncode}


# -- hypothesis: in this process ------------------------------------------------------------
def _run_hypothesis(module: str, name: str, seconds: int, out: Path) -> dict[str, object]:
    from hypothesis import HealthCheck, given, settings

    from corestate.errors import CoreStateError

    mod = load(module)
    from tests.fuzz.harness import json_mutated, mutated

    seeds = mod.SEEDS.get(name) or [b""]
    strategy = json_mutated(seeds) if getattr(mod, "JSON_TARGETS", None) and \
        name in mod.JSON_TARGETS else mutated(seeds)
    target = mod.TARGETS[name]
    count = 0
    crash: list[bytes] = []

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def batch(data: bytes) -> None:
        nonlocal count
        count += 1
        try:
            target(data)
        except CoreStateError:
            pass
        except Exception:
            crash[:] = [data]
            raise

    started = time.monotonic()
    error = ""
    while time.monotonic() - started < seconds and not error:
        try:
            batch()
        except Exception as exc:  # the shrunk failing input is in ``crash``
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    saved = []
    if crash:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{module}-{name}-crash-{hashlib.sha256(crash[0]).hexdigest()[:16]}"
        path.write_bytes(crash[0])
        saved.append(str(path))
    return {"target": f"{module}:{name}", "engine": "hypothesis",
            "seconds": round(time.monotonic() - started), "inputs": count, "crashes": saved,
            "error": error.splitlines()[-1] if error else "", "exit": 1 if error else 0}


def replay(path: str, only: list[str]) -> int:
    from corestate.errors import CoreStateError

    (module, name), = targets(only)
    data = Path(path).read_bytes()
    try:
        load(module).TARGETS[name](data)
    except CoreStateError as exc:
        print(f"{module}:{name}: refused with the project's error: {exc}")
        return 0
    print(f"{module}:{name}: accepted")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--engine", choices=["atheris", "hypothesis"], default=None,
                        help="default: atheris if installed, else hypothesis")
    parser.add_argument("--only", action="append", default=[], metavar="MODULE[:TARGET]")
    parser.add_argument("--out", type=Path, default=Path("fuzz-crashes"),
                        help="directory for crashing inputs (default ./fuzz-crashes)")
    parser.add_argument("--replay", metavar="FILE",
                        help="run one saved input and show what happens")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        module, name = args.child.split(":")
        _atheris_child(module, name, args.seconds, args.out.resolve())
        return 0
    if args.replay:
        return replay(args.replay, args.only)
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    run = _run_atheris if engine == "atheris" else _run_hypothesis
    print(f"engine {engine}, {args.seconds} s per target, load {os.getloadavg()[0]:.1f}")
    print(f"{'target':32} {'seconds':>7} {'inputs':>10} {'crashes':>7}  first error")
    failed = 0
    for module, name in targets(args.only):
        result = run(module, name, args.seconds, args.out.resolve())
        crashes = result["crashes"]
        assert isinstance(crashes, list)
        failed += bool(crashes)
        print(f"{result['target']:32} {result['seconds']:>7} {result['inputs']:>10} "
              f"{len(crashes):>7}  {result['error']}", flush=True)
        for crash in crashes:
            print(f"    saved: {crash}")
    print(f"load {os.getloadavg()[0]:.1f} at the end; {failed} target(s) crashed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
