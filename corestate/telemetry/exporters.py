"""Where a recorder's series go: a ``/metrics`` listener, a Pushgateway, a textfile.

Terms:

- the *listener* (``--metrics-listen HOST:PORT``) serves the Prometheus text format on
  ``http://HOST:PORT/metrics`` for Prometheus to scrape; long-running commands use it;
- a *push* (``--metrics-push URL``) sends the series of a one-shot command to a
  Prometheus Pushgateway when it ends, under job ``corestate_<command>`` and a grouping
  key of ``instance`` (this host) plus the command's own key (repository, source set),
  with POST: series of the same name are replaced, others kept. So a failed backup,
  which has no last-success time, leaves the last one pushed in place;
- a *textfile* (``--metrics-file PATH``) is the same series written atomically for
  node-exporter's textfile collector (``--collector.textfile.directory``); a failed
  backup carries the last-success line of the file it replaces over.

Failing to export is a warning, never a failed backup.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from corestate.errors import PermanentError
from corestate.telemetry import instruments as ins
from corestate.telemetry.otel import OtelRecorder


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``, or ``:PORT`` for 127.0.0.1) as (host, port).

    >>> parse_listen("127.0.0.1:9464"), parse_listen(":0"), parse_listen("[::1]:80")
    (('127.0.0.1', 9464), ('127.0.0.1', 0), ('::1', 80))
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise PermanentError(f"--metrics-listen takes HOST:PORT, not {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class Listener:
    """The ``/metrics`` endpoint of a recorder, served by a daemon thread."""

    def __init__(self, recorder: OtelRecorder, address: str) -> None:
        from prometheus_client import ProcessCollector, start_http_server

        host, port = parse_listen(address)
        ProcessCollector(registry=recorder.registry)
        try:
            self.server, self.thread = start_http_server(port, addr=host, registry=recorder.registry)
        except OSError as exc:
            raise PermanentError(f"cannot listen for metrics on {address}: "
                                 f"{exc.strerror or exc}") from None
        self.host, self.port = host, self.server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def push(recorder: OtelRecorder, url: str, job: str, grouping: Mapping[str, str],
         timeout: float = 10.0) -> None:
    """Push the recorder's series to the Pushgateway at ``url`` (POST: see the docstring)."""
    from prometheus_client import pushadd_to_gateway

    key = {"instance": socket.gethostname(), **grouping}
    pushadd_to_gateway(url, job=job, registry=recorder.registry, grouping_key=key, timeout=timeout)


_LAST_SUCCESS = re.compile(
    r"^" + ins.prometheus_name(ins.BACKUP_LAST_SUCCESS) + r"\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def last_successes(path: str) -> list[tuple[dict[str, str], float]]:
    """The last-success samples of an earlier textfile (none if there is no file)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        m = _LAST_SUCCESS.match(line)
        if m:
            try:
                out.append((dict(_LABEL.findall(m["labels"])), float(m["value"])))
            except ValueError:
                continue
    return out


def write_textfile(recorder: OtelRecorder, path: str,
                   carry: Callable[[dict[str, str], float], Any] | None = None) -> None:
    """Write the series to ``path`` atomically (a temporary file in its directory, then
    renamed); ``carry(labels, when)`` is first given each last-success sample of the
    file being replaced, so the recorder can keep those it did not record itself."""
    from prometheus_client import generate_latest

    if carry is not None:
        for labels, when in last_successes(path):
            carry(labels, when)
    text = generate_latest(recorder.registry)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".corestate-metrics-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
