"""Webhook notifications (``--notify URL``): failures and anomaly alerts, for operators
without Prometheus.

Terms:

- a *notification* is one JSON object POSTed to the URL (``Content-Type:
  application/json``), with at least ``event`` (``backup_failed``, ``backup_partial``,
  ``snapshot_failed``, ``worker_failed``, ``agent_failed``, ``check_failed``,
  ``anomaly_alert``), ``time`` (RFC 3339 UTC), ``host``, ``command`` and ``message``;
  an alert adds its fields (id, score, reason, paths, clean snapshot);
- *delivered*: the server answered 2xx. A connection error, a timeout, 429 or 5xx is
  retried after a backoff that doubles from ``backoff`` seconds (1, 2, 4, ...) for at
  most ``attempts`` attempts; any other answer is final (a 4xx will not change);
- *secrets* never leave the process: before sending, every string in the body has the
  repository password, the values of ``CORESTATE_*`` variables whose names say PASSWORD,
  SECRET, TOKEN or KEY, and the user-info of any URL (``scheme://user:pass@``) replaced by
  ``***``; the webhook URL itself is shown in messages without its path and query
  (tokens often live there).

Sending happens on a background thread so a slow webhook never holds up a snapshot;
:meth:`Notifier.close` waits (bounded) for what is queued.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from corestate.errors import PermanentError
from corestate.telemetry.recorder import metrics

log = logging.getLogger("corestate.telemetry.notify")

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s]+@")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)


def environment_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """Values of ``CORESTATE_*`` variables whose names say they are secret."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items()
            if k.startswith("CORESTATE_") and _SECRET_NAME.search(k) and len(v) >= 3]


def redact(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (JSON-like) with secrets and URL user-info replaced by ``***``.

    >>> redact({"m": "s3://ak:sk@host/b failed: hunter2", "n": [1, "hunter2"]}, ["hunter2"])
    {'m': 's3://***@host/b failed: ***', 'n': [1, '***']}
    """
    ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
    if isinstance(value, str):
        for s in ordered:
            value = value.replace(s, "***")
        return _USERINFO.sub(r"\g<scheme>***@", value)
    if isinstance(value, dict):
        return {k: redact(v, ordered) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, ordered) for v in value]
    return value


def shown_url(url: str) -> str:
    """The webhook URL fit for a log line: scheme, host and port only.

    >>> shown_url("https://user:pw@hooks.example/services/T0/B0/XYZ?token=1")
    'https://hooks.example/…'
    """
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/…"


class Notifier:
    """Posts notifications to one webhook URL (see the module docstring)."""

    def __init__(self, url: str, command: str, secrets: Iterable[str] = (),
                 attempts: int = 5, backoff: float = 1.0, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError(f"--notify takes an http:// or https:// URL, not {shown_url(url)!r}")
        self.url = url
        self.command = command
        self.secrets = [*secrets, *environment_secrets()]
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.timeout = timeout
        self._sleep = sleep
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()
        self.delivered = 0
        self.failed = 0

    def send(self, event: str, message: str, **fields: Any) -> None:
        """Queue one notification (returns at once)."""
        body = {"event": event,
                "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                "host": socket.gethostname(), "command": self.command, "message": message,
                **fields}
        self._queue.put(redact(body, self.secrets))

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds), then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("notifications to %s still pending after %.0fs; giving up",
                        shown_url(self.url), timeout)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            ok = self._deliver(json.dumps(body, default=str).encode())
            if ok:
                self.delivered += 1
            else:
                self.failed += 1
            metrics().notify_delivery(ok)

    def _deliver(self, data: bytes) -> bool:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.url, data=data, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": "corestate"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    reply.read()
                return True
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
                if exc.code != 429 and exc.code < 500:
                    log.warning("notification to %s refused (%s); not retried",
                                shown_url(self.url), problem)
                    return False
            except (urllib.error.URLError, OSError) as exc:
                problem = str(getattr(exc, "reason", exc))
            if attempt < self.attempts:
                log.warning("notification to %s failed (%s); attempt %d of %d, retrying in %gs",
                            shown_url(self.url), problem, attempt, self.attempts, delay)
                self._sleep(delay)
                delay *= 2
        log.error("notification to %s not delivered after %d attempts", shown_url(self.url),
                  self.attempts)
        return False
