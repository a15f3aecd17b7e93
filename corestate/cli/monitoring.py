"""The metrics and notification options of commands, and what commands report through them.

- ``--metrics-listen HOST:PORT`` (``CORESTATE_METRICS_LISTEN``): long-running commands
  (``protect``, ``worker``, ``agent``) serve ``/metrics`` there;
- ``--metrics-push URL`` (``CORESTATE_METRICS_PUSH``) and ``--metrics-file PATH``
  (``CORESTATE_METRICS_FILE``): one-shot commands (``backup``, ``check``) push their
  series to a Pushgateway, or write them for node-exporter's textfile collector, when
  they end (:mod:`corestate.telemetry.exporters`); ``backup --metrics-max-age`` says how
  old its last success may get before the CoreStateBackupTooOld alert;
- ``--notify URL`` (``CORESTATE_NOTIFY_URL``): failures and anomaly alerts are POSTed
  there as JSON (:mod:`corestate.telemetry.notify`).

The options store what they were given; a command calls :func:`start` before it opens
the repository (so its backend is metered) and reports through the :class:`Monitor` it
gets back. Without any of the options, :func:`start` loads no OpenTelemetry and every
report is a no-op. The click context closes the monitor at the end of the command:
push, textfile, listener, notifications.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from corestate.errors import CoreStateError
from corestate.telemetry import install, metrics

if TYPE_CHECKING:
    from corestate.agents.protect import ConsistencyPoint
    from corestate.kernel.watch import ChangeBatch
    from corestate.pipeline.backup import BackupSummary
    from corestate.repository.repository import Repository
    from corestate.telemetry.notify import Notifier


_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
_KEY = "corestate.monitoring"
DEFAULT_MAX_AGE = 26 * 3600.0


@dataclass
class Settings:
    listen: str | None = None
    push: str | None = None
    file: str | None = None
    max_age: float = DEFAULT_MAX_AGE
    notify: str | None = None

    @property
    def metrics(self) -> bool:
        return bool(self.listen or self.push or self.file)


def _settings() -> Settings:
    meta = click.get_current_context().meta
    return meta.setdefault(_KEY, Settings())  # type: ignore[no-any-return]


def _store(attr: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(_ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value not in (None, ""):
            setattr(_settings(), attr, value)
    return store


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``26h``, ``7d``.

    >>> parse_duration("26h"), parse_duration("90"), parse_duration("1.5m")
    (93600.0, 90.0, 90.0)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise click.BadParameter(f"{text!r} is not a duration such as 90s, 15m, 26h or 7d")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def _notify_option() -> Callable[[_F], _F]:
    return click.option(
        "--notify", metavar="URL", envvar="CORESTATE_NOTIFY_URL", expose_value=False,
        callback=_store("notify"),
        help="POST failures and anomaly alerts to this webhook as JSON, retrying with "
             "backoff; never the password or credentials (env CORESTATE_NOTIFY_URL).")


def service_options(f: _F) -> _F:
    """``--metrics-listen`` and ``--notify``, for long-running commands."""
    f = _notify_option()(f)
    return click.option(
        "--metrics-listen", metavar="HOST:PORT", envvar="CORESTATE_METRICS_LISTEN",
        expose_value=False, callback=_store("listen"),
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (env "
             "CORESTATE_METRICS_LISTEN; off by default).")(f)


def oneshot_options(max_age: bool = False) -> Callable[[_F], _F]:
    """``--metrics-push``, ``--metrics-file`` (and ``--metrics-max-age``), ``--notify``."""
    def add(f: _F) -> _F:
        f = _notify_option()(f)
        if max_age:
            f = click.option(
                "--metrics-max-age", metavar="DURATION", expose_value=False,
                callback=lambda c, p, v: _store("max_age")(c, p, parse_duration(v) if v else None),
                help="How old the last successful backup of these paths may get before the "
                     "CoreStateBackupTooOld alert fires (exported as "
                     "corestate_backup_max_age_seconds; default 26h: a daily schedule).")(f)
        f = click.option(
            "--metrics-file", metavar="PATH", envvar="CORESTATE_METRICS_FILE",
            expose_value=False, callback=_store("file"),
            help="At the end, write the metrics to PATH for node-exporter's textfile "
                 "collector (env CORESTATE_METRICS_FILE).")(f)
        return click.option(
            "--metrics-push", metavar="URL", envvar="CORESTATE_METRICS_PUSH",
            expose_value=False, callback=_store("push"),
            help="At the end, push the metrics to this Prometheus Pushgateway (env "
                 "CORESTATE_METRICS_PUSH).")(f)
    return add


class Monitor:
    """What a command reports: metrics to the current recorder, events to the webhook."""

    def __init__(self, command: str, settings: Settings, secrets: Sequence[str]) -> None:
        self.command = command
        self.settings = settings
        self.recorder: Any = None
        self.listener: Any = None
        self.notifier: Notifier | None = None
        self.grouping: dict[str, str] = {}
        self.run_labels: dict[str, str] = {}
        self.succeeded = False
        self._closers: list[Callable[[], None]] = []
        if settings.metrics:
            from corestate.telemetry.otel import OtelRecorder

            self.recorder = OtelRecorder(command)
            previous = install(self.recorder)
            self._closers.append(lambda: install(previous))
            if settings.listen:
                from corestate.telemetry.exporters import Listener

                self.listener = Listener(self.recorder, settings.listen)
                self._closers.append(self.listener.close)
        if settings.notify:
            from corestate.telemetry.notify import Notifier

            self.notifier = Notifier(settings.notify, command, secrets)

    def close(self) -> None:
        """Push or write the series, stop the listener, deliver notifications."""
        rec = self.recorder
        if rec is not None and self.settings.push:
            from corestate.telemetry.exporters import push

            try:
                push(rec, self.settings.push, f"corestate_{self.command}", self.grouping)
            except Exception as exc:  # the URL is not shown: it may carry credentials
                click.echo(f"warning: metrics not pushed to the Pushgateway: {exc}", err=True)
        if rec is not None and self.settings.file:
            from corestate.telemetry.exporters import write_textfile

            def carry(labels: dict[str, str], when: float) -> None:
                if not (self.succeeded and labels == self.run_labels):  # else this run's is newer
                    rec.last_success(labels, when)

            try:
                write_textfile(rec, self.settings.file, carry)
            except OSError as exc:
                click.echo(f"warning: metrics not written to {self.settings.file}: "
                           f"{exc.strerror or exc}", err=True)
        if self.notifier is not None:
            self.notifier.close()
        for closer in reversed(self._closers):
            closer()
        if rec is not None:
            rec.shutdown()

    def notify(self, event: str, message: str, **fields: Any) -> None:
        if self.notifier is not None:
            self.notifier.send(event, message, **fields)

    @contextlib.contextmanager
    def failures(self, event: str) -> Iterator[None]:
        """Notify ``event`` when the block raises (then re-raise)."""
        try:
            yield
        except (CoreStateError, OSError) as exc:
            self.notify(event, str(exc), exit_code=getattr(exc, "exit_code", 1))
            raise

    # -- embedded ---------------------------------------------------------------------
    def backup(self, repo: Repository, paths: Sequence[str], host: str,
               run: Callable[[], BackupSummary]) -> BackupSummary:
        """Run a one-shot backup, recording it and notifying a failure or a partial one."""
        from corestate.telemetry.instruments import source_set

        repository = repo.config.id[:8]
        self.grouping = {"repository": repository, "source_set": source_set(paths)}
        self.run_labels = {**self.grouping, "host": host, "command": self.command}
        started = time.monotonic()
        try:
            summary = run()
        except (CoreStateError, OSError) as exc:
            metrics().backup_run(self.command, repository, paths, host,
                                 time.monotonic() - started, None, self.settings.max_age)
            self.notify("backup_failed", str(exc), repository=repository, paths=list(paths))
            raise
        metrics().backup_run(self.command, repository, paths, host, summary.total_duration,
                             summary, self.settings.max_age)
        self.succeeded = True
        if summary.errors:
            self.notify("backup_partial", f"snapshot {summary.snapshot_id[:8]} saved, but "
                        f"{len(summary.errors)} file(s) could not be read",
                        repository=repository, snapshot_id=summary.snapshot_id,
                        errors=[{"path": p, "error": m} for p, m in summary.errors[:100]])
        return summary

    def protect(self, repo: Repository, paths: Sequence[str], host: str,
                interval: Callable[[], float]) -> None:
        metrics().protect_started(repo.config.id[:8], paths, host, interval)

    def protect_point(self, point: ConsistencyPoint) -> None:
        metrics().protect_point(point)

    def protect_batch(self, batch: ChangeBatch) -> None:
        metrics().protect_batch(batch)

    def protect_failed(self, exc: BaseException) -> None:
        metrics().protect_failed(0.0)
        self.notify("snapshot_failed", str(exc))

    def check(self, repo: Repository, read_data: bool, errors: int | None,
              message: str = "") -> None:
        repository = repo.config.id[:8]
        self.grouping = {"repository": repository}
        metrics().check_run(repository, read_data, errors)
        if errors != 0:
            self.notify("check_failed", message or f"check found {errors} errors",
                        repository=repository)

    # -- distributed ----------------------------------------------------------------------
    def worker(self, client: dict[str, str], prefix: str, roles: Sequence[str]) -> None:
        """Series of every role at zero, and the group's consumer lag."""
        if not metrics().enabled:
            return
        from corestate.connectors.kafka_runner import INPUTS
        from corestate.telemetry.lag import LagPoller

        metrics().kafka_roles(prefix, roles, INPUTS)
        topics = sorted({f"{prefix}.{t}" for r in roles for t in INPUTS[r]})
        poller = LagPoller(client, f"{prefix}.worker", topics).start()
        metrics().consumer_lag(poller.read)
        self._closers.append(poller.close)

    def agent_run(self, host: str, incremental: bool, records: int, topic: str,
                  content_bytes: int) -> None:
        metrics().agent_run(host, incremental, records, topic, content_bytes)

    def detecting(self, host: str) -> None:
        metrics().anomaly_started(host)

    def alert(self, line: dict[str, Any], topic: str | None = None) -> None:
        """An anomaly alert was raised (and, in distributed mode, published on ``topic``)."""
        if topic is not None:
            metrics().produced(topic, "agent")
        self.notify("anomaly_alert", f"possible ransomware on {line.get('host')}: "
                    f"{line.get('reason')}", alert=line)


def start(command: str, password_file: str | None = None) -> Monitor:
    """The monitor of the running command, per its options (closed with the command)."""
    ctx = click.get_current_context()
    settings = ctx.meta.get(_KEY) or Settings()
    secrets = []
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as f:
                secrets.append(f.readline().rstrip("\r\n"))
        except OSError:
            pass
    monitor = Monitor(command, settings, secrets)
    ctx.call_on_close(monitor.close)
    return monitor
