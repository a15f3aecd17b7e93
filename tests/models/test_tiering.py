"""Tiering advice from a synthetic access log."""

from __future__ import annotations

import pytest

from corestate.models.tiering import (DAY, EXAMPLE_PRICES, GiB, Access, StoredObject, advise,
                                      monthly_cost, total_saving)

NOW = 1000 * DAY


def test_advice_follows_age_and_access_pattern():
    objs = [
        StoredObject("archive", "pack", 100 * GiB, created=NOW - 400 * DAY),  # never read
        StoredObject("quarterly", "pack", 100 * GiB, created=NOW - 400 * DAY),  # read 3 months ago
        StoredObject("monthly", "snapshot", 100 * GiB, created=NOW - 200 * DAY),  # read monthly
        StoredObject("daily", "pack", 100 * GiB, created=NOW - 400 * DAY),  # read every day
        StoredObject("young", "pack", 100 * GiB, created=NOW - 10 * DAY),  # too young to move
        StoredObject("moved", "pack", 100 * GiB, created=NOW - 400 * DAY, storage_class="DEEP_ARCHIVE"),
    ]
    log = [Access(NOW - 100 * DAY, "quarterly", "restore")]
    log += [Access(NOW - d * DAY, "monthly") for d in range(20, 200, 30)]
    log += [Access(NOW - d * DAY, "daily") for d in range(0, 90)]
    advice = {a.object_id: a for a in advise(objs, log, NOW)}
    assert set(advice) == {"archive", "quarterly", "monthly"}
    assert advice["archive"].target == "DEEP_ARCHIVE"
    # read within 180 days: no deep archive; rarely read: glacier instant retrieval pays
    assert advice["quarterly"].target == "GLACIER_IR"
    assert advice["monthly"].target in ("STANDARD_IA", "GLACIER_IR")
    assert advice["monthly"].reads_per_month == pytest.approx(3 / 3.0)
    # largest saving first, and the total is the sum of per-object savings
    ordered = advise(objs, log, NOW)
    assert ordered[0].object_id == "archive"
    expected = 100 * (0.023 - 0.00099)
    assert advice["archive"].monthly_saving == pytest.approx(expected)
    assert total_saving(ordered) == pytest.approx(sum(a.monthly_saving for a in ordered))


def test_retrieval_costs_can_make_cold_storage_a_loss():
    # read twice a month in full: IA storage saving is eaten by retrieval fees
    obj = StoredObject("busy", "pack", 10 * GiB, created=NOW - 400 * DAY)
    log = [Access(NOW - d * DAY, "busy") for d in range(15, 90, 15)]
    ia = next(c for c in EXAMPLE_PRICES if c.name == "STANDARD_IA")
    std = EXAMPLE_PRICES[0]
    rate = len(log) / 3.0
    assert monthly_cost(ia, obj.size, rate) > monthly_cost(std, obj.size, rate)
    assert advise([obj], log, NOW) == []
