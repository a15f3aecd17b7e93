"""Every metric CoreState exports: its OpenTelemetry name, unit, kind, labels and meaning.

Terms:

- an *instrument* is one metric as OpenTelemetry names it (``corestate.backup.duration``,
  unit ``s``); its *Prometheus name* is what a scrape shows: dots become underscores,
  the unit becomes a suffix (``s`` -> ``_seconds``, ``By`` -> ``_bytes``; a unit in
  braces such as ``{file}`` is only an annotation and adds nothing) and a counter ends
  in ``_total`` (:func:`prometheus_name`, as the OpenTelemetry Prometheus exporter
  translates them);
- *labels* (OpenTelemetry attributes) are few and bounded: never a snapshot id and
  never a file path. ``repository`` is the first 8 hex digits of the repository id
  (as restic shows ids); ``source_set`` is the first 8 hex digits of the SHA-256 of
  the sorted absolute source paths joined by NUL (:func:`source_set`), so one host
  backing up two path sets has two series; ``host`` is the host name the snapshots
  record; ``topic`` is a full Kafka topic name; ``role`` is a worker role (``chunk``,
  ``pack``, ``commit``, ``guard``) or ``agent``;
- *buckets* are histogram boundaries chosen for the quantity (seconds, scores, files),
  not OpenTelemetry's defaults, which suit milliseconds.

This module imports nothing of OpenTelemetry: the catalogue is plain data, read by the
recorder (:mod:`corestate.telemetry.otel`), the docs and the tests that check every
dashboard query and alert rule names a metric listed here.

>>> prometheus_name(BACKUP_LAST_SUCCESS)
'corestate_backup_last_success_timestamp_seconds'
>>> prometheus_name(BACKUP_FILES), prometheus_name(BACKUP_ADDED)
('corestate_backup_files_total', 'corestate_backup_added_bytes_total')
>>> source_set(["/home/u/docs", "/etc"]) == source_set(["/etc", "/home/u/docs/"])
True
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "histogram", "gauge", "observable_gauge"]

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                   1800.0, 3600.0, 14400.0)
RPO_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
               1800.0, 3600.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
FILES_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 20000.0)


@dataclass(frozen=True)
class Instrument:
    name: str
    kind: Kind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None


_RUN = ("repository", "source_set", "host", "command")

# -- embedded backups (corestate backup, and every snapshot of corestate protect) -----
BACKUP_RUNS = Instrument(
    "corestate.backup.runs", "counter", "{run}",
    "Backups by result: success, partial (saved, some files unreadable: exit 3), failure.",
    (*_RUN, "result"))
BACKUP_DURATION = Instrument(
    "corestate.backup.duration", "histogram", "s", "Wall time of a backup, start to commit.",
    (*_RUN, "result"), SECONDS_BUCKETS)
BACKUP_LAST_SUCCESS = Instrument(
    "corestate.backup.last_success.timestamp", "gauge", "s",
    "When the last backup of this repository and source set committed its snapshot "
    "(Unix time).", _RUN)
BACKUP_MAX_AGE = Instrument(
    "corestate.backup.max_age", "gauge", "s",
    "How old the last successful backup may get before the CoreStateBackupTooOld alert "
    "fires (corestate backup --metrics-max-age).", _RUN)
BACKUP_PROCESSED = Instrument(
    "corestate.backup.processed", "counter", "By",
    "Bytes of the files a backup looked at (restic's total_bytes_processed).", _RUN)
BACKUP_ADDED = Instrument(
    "corestate.backup.added", "counter", "By",
    "Bytes of new data and tree blobs, before compression (restic's data_added).", _RUN)
BACKUP_STORED = Instrument(
    "corestate.backup.stored", "counter", "By",
    "Bytes of new blobs as stored: compressed and encrypted (restic's data_added_packed).",
    _RUN)
BACKUP_FILES = Instrument(
    "corestate.backup.files", "counter", "{file}",
    "Files a backup saw, by state: new, changed, unmodified, error.", (*_RUN, "state"))
BACKEND_DURATION = Instrument(
    "corestate.backend.operation.duration", "histogram", "s",
    "Latency of one storage backend operation (with its retries).",
    ("backend", "operation", "result"), FAST_BUCKETS)
BACKEND_TRANSFERRED = Instrument(
    "corestate.backend.transferred", "counter", "By",
    "Bytes read from or written to the storage backend.", ("backend", "direction"))

# -- corestate protect --------------------------------------------------------------------
PROTECT_RPO = Instrument(
    "corestate.protect.rpo", "histogram", "s",
    "Recovery point: from when the watcher reported a change to the commit of the first "
    "snapshot that began after it.", ("repository", "source_set", "host"), RPO_BUCKETS)
PROTECT_PENDING_AGE = Instrument(
    "corestate.protect.oldest_pending_change.age", "observable_gauge", "s",
    "Age of the oldest change not yet in a committed snapshot (0 when none).",
    ("repository", "source_set", "host"))
PROTECT_PENDING = Instrument(
    "corestate.protect.pending_changes", "observable_gauge", "{change}",
    "Changed entries reported by the watcher and not yet in a committed snapshot.",
    ("repository", "source_set", "host"))
PROTECT_INTERVAL = Instrument(
    "corestate.protect.interval", "observable_gauge", "s",
    "Current capture cadence (--interval; shorter while an anomaly alert is fresh).",
    ("repository", "source_set", "host"))
PROTECT_OVERFLOWS = Instrument(
    "corestate.protect.watcher.overflows", "counter", "{overflow}",
    "Watcher queue overflows (events lost; the next snapshot is a full scan).",
    ("repository", "source_set", "host"))
PROTECT_RESCANS = Instrument(
    "corestate.protect.rescans", "counter", "{rescan}",
    "Snapshots that scanned more than the watcher reported, by reason: catchup (start), "
    "overflow, failure (the last snapshot failed), unwatched (directories without a watch).",
    ("repository", "source_set", "host", "reason"))

# -- distributed mode: workers and agents -------------------------------------------------
KAFKA_CONSUMED = Instrument(
    "corestate.kafka.records.consumed", "counter", "{record}",
    "Records a role read, per topic.", ("topic", "role"))
KAFKA_PRODUCED = Instrument(
    "corestate.kafka.records.produced", "counter", "{record}",
    "Records a role or agent produced, per topic.", ("topic", "role"))
STAGE_DURATION = Instrument(
    "corestate.stage.duration", "histogram", "s",
    "Time a worker role spent on one record, producing its output included.", ("role",),
    FAST_BUCKETS)
CONSUMER_LAG = Instrument(
    "corestate.kafka.consumer.lag", "observable_gauge", "{record}",
    "Records not yet committed by a consumer group: high watermark minus committed offset.",
    ("group", "topic", "partition"))
DEAD_LETTERS = Instrument(
    "corestate.kafka.dead_letters", "counter", "{record}",
    "Records sent to the dead-letter topic, by stage and reason (undecodable, rejected).",
    ("stage", "reason"))
BARRIER_WAIT = Instrument(
    "corestate.barrier.wait", "histogram", "s",
    "From a role's first end marker of a snapshot to its barrier completing (pack: the "
    "BarrierAck; commit: the snapshot written).", ("role",), SECONDS_BUCKETS)
COMMIT_LATENCY = Instrument(
    "corestate.snapshot.commit.latency", "histogram", "s",
    "From the start of an agent's run (its markers' time) to its snapshot's commit.", (),
    SECONDS_BUCKETS)
AGENT_RUNS = Instrument(
    "corestate.agent.runs", "counter", "{run}",
    "Runs an agent published, by kind (full, incremental).", ("host", "kind"))
AGENT_PUBLISHED = Instrument(
    "corestate.agent.published", "counter", "By", "File content bytes an agent published.",
    ("host",))

# -- anomaly detection ----------------------------------------------------------------------
ANOMALY_SCORE = Instrument(
    "corestate.anomaly.score", "histogram", "",
    "Anomaly score of each scored window of changes (0 normal .. 1 most anomalous).",
    ("host",), SCORE_BUCKETS)
ANOMALY_LAST_SCORE = Instrument(
    "corestate.anomaly.window_score", "gauge", "", "Score of the latest scored window.",
    ("host",))
ANOMALY_ALERTS = Instrument(
    "corestate.anomaly.alerts", "counter", "{alert}",
    "Ransomware-like activity alerts, by host and severity (critical: the score is past "
    "the midpoint between the threshold and 1; else warning).", ("host", "severity"))
ANOMALY_ALERT_FILES = Instrument(
    "corestate.anomaly.alert.files", "histogram", "{file}",
    "Files touched in the window that raised an alert, before it was raised.", ("host",),
    FILES_BUCKETS)

# -- check and notifications -----------------------------------------------------------------
CHECK_SUCCESS = Instrument(
    "corestate.check.success", "gauge", "",
    "1 if the last corestate check completed and found no errors, else 0.",
    ("repository", "read_data"))
CHECK_ERRORS = Instrument(
    "corestate.check.errors", "gauge", "{error}", "Errors the last check found.",
    ("repository", "read_data"))
CHECK_LAST_RUN = Instrument(
    "corestate.check.last_run.timestamp", "gauge", "s", "When the last check ended (Unix time).",
    ("repository", "read_data"))
NOTIFY_DELIVERIES = Instrument(
    "corestate.notify.deliveries", "counter", "{notification}",
    "Webhook notifications, by result (delivered, failed after every retry).", ("result",))

ALL: tuple[Instrument, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, Instrument))

_UNIT_SUFFIX = {"s": "seconds", "By": "bytes", "ms": "milliseconds"}


def prometheus_name(inst: Instrument) -> str:
    """The name a Prometheus scrape shows for ``inst`` (see the module docstring)."""
    name = inst.name.replace(".", "_")
    suffix = _UNIT_SUFFIX.get(inst.unit, "" if inst.unit.startswith("{") else inst.unit)
    if suffix and not name.endswith("_" + suffix):
        name += "_" + suffix
    if inst.kind == "counter":
        name += "_total"
    return name


def series_names() -> set[str]:
    """Every series name a scrape can show, histogram parts included."""
    out: set[str] = set()
    for inst in ALL:
        name = prometheus_name(inst)
        out.add(name)
        if inst.kind == "histogram":
            out.update(f"{name}_{part}" for part in ("bucket", "sum", "count"))
    return out


def source_set(paths: Iterable[str]) -> str:
    """The ``source_set`` label of a set of source paths (see the module docstring)."""
    norm = sorted({os.path.abspath(p) for p in paths})
    return hashlib.sha256("\0".join(norm).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def severity(score: float, threshold: float) -> str:
    """``critical`` past the midpoint between the alert threshold and 1, else ``warning``.

    >>> severity(0.95, 0.8), severity(0.85, 0.8)
    ('critical', 'warning')
    """
    return "critical" if score >= threshold + (1.0 - threshold) / 2 else "warning"
