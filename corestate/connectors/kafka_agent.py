"""The host agent's Kafka clients: the producer its runs and alerts go out through, and
the feed of committed snapshots it builds incremental runs on.

Terms: the *publisher* (:class:`CapturePublisher`) is an idempotent confluent-kafka
producer (acks=all) of ``<prefix>.captures`` and ``<prefix>.alerts``; a run is published
when :meth:`CapturePublisher.settle` returns (every record acknowledged). The *feed*
(:class:`CommitFeed`) reads ``<prefix>.snapshots`` from the start without a consumer
group. The scan and the watch loop that drive them are in :mod:`corestate.agents.agent`,
which knows only the protocols these implement.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from corestate.connectors.kafka_topics import PRODUCER_DEFAULTS, key_for, spec
from corestate.errors import PermanentError, RetryableError
from corestate.schemas.codec import Codec
from corestate.schemas.errors import UndecodableEventError
from corestate.schemas.events import Event, SnapshotCommitted

log = logging.getLogger(__name__)


class CapturePublisher:
    """An idempotent producer of capture events to ``<prefix>.captures`` and alerts to
    ``<prefix>.alerts``, encoded by ``codec`` (default: single-object): the agent's
    :class:`~corestate.agents.agent.CaptureSink`."""

    def __init__(self, client: Mapping[str, str], prefix: str = "corestate",
                 codec: Codec | None = None) -> None:
        try:
            from confluent_kafka import KafkaException, Producer
        except ModuleNotFoundError:
            raise PermanentError("Kafka support is not installed: pip install 'corestate[kafka]'") from None
        self.codec = codec if codec is not None else Codec()

        self.topic = spec("captures").name(prefix)
        self.alerts_topic = spec("alerts").name(prefix)
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

    def _produce(self, topic: str, event: Event, partition: int | None = None,
                 on_delivery: Callable[[Any, Any], None] | None = None) -> None:
        value = self.codec.encode(event)
        while True:
            try:
                self.producer.produce(topic, value=value, key=key_for(event),
                                      on_delivery=on_delivery or self._delivered,
                                      partition=-1 if partition is None else partition)  # -1: by key
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
        self.producer.poll(0)

    def send(self, event: Event, partition: int | None = None) -> None:
        self._produce(self.topic, event, partition)

    def publish_alert(self, event: Event, on_delivery: Callable[[Any, Any], None]) -> None:
        """Queue an alert for ``<prefix>.alerts`` (key: host); ``on_delivery(err, msg)``
        says how it went, from a later poll or flush."""
        self._produce(self.alerts_topic, event, on_delivery=on_delivery)

    def poll(self) -> None:
        self.producer.poll(0)

    def settle(self, timeout: float = 300.0) -> None:
        """Wait until every record queued is acknowledged by the brokers (acks=all);
        raise if any was not delivered (the failures are then forgotten)."""
        deadline = time.monotonic() + timeout
        while self.producer.flush(1.0) > 0:
            if time.monotonic() > deadline:
                raise RetryableError(f"{len(self.producer)} records not acknowledged after "
                                     f"{timeout:.0f}s")
        failures, self.failures = self.failures, []
        if failures:
            raise RetryableError(f"{len(failures)} records were not delivered: {failures[0]}")


class CommitFeed:
    """The agent's :class:`~corestate.agents.agent.CommitSource`: the ``SnapshotCommitted`` events of ``<prefix>.snapshots``, every one from the
    start (the topic is compacted: it holds every snapshot committed), read without a
    consumer group, decoded by ``codec`` (either wire format; registry framing needs its
    registry)."""

    _PRODUCER_ONLY = frozenset({"acks", "enable.idempotence", "compression.type",
                                "compression.codec", "partitioner", "linger.ms",
                                "queue.buffering.max.kbytes", "message.max.bytes"})

    def __init__(self, client: Mapping[str, str], prefix: str = "corestate",
                 codec: Codec | None = None) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

        self.codec = codec if codec is not None else Codec()

        self.topic = spec("snapshots").name(prefix)
        conf = {k: v for k, v in client.items() if k not in self._PRODUCER_ONLY}
        conf.update({"group.id": f"{prefix}.agent.{uuid.uuid4().hex}",
                     "enable.auto.commit": "false", "auto.offset.reset": "earliest"})
        try:
            self.consumer = Consumer(conf)
            meta = self.consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        except KafkaException as exc:
            raise RetryableError(f"cannot reach Kafka at {client.get('bootstrap.servers')}: "
                                 f"{exc.args[0].str()}") from None
        if meta is None or meta.error is not None or not meta.partitions:
            raise PermanentError(f"topic {self.topic} does not exist: run `corestate topics create`")
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                              for p in meta.partitions])

    def poll(self, timeout: float = 0.0) -> list[SnapshotCommitted]:
        out: list[SnapshotCommitted] = []
        for _ in range(20):  # catching up on a long history: up to 10,000 at a time
            msgs = self.consumer.consume(num_messages=500, timeout=timeout)
            for msg in msgs:
                if msg.error():
                    continue
                try:
                    out.append(self.codec.decode(msg.value() or b"", SnapshotCommitted))
                except UndecodableEventError as exc:
                    log.debug("%s@%d: %s", self.topic, msg.offset(), exc.reason)
                except RetryableError as exc:  # the registry is away: the next run is full
                    log.warning("%s@%d not read: %s", self.topic, msg.offset(), exc)
            if len(msgs) < 500:
                break
        return out

    def close(self) -> None:
        self.consumer.close()
