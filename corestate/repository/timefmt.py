"""Timestamps as restic writes them: RFC 3339 with nanoseconds and the local offset.

Times are carried as integer nanoseconds since the epoch (``st_mtime_ns``), because
Python's ``datetime`` has only microseconds.

>>> s = format_time(1_700_000_000_123_456_789, utc=True)
>>> s
'2023-11-14T22:13:20.123456789Z'
>>> parse_time(s)
1700000000123456789
>>> parse_time('2023-11-14T23:13:20.5+01:00')
1700000000500000000
>>> parse_time('2023-11-14T22:13:20Z')
1700000000000000000
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

_NS = 1_000_000_000
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:\d\d)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def now_ns() -> int:
    return time.time_ns()


def format_time(ns: int, utc: bool = False) -> str:
    """RFC 3339 with 9 fractional digits, in local time (or UTC)."""
    sec, frac = divmod(ns, _NS)
    if utc:
        dt = datetime.fromtimestamp(sec, timezone.utc)
        suffix = "Z"
    else:
        dt = datetime.fromtimestamp(sec).astimezone()
        off = dt.utcoffset() or timedelta(0)
        mins = int(off.total_seconds()) // 60
        sign = "+" if mins >= 0 else "-"
        suffix = "Z" if mins == 0 else f"{sign}{abs(mins) // 60:02d}:{abs(mins) % 60:02d}"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}" + suffix


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from an RFC 3339 timestamp (any fraction length)."""
    m = _RFC3339.match(text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    if tz in ("Z", "z"):
        tzinfo = timezone.utc
    else:
        sign = 1 if tz[0] == "+" else -1
        tzinfo = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=tzinfo)
    delta = dt - _EPOCH
    whole = (delta.days * 86400 + delta.seconds) * _NS
    return whole + (int((frac or "0").ljust(9, "0")[:9]))
