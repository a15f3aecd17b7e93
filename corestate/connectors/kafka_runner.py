"""The distributed runner: each stage of :mod:`corestate.pipeline.stages` as a Kafka
consumer group, with confluent-kafka.

Terms:

- a *role* is one stage run by one consumer: ``chunk`` reads ``captures``, ``pack`` reads
  ``chunks``, ``commit`` reads ``files`` and ``stored``. Each role has its own consumer
  group (``<prefix>.worker.<role>``), so any number of worker processes share a role's
  partitions, and its own idempotent producer;
- the *position* of a partition is the offset after the last record handled; a *safe*
  position is one whose records are no longer needed: everything the stage did with
  them is durable. Offsets are committed only up to safe positions (at least once):

  1. the stage handles a record and yields events; the runner produces them;
  2. the role decides which positions are safe: chunk, a captures partition with no
     file half-received; pack, every position once its packs and index were flushed
     (at a barrier, or every ``PACK_FLUSH_SECONDS``); commit, every position when no
     snapshot is in progress;
  3. at a checkpoint (about every second, and before partitions are revoked) the
     producer is flushed (every emitted event acknowledged), then the safe positions
     are committed.

  A crash replays from the last committed offsets; replay is harmless because storage
  writes are content-addressed and the committer does not write a snapshot twice;
- a record that does not decode, or that its stage rejects, goes to ``<prefix>.dlq`` as
  a :class:`DeadLetter` with the reason; the runner goes on with the next record.

On a rebalance (eager: every partition is revoked, then the new set assigned and read
from its committed offsets) a role checkpoints, then resets its stage's state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from corestate.connectors.kafka_topics import PRODUCER_DEFAULTS, key_for, spec
from corestate.errors import PermanentError, RetryableError
from corestate.pipeline.stages import (ChunkStage, CommitStage, Emit, PackStage,
                                       RejectedEventError)
from corestate.repository.repository import Repository
from corestate.schemas.codec import decode, encode
from corestate.schemas.errors import UndecodableEventError
from corestate.schemas.events import DeadLetter

log = logging.getLogger(__name__)

ROLES = ("chunk", "pack", "commit")
INPUTS = {"chunk": ("captures",), "pack": ("chunks",), "commit": ("files", "stored")}
CHECKPOINT_SECONDS = 1.0
PACK_FLUSH_SECONDS = 30.0


class RoleRunner:
    """One role: a consumer, a producer and a stage, driven by :meth:`run` in one thread."""

    def __init__(self, role: str, client: Mapping[str, str], prefix: str,
                 open_repo: Callable[[], Repository], stop: threading.Event,
                 abandon_after: float = 3600.0) -> None:
        from confluent_kafka import Consumer, KafkaException, Producer

        if role not in ROLES:
            raise PermanentError(f"unknown role {role!r}: choose from {', '.join(ROLES)}")
        self.role = role
        self.prefix = prefix
        self.stop = stop
        self.topics = {spec(s).name(prefix): s for s in INPUTS[role]}
        self.producer = Producer({**PRODUCER_DEFAULTS,
                                  "message.max.bytes": str(spec("dlq").max_message_bytes),
                                  "linger.ms": "5", **client})
        self.consumer = Consumer({"group.id": f"{prefix}.worker.{role}",
                                  "enable.auto.commit": "false",
                                  "auto.offset.reset": "earliest",
                                  "fetch.max.bytes": str(64 << 20),
                                  "max.partition.fetch.bytes": str(16 << 20),
                                  "session.timeout.ms": "6000",
                                  "heartbeat.interval.ms": "1000",
                                  # the committer must own partition p of files and of stored
                                  # together (both keyed by snapshot id): range does that
                                  "partition.assignment.strategy": "range",
                                  **client})
        chunk_topic = spec("chunks").name(prefix)
        try:
            meta = self.consumer.list_topics(timeout=30).topics
        except KafkaException as exc:
            raise RetryableError(f"cannot reach Kafka at {client.get('bootstrap.servers')}: "
                                 f"{exc.args[0].str()}") from None
        missing = [t for t in (*self.topics, chunk_topic) if t not in meta]
        if missing:
            raise PermanentError(f"topics {', '.join(missing)} do not exist: run "
                                 "`corestate topics create`")
        chunk_partitions = len(meta[chunk_topic].partitions)
        self.stage: ChunkStage | PackStage | CommitStage
        if role == "chunk":
            self.stage = ChunkStage(chunk_partitions)
        elif role == "pack":
            self.stage = PackStage(open_repo(), chunk_partitions)
        else:
            self.stage = CommitStage(open_repo(), abandon_after)
        self._position: dict[tuple[str, int], int] = {}
        self._safe: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._last_flush = time.monotonic()
        self.failures: list[str] = []
        self.dead_letters = 0

    # -- producing -----------------------------------------------------------------------
    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failures.append(str(err))

    def _produce(self, topic: str, value: bytes, key: bytes | None, partition: int | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, on_delivery=self._delivered,
                                      partition=-1 if partition is None else partition)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def _emit(self, emit: Emit) -> None:
        key = emit.key if emit.key is not None else key_for(emit.event)
        self._produce(spec(emit.topic).name(self.prefix), encode(emit.event), key, emit.partition)

    def _dead_letter(self, msg: Any, reason: str) -> None:
        log.warning("%s[%d]@%d to the dead-letter topic: %s", msg.topic(), msg.partition(),
                    msg.offset(), reason)
        self.dead_letters += 1
        self._emit(Emit("dlq", DeadLetter(topic=msg.topic(), partition=msg.partition(),
                                          offset=msg.offset(), reason=reason,
                                          time=datetime.now(timezone.utc), key=msg.key(),
                                          value=msg.value())))

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        self.consumer.subscribe(list(self.topics), on_revoke=self._on_revoke)
        last = time.monotonic()
        try:
            while not self.stop.is_set():
                for msg in self.consumer.consume(num_messages=64, timeout=0.2):
                    if msg.error():
                        log.warning("%s: %s", self.role, msg.error())
                        continue
                    self._handle(msg)
                if self.role == "pack" and self._position != self._safe \
                        and time.monotonic() - self._last_flush > PACK_FLUSH_SECONDS:
                    self._pack_flushed()
                if time.monotonic() - last > CHECKPOINT_SECONDS:
                    if isinstance(self.stage, CommitStage):
                        for snapshot_id in self.stage.expire():
                            log.warning("snapshot %s abandoned: nothing received for %.0fs",
                                        snapshot_id, self.stage.abandon_after)
                        if self.stage.idle():
                            self._safe = dict(self._position)
                    self.checkpoint()
                    last = time.monotonic()
            if self.role == "pack":
                self._pack_flushed()
            self.checkpoint()
        finally:
            self.consumer.close()
            if isinstance(self.stage, PackStage):
                self.stage.packer.close()

    def _handle(self, msg: Any) -> None:
        where = (msg.topic(), msg.partition())
        try:
            event = decode(msg.value() or b"")
            for emit in self.stage.handle(msg.partition(), event):
                self._emit(emit)
        except (UndecodableEventError, RejectedEventError) as exc:
            self._dead_letter(msg, getattr(exc, "reason", None) or str(exc))
        self._position[where] = msg.offset() + 1
        stage = self.stage
        if isinstance(stage, ChunkStage):
            if stage.quiet(msg.partition()):
                self._safe[where] = msg.offset() + 1
        elif isinstance(stage, PackStage):
            if stage.flushes != getattr(self, "_seen_flushes", 0):
                self._seen_flushes = stage.flushes
                self._safe = dict(self._position)
                self._last_flush = time.monotonic()
        elif stage.idle():
            self._safe = dict(self._position)

    def _pack_flushed(self) -> None:
        assert isinstance(self.stage, PackStage)
        self.stage.flush()
        self._seen_flushes = self.stage.flushes
        self._safe = dict(self._position)
        self._last_flush = time.monotonic()

    def checkpoint(self) -> None:
        """Flush the producer, then commit the safe positions not yet committed."""
        from confluent_kafka import KafkaException, TopicPartition

        todo = {k: v for k, v in self._safe.items() if self._committed.get(k) != v}
        while self.producer.flush(1.0) > 0:
            if self.stop.is_set() and not todo:
                break
        if self.failures:
            raise PermanentError(f"{self.role}: {len(self.failures)} records not delivered: "
                                 f"{self.failures[0]}")
        if todo:
            try:
                self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in todo.items()],
                                     asynchronous=False)
            except KafkaException as exc:  # broker away or group rebalancing: next time
                log.warning("%s: offsets not committed yet: %s", self.role, exc.args[0])
                return
            self._committed.update(todo)

    def _on_revoke(self, _consumer: Any, _partitions: Sequence[Any]) -> None:
        if isinstance(self.stage, PackStage):
            self._pack_flushed()
        try:
            self.checkpoint()
        except Exception as exc:  # the new owner replays: nothing is lost
            log.warning("%s: checkpoint at revoke failed: %s", self.role, exc)
        self.stage.reset()
        self._position.clear()
        self._safe.clear()
        self._committed.clear()


def run_worker(client: Mapping[str, str], roles: Sequence[str], open_repo: Callable[[], Repository],
               prefix: str = "corestate", stop: threading.Event | None = None,
               abandon_after: float = 3600.0) -> None:
    """Run ``roles`` (each in its own thread) until ``stop`` is set or one of them fails;
    a failure is raised here after the others stopped."""
    stop = stop or threading.Event()
    runners = [RoleRunner(r, client, prefix, open_repo, stop, abandon_after) for r in roles]
    errors: list[BaseException] = []

    def body(runner: RoleRunner) -> None:
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=body, args=(r,), name=f"role-{r.role}") for r in runners]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    if errors:
        raise errors[0]
