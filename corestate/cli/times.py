"""Points in time given by the user: ``--at`` (restore), ``--now`` (tiering) and the
``CORESTATE_NOW`` clock that the access log records reads at."""

from __future__ import annotations

import os
import time
from datetime import datetime

from corestate.cli.context import Context
from corestate.errors import PermanentError


def parse_when(text: str) -> int:
    """A point in time as ns since the epoch: ISO 8601 / RFC 3339 (local time when no
    offset is given), or a Unix timestamp."""
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PermanentError(f"--at: cannot read {text!r} as a time "
                             "(use e.g. 2026-11-28T14:05:30 or a Unix timestamp)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return int(when.timestamp() * 1e9)


def access_time(ctx: Context) -> float:
    """Now, in seconds since the epoch, as recorded for pack reads: ``CORESTATE_NOW``
    when set (same forms as ``--at``; a fixed clock for what-if runs and tests), else
    the system clock (with a warning if ``CORESTATE_NOW`` cannot be read)."""
    fixed = os.environ.get("CORESTATE_NOW")
    if fixed:
        try:
            return parse_when(fixed) / 1e9
        except PermanentError as exc:
            ctx.warn(f"CORESTATE_NOW{exc.message.removeprefix('--at')}; recording the "
                     "system time instead")
    return time.time()
