"""A per-host change-rate forecast, and the capture cadence it proposes.

Terms:

- *bucket*: a fixed stretch of time (``bucket`` seconds, 15 min by default); the *change
  rate* of a bucket is the number of changed paths the watcher reported in it.
- *season*: the buckets in a day (96 for 15 min buckets). Work follows the clock, so
  the model looks one day back as well as at the last buckets.
- *model*: ``river.time_series.SNARIMAX`` with ``p=1`` (the last bucket) and ``sp=3``
  (the same bucket one, two and three days ago), plus ``sq=2`` seasonal error terms; a
  standardised linear
  regression learned online by SGD, on ``log1p`` of the rate (bursts of activity then
  pull the forecast far less: MAE rewards the typical value, not the mean). Chosen
  against the same model on raw counts, Holt-Winters and the naive last-value forecast
  by MAE on simulated activity (``benchmarks/forecast_bench.py``, results in
  ``benchmarks/RESULTS.md``). Until the model has seen ``warmup`` buckets it forecasts
  the last value (the naive baseline).
- *proposed interval*: the snapshot cadence that keeps the forecast number of changed
  paths per snapshot near ``budget``: ``budget / forecast_rate`` seconds, clamped to
  ``[min_interval, max_interval]``. Busy hours get frequent small snapshots (short
  recovery point, small batches), quiet hours few.

>>> f = ChangeRateForecaster(bucket=60, season=10, warmup=20)
>>> for minute in range(300):  # 10-minute cycle: busy for 3 minutes, then quiet
...     f.observe(minute * 60.0, 100 if minute % 10 < 3 else 2)
>>> [round(v) for v in f.forecast(6)]  # minute 299 still open: quiet, then 3 busy ones
[2, 97, 103, 104, 2, 2]
>>> f.propose_interval(rate_per_bucket=600, budget=50) < f.propose_interval(rate_per_bucket=5, budget=50)
True
"""

from __future__ import annotations

import math
from typing import Any

from river import compose, linear_model, optim, preprocessing, time_series


def make_model(season: int) -> Any:
    """The forecaster: SNARIMAX(p=1, d=0, q=0)(sp=3, sd=0, sq=2, m=season)."""
    regressor = compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LinearRegression(optimizer=optim.SGD(0.01), intercept_lr=0.1))
    return time_series.SNARIMAX(p=1, d=0, q=0, m=season, sp=3, sd=0, sq=2, regressor=regressor)


class ChangeRateForecaster:
    """Counts changes per bucket, learns each finished bucket, forecasts the next ones."""

    def __init__(self, bucket: float = 900.0, season: int = 96, warmup: int | None = None) -> None:
        self.bucket = bucket
        self.season = season
        self.warmup = season + 2 if warmup is None else warmup
        self.model = make_model(season)
        self.history: list[float] = []  # finished buckets, capped at two seasons
        self._bucket_start: float | None = None
        self._count = 0.0
        self.learned = 0

    def observe(self, t: float, changes: float) -> None:
        """Add ``changes`` changed paths seen at time ``t`` (seconds)."""
        if self._bucket_start is None:
            self._bucket_start = t - t % self.bucket
        while t >= self._bucket_start + self.bucket:
            self._finish()
        self._count += changes

    def _finish(self) -> None:
        assert self._bucket_start is not None
        self.learn(self._count)
        self._count = 0.0
        self._bucket_start += self.bucket

    def learn(self, rate: float) -> None:
        """Learn one finished bucket's change rate (for callers that bucket themselves)."""
        self.model.learn_one(math.log1p(max(0.0, rate)))
        self.history.append(rate)
        del self.history[:-2 * self.season]
        self.learned += 1

    def forecast(self, horizon: int = 1) -> list[float]:
        """Changes expected in each of the next ``horizon`` buckets (never negative)."""
        if self.learned < self.warmup:
            last = self.history[-1] if self.history else 0.0
            return [last] * horizon
        return [max(0.0, math.expm1(min(50.0, float(y)))) for y in self.model.forecast(horizon)]

    def propose_interval(self, rate_per_bucket: float | None = None, budget: float = 50.0,
                         min_interval: float = 0.5, max_interval: float = 60.0) -> float:
        """Seconds between snapshots so that one carries about ``budget`` changed paths,
        given ``rate_per_bucket`` (default: the next bucket's forecast)."""
        rate = self.forecast(1)[0] if rate_per_bucket is None else rate_per_bucket
        per_second = rate / self.bucket
        if per_second <= 0:
            return max_interval
        return min(max_interval, max(min_interval, budget / per_second))


def naive_mae(series: list[float], start: int) -> float:
    """MAE of the last-value forecast over ``series[start:]``."""
    errors = [abs(series[i - 1] - series[i]) for i in range(max(1, start), len(series))]
    return sum(errors) / len(errors) if errors else math.nan


def model_mae(series: list[float], start: int, season: int) -> float:
    """MAE of :class:`ChangeRateForecaster`'s one-step forecasts over ``series[start:]``,
    learning the series as it goes (prequential)."""
    f = ChangeRateForecaster(bucket=1.0, season=season)
    errors = []
    for i, y in enumerate(series):
        if i >= start:
            errors.append(abs(f.forecast(1)[0] - y))
        f.learn(y)
    return sum(errors) / len(errors) if errors else math.nan
