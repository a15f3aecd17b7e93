"""Repository locks, compatible with restic's.

A *lock* is an encrypted JSON file in ``locks/``: ``time``, ``exclusive``, ``hostname``,
``username``, ``pid``, ``uid``, ``gid``. Backups take a non-exclusive lock; prune and
forget take an exclusive one, which conflicts with every other lock. A lock is *stale*
when it is older than 30 minutes without refresh, or when it was made on this host by a
process that no longer exists. Long operations refresh their lock every 5 minutes.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
from dataclasses import dataclass

import orjson

from corestate.errors import CoreStateError, IntegrityError, NotFoundError, RepositoryLockedError
from corestate.repository.timefmt import format_time, now_ns, parse_time

STALE_AFTER_NS = 30 * 60 * 10**9
REFRESH_EVERY_S = 5 * 60


@dataclass(frozen=True)
class LockInfo:
    id: str
    time: int
    exclusive: bool
    hostname: str
    username: str
    pid: int

    def is_stale(self) -> bool:
        return now_ns() - self.time > STALE_AFTER_NS or self.held_by_dead_local_process()

    def held_by_dead_local_process(self) -> bool:
        if self.hostname != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return (f"{kind} lock {self.id[:8]} held by PID {self.pid} on {self.hostname} "
                f"({self.username}) since {format_time(self.time)}")


def lock_document(exclusive: bool) -> bytes:
    return orjson.dumps({
        "time": format_time(now_ns()), "exclusive": exclusive,
        "hostname": socket.gethostname(), "username": getpass.getuser(),
        "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(),
    })


def parse_lock(lock_id: str, raw: bytes) -> LockInfo:
    """A lock from its JSON; IntegrityError if it is not a lock."""
    try:
        d = orjson.loads(raw)
        pid = d.get("pid", 0)
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise TypeError("pid is not an integer")
        return LockInfo(lock_id, parse_time(d["time"]), bool(d.get("exclusive")),
                        str(d.get("hostname", "")), str(d.get("username", "")), pid)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"lock {lock_id[:8]} is not a lock ({exc!r:.100})") from None


def check_conflicts(existing: list[LockInfo], exclusive: bool, own_id: str) -> None:
    """Raise RepositoryLockedError if a live lock conflicts with ours."""
    for lock in existing:
        if lock.id == own_id or lock.is_stale():
            continue
        if exclusive or lock.exclusive:
            raise RepositoryLockedError(
                f"repository is already locked: {lock.describe()}; "
                "if that process is gone, run `corestate unlock`")


class Refresher:
    """Calls ``refresh`` every few minutes in a daemon thread until stopped."""

    def __init__(self, refresh: "RefreshFn", every_s: float = REFRESH_EVERY_S) -> None:
        self._refresh = refresh
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._refresh()
            except (CoreStateError, NotFoundError):
                pass  # the next refresh tries again; the lock only goes stale after 30 min

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


from collections.abc import Callable  # noqa: E402

RefreshFn = Callable[[], None]
