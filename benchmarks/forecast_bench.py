"""Change-rate forecast vs the naive last-value forecast, by MAE, on simulated activity.

Simulated activity (seeded): changed paths per 15-minute bucket for 28 days on four
host profiles, Poisson-like noise around a daily shape:

- ``office``: morning and afternoon peaks on weekdays, little at weekends;
- ``developer``: long afternoon and evening sessions with bursts (builds, checkouts);
- ``server``: a low steady rate plus a nightly batch job at 02:00;
- ``shift``: two shifts (06-14, 14-22) every day, no weekends.

Each model forecasts every bucket before learning it (prequential), from day 8 on (the
first week is warm-up for every model). Models: :class:`ChangeRateForecaster`
(SNARIMAX on log1p counts, the choice), the same SNARIMAX on raw counts, Holt-Winters (additive, daily season) and the naive last value;
horizons 1 bucket (15 min) and 4 buckets (1 h).

Run: ``python benchmarks/forecast_bench.py [--out benchmarks/RESULTS.md]``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from river import time_series  # noqa: E402

from corestate.models.forecast import ChangeRateForecaster, make_model  # noqa: E402

PER_DAY = 96
DAYS = 28
WARMUP_DAYS = 7


def _bump(h: float, centre: float, width: float) -> float:
    return math.exp(-((h - centre) / width) ** 2)


PROFILES: dict[str, Callable[[int, float, random.Random], float]] = {
    "office": lambda d, h, r: 2 + (0.15 if d % 7 >= 5 else 1.0)
    * (150 * _bump(h, 10.5, 1.8) + 110 * _bump(h, 15, 2.0)),
    "developer": lambda d, h, r: 3 + (0.4 if d % 7 >= 5 else 1.0)
    * (80 * _bump(h, 15, 3) + 60 * _bump(h, 21, 2)) + (400 if r.random() < 0.03 else 0),
    "server": lambda d, h, r: 20 + 900 * _bump(h, 2.25, 0.35),
    "shift": lambda d, h, r: 5 + (90 if 6 <= h < 14 else 140 if 14 <= h < 22 else 0),
}


def series(profile: str, seed: int) -> list[float]:
    rng = random.Random(seed)
    shape = PROFILES[profile]
    out = []
    for d in range(DAYS):
        for i in range(PER_DAY):
            lam = shape(d, 24 * i / PER_DAY, rng)
            out.append(max(0.0, round(rng.gauss(lam, math.sqrt(lam) * 1.5))))
    return out


def evaluate(ys: list[float], make: Callable[[], object] | None, horizon: int) -> float:
    """MAE of ``horizon``-step-ahead forecasts from day WARMUP_DAYS on; None = naive."""
    start = WARMUP_DAYS * PER_DAY
    model = make() if make is not None else None
    errors = []
    for i, y in enumerate(ys):
        target = i + horizon - 1
        if i >= start and target < len(ys):
            if model is None:
                f = ys[i - 1]
            elif isinstance(model, ChangeRateForecaster):
                f = model.forecast(horizon)[-1]
            else:
                f = max(0.0, model.forecast(horizon)[-1])  # type: ignore[attr-defined]
            errors.append(abs(f - ys[target]))
        if isinstance(model, ChangeRateForecaster):
            model.learn(y)
        elif model is not None:
            model.learn_one(y)  # type: ignore[attr-defined]
    return sum(errors) / len(errors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="append the report section to this file")
    args = ap.parse_args(argv)
    models: dict[str, Callable[[], object] | None] = {
        "SNARIMAX (ChangeRateForecaster)": lambda: ChangeRateForecaster(bucket=900, season=PER_DAY),
        "same SNARIMAX on raw counts": lambda: make_model(PER_DAY),
        "Holt-Winters additive, daily season": lambda: time_series.HoltWinters(
            alpha=0.3, beta=0.01, gamma=0.4, seasonality=PER_DAY),
        "naive last value": None,
    }
    lines = [
        f"## Change-rate forecast — {datetime.now().isoformat(timespec='seconds')}",
        "",
        f"- Command: `python benchmarks/forecast_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- Simulated activity: changed paths per 15-min bucket, {DAYS} days, 4 host profiles "
        "(see the script's docstring), seeded; prequential one-step and four-step (1 h) "
        f"forecasts scored from day {WARMUP_DAYS + 1} on. MAE in changed paths per bucket; "
        "lower is better; the ratio is to the naive forecast.",
        "",
        "| host profile | model | MAE 15 min ahead | ratio | MAE 1 h ahead | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for seed, profile in enumerate(PROFILES, start=1):
        ys = series(profile, seed)
        naive = {h: evaluate(ys, None, h) for h in (1, 4)}
        for name, make in models.items():
            m = {h: evaluate(ys, make, h) for h in (1, 4)}
            cells = [f"{m[h]:.1f} | {m[h] / naive[h]:.2f}" if m[h] < 100 * naive[h]
                     else "diverged (SGD) | —" for h in (1, 4)]
            lines.append(f"| {profile} | {name} | {cells[0]} | {cells[1]} |")
    lines.append("")
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
