"""The host agent of distributed mode: scan paths and publish capture events.

Terms:

- a *run* is one scan of the source paths; its *snapshot id* (``<host>-<ns>-<random>``)
  names every event of it, and the worker that commits it writes one restic snapshot;
- the *capture stream* of a run, in order: a ``begin`` :class:`SnapshotMarker` on every
  captures partition; per entry (every ancestor directory of a source path, then each
  source path and everything below it, depth-first in name order) a :class:`FileBegin`
  with the entry's metadata, for a regular file its content as :class:`DataSegment` s of
  at most 1 MiB (``seq`` from 0; a file re-read because it changed underfoot starts again
  at ``seq`` 0), and a :class:`FileEnd`; an entry that cannot be read after its
  FileBegin is withdrawn with a :class:`Delete`; finally an ``end`` marker on every
  partition. Markers carry the paths and tags of the snapshot.

:func:`scan` produces the stream through a callback and imports no Kafka client;
:func:`publish_once` sends it with an idempotent confluent-kafka producer and returns
only when every record is acknowledged; :func:`watch` publishes a run, then a new full
run after every inotify change batch (each run a complete snapshot; not yet incremental).
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from corestate.errors import PermanentError, RetryableError
from corestate.pipeline.assemble import meta_from_node
from corestate.pipeline.capture import ExcludeMatcher, node_from_stat, read_consistently
from corestate.schemas.events import (MAX_SEGMENT, DataSegment, Delete, Event, FileBegin,
                                      FileEnd, SnapshotMarker)


@dataclass
class ScanSummary:
    snapshot_id: str = ""
    entries: int = 0
    files: int = 0
    bytes: int = 0
    records: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)


def new_snapshot_id(host: str) -> str:
    return f"{host}-{time.time_ns()}-{uuid.uuid4().hex[:8]}"


def _ancestors(path: bytes) -> list[bytes]:
    parts = [p for p in path.split(b"/") if p]
    return [b"/" + b"/".join(parts[:i]) for i in range(1, len(parts))]


def scan(paths: list[str], host: str, snapshot_id: str, send: Callable[[Event], None],
         excludes: list[str] | None = None, summary: ScanSummary | None = None) -> ScanSummary:
    """Send the capture events of every entry of ``paths`` (without markers)."""
    summary = summary if summary is not None else ScanSummary(snapshot_id=snapshot_id)
    matcher = ExcludeMatcher(excludes or [])
    roots = sorted({os.fsencode(os.path.abspath(p)) for p in paths})
    done: set[bytes] = set()

    def entry(path: bytes) -> os.stat_result | None:
        try:
            st = os.lstat(path)
            node = node_from_stat(os.path.basename(path), path, st)
        except FileNotFoundError:
            return None
        except OSError as exc:
            summary.errors.append((os.fsdecode(path), exc.strerror or str(exc)))
            return None
        if stat.S_ISSOCK(st.st_mode):
            return None  # restic records no sockets
        send(FileBegin(host=host, snapshot_id=snapshot_id, path=path, node=meta_from_node(node)))
        summary.entries += 1
        if not stat.S_ISREG(st.st_mode):
            send(FileEnd(host=host, snapshot_id=snapshot_id, path=path, size=0, segments=0,
                         consistent=True))
            return st
        sent = [0, 0]  # segments, bytes of the current read

        def consume(fd: int, _st: os.stat_result) -> None:
            sent[0] = sent[1] = 0
            while True:
                data = os.read(fd, MAX_SEGMENT)
                if not data:
                    return
                send(DataSegment(host=host, snapshot_id=snapshot_id, path=path, seq=sent[0],
                                 offset=sent[1], data=data))
                sent[0] += 1
                sent[1] += len(data)

        try:
            outcome = read_consistently(path, consume)
        except OSError as exc:
            summary.errors.append((os.fsdecode(path), exc.strerror or str(exc)))
            send(Delete(host=host, snapshot_id=snapshot_id, path=path))  # withdraw the entry
            return None
        if not outcome.consistent:
            summary.inconsistent.append(os.fsdecode(path))
        send(FileEnd(host=host, snapshot_id=snapshot_id, path=path, size=sent[1],
                     segments=sent[0], consistent=outcome.consistent))
        summary.files += 1
        summary.bytes += sent[1]
        return st

    for root in roots:
        if not os.path.lexists(root):
            raise PermanentError(f"{os.fsdecode(root)}: no such file or directory")
        for anc in _ancestors(root):
            if anc not in done:
                done.add(anc)
                entry(anc)
        if root in done:
            continue
        stack = [root]
        while stack:
            path = stack.pop()
            if path in done or (path != root and matcher.excluded(path)):
                continue
            done.add(path)
            st = entry(path)
            if st is not None and stat.S_ISDIR(st.st_mode):
                try:
                    with os.scandir(path) as it:
                        names = sorted((e.name for e in it), reverse=True)
                except OSError as exc:
                    summary.errors.append((os.fsdecode(path), exc.strerror or str(exc)))
                    continue
                stack.extend(path.rstrip(b"/") + b"/" + os.fsencode(n) for n in names)
    return summary


class CapturePublisher:
    """An idempotent producer to ``<prefix>.captures`` that publishes whole runs."""

    def __init__(self, client: Mapping[str, str], prefix: str = "corestate") -> None:
        try:
            from confluent_kafka import KafkaException, Producer
        except ModuleNotFoundError:
            raise PermanentError("Kafka support is not installed: pip install 'corestate[kafka]'") from None
        from corestate.connectors.kafka_topics import PRODUCER_DEFAULTS, spec

        self.topic = spec("captures").name(prefix)
        conf = {**PRODUCER_DEFAULTS, "message.max.bytes": str(spec("captures").max_message_bytes),
                "linger.ms": "5", "queue.buffering.max.kbytes": str(64 * 1024), **client}
        try:
            self.producer = Producer(conf)
            meta = self.producer.list_topics(self.topic, timeout=30)
        except KafkaException as exc:
            raise RetryableError(f"cannot reach Kafka at {client.get('bootstrap.servers')}: "
                                 f"{exc.args[0].str()}") from None
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise PermanentError(f"topic {self.topic} does not exist: run `corestate topics create`")
        self.partitions = len(tmeta.partitions)
        self.failures: list[str] = []

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failures.append(str(err))

    def publish_run(self, paths: list[str], host: str, excludes: list[str] | None = None,
                    tags: list[str] | None = None, timeout: float = 300.0) -> ScanSummary:
        """Scan ``paths`` once and publish the run; returns when every record is
        acknowledged by the brokers (acks=all), else raises."""
        from corestate.connectors.kafka_topics import key_for
        from corestate.schemas.codec import encode

        producer = self.producer
        summary = ScanSummary(snapshot_id=new_snapshot_id(host))

        def send(event: Event, partition: int | None = None) -> None:
            value = encode(event)
            while True:
                try:
                    producer.produce(self.topic, value=value, key=key_for(event),
                                     on_delivery=self._delivered,
                                     partition=-1 if partition is None else partition)  # -1: by key
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.1)
            producer.poll(0)
            summary.records += 1

        started = datetime.now(timezone.utc)
        abspaths = [os.path.abspath(p) for p in paths]

        def markers(kind: str) -> None:
            for p in range(self.partitions):
                send(SnapshotMarker(host=host, snapshot_id=summary.snapshot_id, kind=kind,  # type: ignore[arg-type]
                                    paths=tuple(abspaths), partition_count=self.partitions,
                                    time=started, tags=tuple(tags or ())), partition=p)

        markers("begin")
        scan(paths, host, summary.snapshot_id, send, excludes, summary)
        markers("end")
        deadline = time.monotonic() + timeout
        while producer.flush(1.0) > 0:
            if time.monotonic() > deadline:
                raise RetryableError(f"{len(producer)} records not acknowledged after {timeout:.0f}s")
        if self.failures:
            raise RetryableError(f"{len(self.failures)} records were not delivered: "
                                 f"{self.failures[0]}")
        return summary


def publish_once(paths: list[str], client: Mapping[str, str], host: str | None = None,
                 prefix: str = "corestate", excludes: list[str] | None = None,
                 tags: list[str] | None = None, timeout: float = 300.0) -> ScanSummary:
    """Scan ``paths`` once and publish the run to ``<prefix>.captures`` (see
    :meth:`CapturePublisher.publish_run`)."""
    return CapturePublisher(client, prefix).publish_run(
        paths, host or socket.gethostname(), excludes, tags, timeout)


def watch(paths: list[str], client: Mapping[str, str], host: str, stop: threading.Event,
          prefix: str = "corestate", excludes: list[str] | None = None,
          tags: list[str] | None = None,
          on_run: Callable[[ScanSummary], None] = lambda s: None) -> None:
    """Publish a run, then another whenever something under ``paths`` changes, until
    ``stop`` is set. Each run is a full scan (a complete snapshot); changes are watched
    with inotify from before the first scan, so none is missed between runs."""
    from corestate.kernel.watch import Watcher

    publisher = CapturePublisher(client, prefix)
    matcher = ExcludeMatcher(excludes or [])
    dirs = sorted({p if os.path.isdir(p) else os.path.dirname(p)
                   for p in (os.path.abspath(x) for x in paths)})
    with Watcher([os.fsencode(d) for d in dirs], matcher.excluded) as watcher:
        changed = True
        while not stop.is_set():
            if changed:
                on_run(publisher.publish_run(paths, host, excludes, tags))
            changed = watcher.poll(0.5) is not None
