"""Change-rate forecast: beats the naive last value on a seasonal series; cadence."""

from __future__ import annotations

import math
import random

from corestate.models.forecast import ChangeRateForecaster, model_mae, naive_mae


def seasonal(days: int, per_day: int, seed: int = 1) -> list[float]:
    """A working day: two peaks, quiet nights, noise that grows with the rate."""
    rng = random.Random(seed)
    out = []
    for d in range(days):
        for i in range(per_day):
            h = 24 * i / per_day
            lam = 2 + 120 * math.exp(-((h - 11) / 2.5) ** 2) + 90 * math.exp(-((h - 15.5) / 2) ** 2)
            out.append(max(0.0, round(rng.gauss(lam, math.sqrt(lam) * 1.5))))
    return out


def test_forecast_beats_the_naive_baseline_on_a_seasonal_series():
    ys = seasonal(days=14, per_day=48)
    start = 5 * 48
    model, naive = model_mae(ys, start, season=48), naive_mae(ys, start)
    assert model < 0.95 * naive, (model, naive)


def test_forecast_follows_the_daily_shape_a_day_ahead():
    per_day = 48
    f = ChangeRateForecaster(bucket=1800, season=per_day)
    for t, y in enumerate(seasonal(days=10, per_day=per_day)):
        f.observe(t * 1800.0, y)
    ahead = f.forecast(per_day)
    night, noon = ahead[6], ahead[22]  # the series ends at midnight: 03:00 and 11:00 tomorrow
    assert noon > 5 * night and noon > 60


def test_before_warmup_it_is_the_naive_forecast():
    f = ChangeRateForecaster(bucket=60, season=10)
    for minute in range(5):
        f.observe(minute * 60.0, minute * 10)
    assert f.forecast(3) == [30.0, 30.0, 30.0]  # the last finished bucket


def test_proposed_interval_shrinks_with_the_rate_and_is_clamped():
    f = ChangeRateForecaster(bucket=900)
    assert f.propose_interval(rate_per_bucket=0) == 60.0
    busy = f.propose_interval(rate_per_bucket=9000, budget=50)  # 10 changes/s
    assert busy == 5.0
    assert f.propose_interval(rate_per_bucket=10**7) == 0.5
