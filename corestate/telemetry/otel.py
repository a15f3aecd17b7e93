"""The OpenTelemetry recorder: the instruments of :mod:`corestate.telemetry.instruments`
on an OpenTelemetry SDK meter, read by a Prometheus reader.

Terms:

- the *meter provider* owns the instruments; one *view* per histogram sets its bucket
  boundaries from the catalogue;
- the *registry* is the ``prometheus_client`` collector registry the reader registers
  with: a fresh one per recorder (not the global one), so a push or a textfile carries
  CoreState's series only; a ``/metrics`` listener adds the process collector
  (``process_cpu_seconds_total``, ``process_resident_memory_bytes``);
- *observers* are functions read at each collection (scrape, push, file write): the
  oldest pending change, the consumer lag, the capture cadence.

Importing this module imports the OpenTelemetry SDK (about half a second): only
:mod:`corestate.cli.monitoring` does, and only when a metrics option was given.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry
except ModuleNotFoundError as _exc:  # pragma: no cover - the default install has them
    from corestate.errors import PermanentError

    raise PermanentError(f"metrics need OpenTelemetry ({_exc.name} is missing): "
                         "pip install 'corestate[metrics]'") from None

from corestate import __version__
from corestate.telemetry import instruments as ins
from corestate.telemetry.recorder import Recorder
from corestate.telemetry.rpo import PendingChanges

if TYPE_CHECKING:
    from corestate.agents.protect import ConsistencyPoint
    from corestate.kernel.watch import ChangeBatch
    from corestate.pipeline.backup import BackupSummary

Attrs = dict[str, str]


class OtelRecorder(Recorder):
    """Records into OpenTelemetry instruments (see the module docstring)."""

    enabled = True

    def __init__(self, command: str, kafka_group: str | None = None) -> None:
        self.command = command
        self.registry = CollectorRegistry(auto_describe=True)
        self.reader = PrometheusMetricReader(scope_info_enabled=False, registry=self.registry)
        views = [View(instrument_name=i.name,
                      aggregation=ExplicitBucketHistogramAggregation(list(i.buckets)))
                 for i in ins.ALL if i.buckets is not None]
        resource = Resource.create({"service.name": "corestate", "service.version": __version__,
                                    "host.name": socket.gethostname(),
                                    "process.command": command})
        self.provider = MeterProvider(metric_readers=[self.reader], resource=resource, views=views)
        meter = self.provider.get_meter("corestate", __version__)
        self._observers: dict[str, list[Callable[[], Iterable[tuple[float, Attrs]]]]] = {}
        self._i: dict[str, Any] = {}
        for inst in ins.ALL:
            if inst.kind == "counter":
                made: Any = meter.create_counter(inst.name, inst.unit, inst.description)
            elif inst.kind == "histogram":
                made = meter.create_histogram(inst.name, inst.unit, inst.description)
            elif inst.kind == "gauge":
                made = meter.create_gauge(inst.name, inst.unit, inst.description)
            else:
                self._observers[inst.name] = []
                made = meter.create_observable_gauge(
                    inst.name, [self._callback(inst.name)], inst.unit, inst.description)
            self._i[inst.name] = made
        self._lock = threading.Lock()
        self._protect: Attrs = {}
        self._pending = PendingChanges()
        self._full_reason = "catchup"
        self._barriers: dict[tuple[str, str], float] = {}  # (role, snapshot id) -> first end
        self.kafka_group = kafka_group

    # -- plumbing ----------------------------------------------------------------------
    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for read in list(self._observers[name]):
                try:
                    out.extend(Observation(v, a) for v, a in read())
                except Exception:  # a measurement that cannot be taken is dropped
                    continue
            return out
        return observe

    def observe(self, inst: ins.Instrument, read: Callable[[], Iterable[tuple[float, Attrs]]]) -> None:
        self._observers[inst.name].append(read)

    def _add(self, inst: ins.Instrument, value: float, attrs: Attrs) -> None:
        self._i[inst.name].add(value, attrs)

    def _record(self, inst: ins.Instrument, value: float, attrs: Attrs) -> None:
        self._i[inst.name].record(value, attrs)

    def _set(self, inst: ins.Instrument, value: float, attrs: Attrs) -> None:
        self._i[inst.name].set(value, attrs)

    def shutdown(self) -> None:
        self.provider.shutdown()

    # -- embedded backups and protect ---------------------------------------------------
    def backup_run(self, command: str, repository: str, paths: Sequence[str], host: str,
                   seconds: float, summary: BackupSummary | None,
                   max_age: float | None = None) -> None:
        run = {"repository": repository, "source_set": ins.source_set(paths), "host": host,
               "command": command}
        if summary is None:
            result = "failure"
        else:
            result = "success" if not summary.errors else "partial"
        for outcome in ("success", "partial", "failure"):  # every result has a series
            self._add(ins.BACKUP_RUNS, 1 if outcome == result else 0, {**run, "result": outcome})
        self._record(ins.BACKUP_DURATION, seconds, {**run, "result": result})
        if max_age is not None:
            self._set(ins.BACKUP_MAX_AGE, max_age, run)
        if summary is None:
            return
        if summary.snapshot_id:
            self._set(ins.BACKUP_LAST_SUCCESS, time.time(), run)
        self._add(ins.BACKUP_PROCESSED, summary.total_bytes_processed, run)
        self._add(ins.BACKUP_ADDED, summary.data_added + getattr(summary, "tree_added", 0), run)
        self._add(ins.BACKUP_STORED, getattr(summary, "data_added_packed", 0), run)
        for state, n in (("new", summary.files_new), ("changed", summary.files_changed),
                         ("unmodified", summary.files_unmodified),
                         ("error", len(summary.errors))):
            self._add(ins.BACKUP_FILES, n, {**run, "state": state})

    def last_success(self, labels: Attrs, when: float) -> None:
        """Set a last-success time recorded by an earlier run (textfile carry-over)."""
        self._set(ins.BACKUP_LAST_SUCCESS, when, labels)

    def protect_started(self, repository: str, paths: Sequence[str], host: str,
                        interval: Callable[[], float]) -> None:
        labels = {"repository": repository, "source_set": ins.source_set(paths), "host": host}
        self._protect = {**labels, "paths": "\0".join(paths)}
        self.observe(ins.PROTECT_PENDING_AGE, lambda: [(self._pending.oldest_age(), labels)])
        self.observe(ins.PROTECT_PENDING, lambda: [(float(len(self._pending)), labels)])
        self.observe(ins.PROTECT_INTERVAL, lambda: [(interval(), labels)])
        self._add(ins.PROTECT_OVERFLOWS, 0, labels)
        for reason in ("catchup", "overflow", "failure", "unwatched"):
            self._add(ins.PROTECT_RESCANS, 0, {**labels, "reason": reason})

    def _protect_labels(self) -> Attrs:
        return {k: v for k, v in self._protect.items() if k != "paths"}

    def protect_batch(self, batch: ChangeBatch) -> None:
        self._pending.seen(batch.paths)
        if batch.overflow:
            self._add(ins.PROTECT_OVERFLOWS, 1, self._protect_labels())
            self._full_reason = self._full_reason or "overflow"

    def protect_point(self, point: ConsistencyPoint) -> None:
        labels = self._protect_labels()
        paths = self._protect.get("paths", "").split("\0")
        self.backup_run("protect", labels.get("repository", ""), paths, labels.get("host", ""),
                        point.committed - point.started, point.summary)
        for rpo in self._pending.committed(point.started, point.committed):
            self._record(ins.PROTECT_RPO, rpo, labels)
        if point.full_scan:
            self._add(ins.PROTECT_RESCANS, 1, {**labels, "reason": self._full_reason or "overflow"})
            self._full_reason = ""
        if getattr(point, "rescanned", 0):
            self._add(ins.PROTECT_RESCANS, 1, {**labels, "reason": "unwatched"})

    def protect_failed(self, seconds: float) -> None:
        labels = self._protect_labels()
        self.backup_run("protect", labels.get("repository", ""),
                        self._protect.get("paths", "").split("\0"), labels.get("host", ""),
                        seconds, None)
        self._full_reason = self._full_reason or "failure"

    def backend_op(self, backend: str, operation: str, seconds: float, ok: bool,
                   read: int = 0, written: int = 0) -> None:
        self._record(ins.BACKEND_DURATION, seconds, {
            "backend": backend, "operation": operation, "result": "ok" if ok else "error"})
        if read:
            self._add(ins.BACKEND_TRANSFERRED, read, {"backend": backend, "direction": "read"})
        if written:
            self._add(ins.BACKEND_TRANSFERRED, written, {"backend": backend, "direction": "write"})

    # -- distributed mode ----------------------------------------------------------------
    def stage_record(self, role: str, topic: str, decoded: Any, emits: Sequence[Any],
                     seconds: float) -> None:
        # here, not at the top: a backup's recorder need not load the Avro events
        from corestate.schemas.events import (BarrierAck, DeadLetter, SnapshotCommitted,
                                              SnapshotMarker)

        self._add(ins.KAFKA_CONSUMED, 1, {"topic": topic, "role": role})
        self._record(ins.STAGE_DURATION, seconds, {"role": role})
        prefix = topic.rsplit(".", 1)[0] if "." in topic else ""
        now = time.time()
        if isinstance(decoded, SnapshotMarker) and decoded.kind == "end":
            with self._lock:
                self._barriers.setdefault((role, decoded.snapshot_id), now)
        for emit in emits:
            out = f"{prefix}.{emit.topic}" if prefix else emit.topic
            self._add(ins.KAFKA_PRODUCED, 1, {"topic": out, "role": role})
            event = emit.event
            if isinstance(event, DeadLetter):
                reason = "undecodable" if decoded is None else "rejected"
                self._add(ins.DEAD_LETTERS, 1, {"stage": role, "reason": reason})
            elif isinstance(event, (BarrierAck, SnapshotCommitted)):
                with self._lock:
                    first = self._barriers.pop((role, event.snapshot_id), None)
                if first is not None:
                    self._record(ins.BARRIER_WAIT, now - first, {"role": role})
                if isinstance(event, SnapshotCommitted):
                    self._record(ins.COMMIT_LATENCY, max(0.0, now - event.time.timestamp()), {})
        if len(self._barriers) > 10_000:  # snapshots abandoned: forget the oldest
            with self._lock:
                for key in sorted(self._barriers, key=self._barriers.__getitem__)[:5_000]:
                    del self._barriers[key]

    def kafka_roles(self, prefix: str, roles: Sequence[str], inputs: dict[str, tuple[str, ...]]) -> None:
        """Start every role's series at zero, so dashboards show a worker that idles."""
        for role in roles:
            for suffix in inputs.get(role, ()):
                self._add(ins.KAFKA_CONSUMED, 0, {"topic": f"{prefix}.{suffix}", "role": role})
            for reason in ("undecodable", "rejected"):
                self._add(ins.DEAD_LETTERS, 0, {"stage": role, "reason": reason})

    def produced(self, topic: str, role: str, records: int = 1) -> None:
        self._add(ins.KAFKA_PRODUCED, records, {"topic": topic, "role": role})

    def agent_run(self, host: str, incremental: bool, records: int, topic: str,
                  content_bytes: int) -> None:
        self._add(ins.AGENT_RUNS, 1, {"host": host, "kind": "incremental" if incremental else "full"})
        self._add(ins.AGENT_PUBLISHED, content_bytes, {"host": host})
        self.produced(topic, "agent", records)

    def consumer_lag(self, read: Callable[[], dict[tuple[str, str, int], int]]) -> None:
        self.observe(ins.CONSUMER_LAG, lambda: [
            (float(lag), {"group": g, "topic": t, "partition": str(p)})
            for (g, t, p), lag in read().items()])

    # -- anomaly detection, check, notifications -------------------------------------------
    def anomaly_started(self, host: str) -> None:
        """Start the alert counters at zero for ``host``."""
        for level in ("warning", "critical"):
            self._add(ins.ANOMALY_ALERTS, 0, {"host": host, "severity": level})

    def anomaly_score(self, host: str, score: float) -> None:
        self._record(ins.ANOMALY_SCORE, score, {"host": host})
        self._set(ins.ANOMALY_LAST_SCORE, score, {"host": host})

    def anomaly_alert(self, host: str, score: float, threshold: float, files: int) -> None:
        self._add(ins.ANOMALY_ALERTS, 1, {"host": host, "severity": ins.severity(score, threshold)})
        self._record(ins.ANOMALY_ALERT_FILES, files, {"host": host})

    def check_run(self, repository: str, read_data: bool, errors: int | None) -> None:
        attrs = {"repository": repository, "read_data": "true" if read_data else "false"}
        self._set(ins.CHECK_SUCCESS, 1.0 if errors == 0 else 0.0, attrs)
        if errors is not None:
            self._set(ins.CHECK_ERRORS, errors, attrs)
        self._set(ins.CHECK_LAST_RUN, time.time(), attrs)

    def notify_delivery(self, delivered: bool) -> None:
        self._add(ins.NOTIFY_DELIVERIES, 1, {"result": "delivered" if delivered else "failed"})

