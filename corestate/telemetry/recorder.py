"""The recorder: what instrumented code calls, and the process's current one.

Terms:

- the *recorder* is the one object code calls to record a measurement
  (``metrics().backend_op(...)``). Its methods take plain values and the summaries the
  code already produces (a backup summary, a watcher batch, a stage's emits), so a call
  site is one line;
- the *current* recorder is :class:`Recorder` itself, which does nothing, until a
  command that was given a metrics option installs an OpenTelemetry one
  (:class:`corestate.telemetry.otel.OtelRecorder`, through :func:`install`). Code that
  records therefore never imports OpenTelemetry, and a command without metrics options
  never loads it.

Methods return quickly and never raise: a measurement that cannot be taken is dropped,
never a reason for a backup to fail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corestate.agents.protect import ConsistencyPoint
    from corestate.kernel.watch import ChangeBatch
    from corestate.pipeline.backup import BackupSummary


class Recorder:
    """Records nothing; the base of every recorder and the default one."""

    enabled = False

    # -- embedded backups and protect ---------------------------------------------------
    def backup_run(self, command: str, repository: str, paths: Sequence[str], host: str,
                   seconds: float, summary: BackupSummary | None,
                   max_age: float | None = None) -> None:
        """A backup ended: with its ``summary``, or failed (``summary`` None)."""

    def protect_started(self, repository: str, paths: Sequence[str], host: str,
                        interval: Callable[[], float]) -> None:
        """``corestate protect`` began; ``interval`` tells its current cadence."""

    def protect_batch(self, batch: ChangeBatch) -> None:
        """The watcher reported a batch of changes."""

    def protect_point(self, point: ConsistencyPoint) -> None:
        """A snapshot of the protect loop was committed (after :meth:`backup_run`)."""

    def protect_failed(self, seconds: float) -> None:
        """A snapshot of the protect loop failed after ``seconds`` (it is retried)."""

    def backend_op(self, backend: str, operation: str, seconds: float, ok: bool,
                   read: int = 0, written: int = 0) -> None:
        """One storage backend operation."""

    # -- distributed mode ----------------------------------------------------------------
    def stage_record(self, role: str, topic: str, decoded: Any, emits: Sequence[Any],
                     seconds: float) -> None:
        """A worker role handled one record of ``topic`` (``decoded`` None: it did not
        decode) and produced ``emits``."""

    def kafka_roles(self, prefix: str, roles: Sequence[str],
                    inputs: dict[str, tuple[str, ...]]) -> None:
        """A worker runs ``roles`` reading ``inputs`` (topic suffixes) under ``prefix``."""

    def produced(self, topic: str, role: str, records: int = 1) -> None:
        """``records`` were produced on ``topic`` (agents; workers count in stage_record)."""

    def agent_run(self, host: str, incremental: bool, records: int, topic: str,
                  content_bytes: int) -> None:
        """An agent published a run of ``records`` records to ``topic``."""

    def consumer_lag(self, read: Callable[[], dict[tuple[str, str, int], int]]) -> None:
        """Report ``read()`` (``(group, topic, partition) -> lag``) at every collection."""

    # -- anomaly detection, check, notifications -------------------------------------------
    def anomaly_started(self, host: str) -> None:
        """Anomaly detection began for ``host``."""

    def anomaly_score(self, host: str, score: float) -> None:
        """A window of changes was scored."""

    def anomaly_alert(self, host: str, score: float, threshold: float, files: int) -> None:
        """An alert was raised after ``files`` files were touched in its window."""

    def check_run(self, repository: str, read_data: bool, errors: int | None) -> None:
        """``corestate check`` ended with ``errors`` errors (None: it could not finish)."""

    def notify_delivery(self, delivered: bool) -> None:
        """A webhook notification was delivered, or failed after every retry."""


_current: Recorder = Recorder()


def metrics() -> Recorder:
    """The current recorder (does nothing unless a command turned metrics on)."""
    return _current


def install(recorder: Recorder) -> Recorder:
    """Make ``recorder`` the current one; returns the one it replaces."""
    global _current
    previous, _current = _current, recorder
    return previous
