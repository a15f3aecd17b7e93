"""Storage-class advice: which packs and snapshots to move to colder storage, and what
that saves a month.

Terms:

- *object*: something stored that can change storage class: a pack file, or a
  snapshot's *exclusive* data (the packs only it references: moving a snapshot moves
  those). It has an id, a size, a creation time and a current class.
- *access*: a read of an object (a restore, a ``check --read-data``, a ``diff``) at a
  time; the caller maps a snapshot restore to the packs it read.
- *storage class*: a price list entry: storage price per GiB-month, retrieval price per
  GiB read, minimum storage duration (early deletion is billed as if kept that long) and
  whether reads are immediate. :data:`EXAMPLE_PRICES` are AWS S3 list prices (us-east-1,
  2024, USD): STANDARD 0.023, STANDARD_IA 0.0125 (+0.01/GiB read, 30 days),
  GLACIER_IR 0.004 (+0.03/GiB read, 90 days), DEEP_ARCHIVE 0.00099 (+0.02/GiB read,
  180 days, restores take hours). Pass your own for other providers.
- *expected reads*: the object's reads per month, from its access history over the
  ``lookback`` window (90 days), as a rate; an object never read has 0.
- *monthly cost* in a class = size x storage price + expected reads x size x retrieval
  price. *Advice* moves an object to the cheapest class it is *eligible* for: old enough
  (age >= the class's minimum duration, so what is young and may still be pruned is
  not locked in), not read within ``recent_days`` (14) for classes with a retrieval
  fee, and only to a non-immediate class (deep archive) if not read for 180 days. The
  *saving* is current monthly cost minus new monthly cost; moves saving less than
  ``min_saving`` are not advised (transition requests cost money too).

>>> day = 86400.0
>>> objs = [StoredObject("cold-pack", "pack", 50 * GiB, created=0.0),
...         StoredObject("hot-pack", "pack", 50 * GiB, created=0.0),
...         StoredObject("new-pack", "pack", 50 * GiB, created=395 * day)]
>>> reads = [Access(t * day, "hot-pack") for t in range(300, 400, 3)]
>>> advice = advise(objs, reads, now=400 * day)
>>> [(a.object_id, a.target) for a in advice]
[('cold-pack', 'DEEP_ARCHIVE')]
>>> round(advice[0].monthly_saving, 2)
1.1
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

GiB = 1024 ** 3
DAY = 86400.0
MONTH = 30 * DAY


@dataclass(frozen=True)
class StorageClass:
    name: str
    storage: float  # USD per GiB-month
    retrieval: float  # USD per GiB read
    min_days: float  # minimum storage duration
    immediate: bool = True  # reads without a restore delay


EXAMPLE_PRICES: tuple[StorageClass, ...] = (
    StorageClass("STANDARD", 0.023, 0.0, 0),
    StorageClass("STANDARD_IA", 0.0125, 0.01, 30),
    StorageClass("GLACIER_IR", 0.004, 0.03, 90),
    StorageClass("DEEP_ARCHIVE", 0.00099, 0.02, 180, immediate=False),
)


@dataclass(frozen=True)
class StoredObject:
    id: str
    kind: str  # "pack" or "snapshot"
    size: int  # bytes
    created: float  # seconds since the epoch
    storage_class: str = "STANDARD"


@dataclass(frozen=True)
class Access:
    time: float
    object_id: str
    kind: str = "read"  # "restore", "read", "check"


@dataclass(frozen=True)
class Advice:
    object_id: str
    kind: str
    size: int
    current: str
    target: str
    reads_per_month: float
    monthly_cost_now: float
    monthly_cost_after: float
    reason: str

    @property
    def monthly_saving(self) -> float:
        return self.monthly_cost_now - self.monthly_cost_after


def monthly_cost(cls: StorageClass, size: int, reads_per_month: float) -> float:
    gib = size / GiB
    return gib * cls.storage + reads_per_month * gib * cls.retrieval


def advise(objects: Iterable[StoredObject], accesses: Iterable[Access], now: float,
           prices: tuple[StorageClass, ...] = EXAMPLE_PRICES, lookback_days: float = 90.0,
           recent_days: float = 14.0, min_saving: float = 0.01) -> list[Advice]:
    """Advice for every object worth moving, largest saving first (see module doc)."""
    by_name = {c.name: c for c in prices}
    reads: dict[str, list[float]] = defaultdict(list)
    for a in accesses:
        reads[a.object_id].append(a.time)
    out = []
    for obj in objects:
        current = by_name.get(obj.storage_class)
        if current is None:
            continue
        age_days = max(0.0, now - obj.created) / DAY
        times = [t for t in reads.get(obj.id, []) if t <= now]
        window_days = min(lookback_days, max(age_days, 1.0))
        recent = [t for t in times if now - t <= window_days * DAY]
        rate = len(recent) / (window_days / 30.0)
        idle_days = (now - max(times)) / DAY if times else age_days
        cost_now = monthly_cost(current, obj.size, rate)
        best, best_cost, why = current, cost_now, ""
        for cls in prices:
            if cls.name == current.name or age_days < cls.min_days:
                continue
            if cls.retrieval > 0 and idle_days < recent_days:
                continue
            if not cls.immediate and idle_days < 180:
                continue
            cost = monthly_cost(cls, obj.size, rate)
            if cost < best_cost:
                best, best_cost = cls, cost
                why = (f"{age_days:.0f} days old, {'never read' if not times else f'last read {idle_days:.0f} days ago'}, "
                       f"{rate:.2f} reads/month")
        if best is not current and cost_now - best_cost >= min_saving:
            out.append(Advice(obj.id, obj.kind, obj.size, current.name, best.name, rate,
                              cost_now, best_cost, why))
    out.sort(key=lambda a: (-a.monthly_saving, a.object_id))
    return out


def total_saving(advice: Iterable[Advice]) -> float:
    """Estimated saving per month if all ``advice`` is followed (USD)."""
    return sum(a.monthly_saving for a in advice)
