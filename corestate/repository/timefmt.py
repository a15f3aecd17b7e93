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
>>> parse_time('1969-12-31T23:59:59.5Z'), parse_time('2000-02-29T00:00:00-05:30')
(-500000000, 951802200000000000)
>>> parse_time(format_time(1_234_567_890_000_000_001)) == 1_234_567_890_000_000_001
True
>>> parse_time('2023-11-14T23:13:20.123456789+01:00'), parse_time('2023-11-14T22:13:20+00:00')
(1700000000123456789, 1700000000000000000)
>>> parse_time('2023-11-14T22:13:20.1Z'), parse_time('2023-11-14t22:13:20Z')
(1700000000100000000, 1700000000000000000)
"""

from __future__ import annotations

import re
import time
from functools import lru_cache

_NS = 1_000_000_000
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|z|[+-]\d\d:\d\d)$")


def now_ns() -> int:
    return time.time_ns()


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def format_time(ns: int, utc: bool = False) -> str:
    """RFC 3339 with 9 fractional digits, in local time (or UTC)."""
    sec, frac = divmod(ns, _NS)
    head, suffix = _second(sec, utc)
    return f"{head}.{frac:09d}{suffix}"


@lru_cache(maxsize=16384)
def _second(sec: int, utc: bool) -> tuple[str, str]:
    """``YYYY-MM-DDTHH:MM:SS`` and the zone suffix of one second (a tree's times
    cluster in few seconds, so this is cached)."""
    if utc:
        tm = time.gmtime(sec)
        suffix = "Z"
    else:
        tm = time.localtime(sec)
        mins = tm.tm_gmtoff // 60
        sign = "+" if mins >= 0 else "-"
        suffix = "Z" if mins == 0 else f"{sign}{abs(mins) // 60:02d}:{abs(mins) % 60:02d}"
    return (f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T{tm.tm_hour:02d}:"
            f"{tm.tm_min:02d}:{tm.tm_sec:02d}", suffix)


@lru_cache(maxsize=65536)
def _second_of(head: str, zone: str) -> int | None:
    """Nanoseconds of ``YYYY-MM-DDTHH:MM:SS`` in ``zone`` (``Z`` or ``+hh:mm``), or None."""
    try:
        return parse_time(f"{head}{zone}")
    except ValueError:
        return None


@lru_cache(maxsize=8192)
def _date_seconds(date: str) -> int:
    """Seconds from the epoch to midnight UTC of a ``YYYY-MM-DD`` date (few distinct
    dates occur in one tree, so this is cached)."""
    return _days_from_civil(int(date[0:4]), int(date[5:7]), int(date[8:10])) * 86400


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch from an RFC 3339 timestamp (any fraction length).

    >>> parse_time("2026-12-07T03:34:53.760157909Z"), parse_time("1970-01-01T01:00:00+01:00")
    (1796614493760157909, 0)
    """
    # Fastest: what we write (nine digits), its second and zone cached (few per tree).
    if len(text) in (30, 35) and text[19] == "." and text[29] in "Z+-":
        base = _second_of(text[:19], text[29:])
        if base is not None and text[20:29].isdigit():
            return base + int(text[20:29])
    # Fast path for the shapes restic and we write: fixed positions, no regex.
    if len(text) >= 20 and text[10] == "T" and text[4] == "-" and text[13] == ":":
        try:
            secs = (_date_seconds(text[:10]) + int(text[11:13]) * 3600
                    + int(text[14:16]) * 60 + int(text[17:19]))
            rest = text[19:]
            frac = 0
            if rest[0] == ".":
                end = len(rest) if rest[-1] != "Z" and len(rest) < 7 else (
                    len(rest) - 1 if rest[-1] == "Z" else len(rest) - 6)
                digits = rest[1:end]
                frac = int(digits[:9].ljust(9, "0"))
                rest = rest[end:]
            if rest == "Z":
                return secs * _NS + frac
            if len(rest) == 6 and rest[3] == ":" and rest[0] in "+-":
                off = int(rest[1:3]) * 3600 + int(rest[4:6]) * 60
                return (secs - off if rest[0] == "+" else secs + off) * _NS + frac
        except (ValueError, IndexError):
            pass
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    y, mo, d, h, mi, s, fraction, tz = m.groups()
    secs = (_days_from_civil(int(y), int(mo), int(d)) * 86400
            + int(h) * 3600 + int(mi) * 60 + int(s))
    if tz not in ("Z", "z"):
        offset = int(tz[1:3]) * 3600 + int(tz[4:6]) * 60
        secs -= offset if tz[0] == "+" else -offset
    return secs * _NS + (int(fraction[:9].ljust(9, "0")) if fraction else 0)
