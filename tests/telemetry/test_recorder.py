"""The OpenTelemetry recorder, read back from its own registry: protect's RPO, pending
changes, overflows and rescans from watcher batches and consistency points; a worker
role's records, dead letters, barrier waits and commit latency from what it decoded and
emitted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from corestate.agents.protect import ConsistencyPoint
from corestate.kernel.watch import ChangeBatch
from corestate.pipeline.backup import BackupSummary
from corestate.pipeline.stage import Emit
from corestate.schemas.events import BarrierAck, DeadLetter, SnapshotCommitted, SnapshotMarker
from corestate.telemetry.otel import OtelRecorder


@pytest.fixture
def rec() -> Iterator[OtelRecorder]:
    r = OtelRecorder("test")
    yield r
    r.shutdown()


def value(rec: OtelRecorder, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for family in rec.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total, found = total + s.value, True
    assert found, (name, labels)
    return total


def point(started: float, committed: float, full: bool = False, rescanned: int = 0) -> ConsistencyPoint:
    return ConsistencyPoint(BackupSummary(snapshot_id="ab" * 32, files_new=2), started, committed,
                            full, 1, frozenset(), rescanned)


def test_protect_rpo_pending_overflows_and_rescans(rec: OtelRecorder) -> None:
    rec.protect_started("repo1234", ["/src"], "h1", lambda: 2.0)
    base = dict(repository="repo1234", host="h1")
    rec.protect_point(point(time.time() - 1, time.time(), full=True))  # the catch-up scan
    assert value(rec, "corestate_protect_rescans_total", reason="catchup", **base) == 1
    rec.protect_batch(ChangeBatch(paths=frozenset({b"/src/a", b"/src/b"})))
    assert value(rec, "corestate_protect_pending_changes", **base) == 2
    assert value(rec, "corestate_protect_oldest_pending_change_age_seconds", **base) >= 0
    time.sleep(0.05)
    started = time.time()
    rec.protect_batch(ChangeBatch(paths=frozenset({b"/src/a"}), overflow=True))  # a seen before
    rec.protect_point(point(started, started + 3.0))
    assert value(rec, "corestate_protect_rpo_seconds_count", **base) == 2
    assert 6.0 <= value(rec, "corestate_protect_rpo_seconds_sum", **base) < 7.0
    assert value(rec, "corestate_protect_pending_changes", **base) == 0
    assert value(rec, "corestate_protect_oldest_pending_change_age_seconds", **base) == 0
    assert value(rec, "corestate_protect_watcher_overflows_total", **base) == 1
    rec.protect_point(point(time.time(), time.time(), full=True, rescanned=3))
    assert value(rec, "corestate_protect_rescans_total", reason="overflow", **base) == 1
    assert value(rec, "corestate_protect_rescans_total", reason="unwatched", **base) == 1
    rec.protect_failed(1.0)
    rec.protect_point(point(time.time(), time.time(), full=True))
    assert value(rec, "corestate_protect_rescans_total", reason="failure", **base) == 1
    assert value(rec, "corestate_backup_runs_total", command="protect", result="success") == 4
    assert value(rec, "corestate_backup_runs_total", command="protect", result="failure") == 1
    assert value(rec, "corestate_backup_files_total", state="new") == 8
    assert value(rec, "corestate_protect_interval_seconds", **base) == 2.0


def test_worker_records_dead_letters_barriers_and_commits(rec: OtelRecorder) -> None:
    now = datetime.now(timezone.utc)
    rec.kafka_roles("p", ["chunk", "pack", "commit"], {"chunk": ("captures",), "pack": ("chunks",),
                                                       "commit": ("files", "stored")})
    assert value(rec, "corestate_kafka_records_consumed_total", role="commit", topic="p.stored") == 0
    dead = DeadLetter(topic="p.captures", partition=0, offset=7, reason="bad", time=now)
    rec.stage_record("chunk", "p.captures", None, [Emit("dlq", dead)], 0.001)
    assert value(rec, "corestate_kafka_dead_letters_total", stage="chunk", reason="undecodable") == 1
    assert value(rec, "corestate_kafka_dead_letters_total", stage="chunk", reason="rejected") == 0
    assert value(rec, "corestate_kafka_records_produced_total", role="chunk", topic="p.dlq") == 1
    end = SnapshotMarker(host="h", snapshot_id="s1", kind="end", paths=("/x",), partition_count=1,
                         time=now)
    rec.stage_record("pack", "p.chunks", end, [], 0.002)
    time.sleep(0.05)
    rec.stage_record("pack", "p.chunks", object(),
                     [Emit("stored", BarrierAck("s1", 0, True, 1))], 0.003)
    assert value(rec, "corestate_barrier_wait_seconds_count", role="pack") == 1
    assert value(rec, "corestate_barrier_wait_seconds_sum", role="pack") >= 0.05
    assert value(rec, "corestate_kafka_records_consumed_total", role="pack", topic="p.chunks") == 2
    assert value(rec, "corestate_stage_duration_seconds_count", role="pack") == 2
    done = SnapshotCommitted(snapshot_id="s1", restic_id="ab" * 32, host="h", paths=("/x",),
                             time=now, tree="cd" * 32, files=1, bytes_added=1)
    rec.stage_record("commit", "p.files", end, [Emit("snapshots", done)], 0.004)
    assert value(rec, "corestate_snapshot_commit_latency_seconds_count") == 1
    assert value(rec, "corestate_barrier_wait_seconds_count", role="commit") == 1
