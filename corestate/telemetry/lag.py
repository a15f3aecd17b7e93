"""Consumer lag of a worker group, as Kafka's own tools compute it.

Terms:

- the *lag* of a consumer group on a partition is the partition's high watermark (the
  offset the next record will get) minus the group's committed offset there (the next
  record it will read after a restart); a partition the group never committed counts
  from its log start. It is what ``kafka-consumer-groups --describe`` shows, and it is
  independent of any one worker process: every worker of the group reports the same
  numbers;
- the *poller* asks the brokers every ``every`` seconds on a daemon thread and keeps
  the last answer, which each scrape reads; a failed poll keeps the previous answer and
  is logged once. It asks through a consumer that carries the group's id but never
  subscribes (so it never joins the group): ``committed()`` reads the group's offsets,
  ``get_watermark_offsets()`` each partition's bounds. (The AdminClient's offset calls
  were tried first: under a running faust worker they crashed the process now and
  then, in librdkafka.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("corestate.telemetry.lag")

Lag = dict[tuple[str, str, int], int]

# librdkafka settings a consumer takes from the --kafka-config / CORESTATE_KAFKA_* set
_CLIENT_SETTINGS = ("bootstrap.servers", "security.protocol", "sasl.", "ssl.", "client.id",
                    "socket.", "broker.", "metadata.", "log_level")


class LagPoller:
    def __init__(self, client: Mapping[str, str], group: str, topics: Sequence[str],
                 every: float = 5.0, timeout: float = 10.0) -> None:
        self.conf = {k: v for k, v in client.items() if k.startswith(_CLIENT_SETTINGS)}
        self.conf.update({"group.id": group, "enable.auto.commit": "false"})
        self.conf.setdefault("log_level", "2")
        self.group, self.topics = group, list(topics)
        self.every, self.timeout = every, timeout
        self.lag: Lag = {}
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="lag", daemon=True)

    def start(self) -> LagPoller:
        self._thread.start()
        return self

    def read(self) -> Lag:
        return dict(self.lag)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + self.every)

    def _run(self) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer(self.conf)
        try:
            while not self._stop.is_set():
                try:
                    self.lag = self.poll(consumer)
                    self._failing = False
                except Exception as exc:  # brokers away: keep the last answer
                    if not self._failing:
                        log.warning("consumer lag of %s not read: %s", self.group, exc)
                    self._failing = True
                self._stop.wait(self.every)
        finally:
            consumer.close()

    def poll(self, consumer: Any) -> Lag:
        """One reading through ``consumer``: ``(group, topic, partition) -> lag``."""
        from confluent_kafka import TopicPartition

        meta = consumer.list_topics(timeout=self.timeout).topics
        parts = [TopicPartition(t, p) for t in self.topics if t in meta
                 for p in sorted(meta[t].partitions)]
        if not parts:
            return {}
        out: Lag = {}
        for tp in consumer.committed(parts, timeout=self.timeout):
            low, high = consumer.get_watermark_offsets(tp, timeout=self.timeout)
            done = tp.offset if tp.offset >= 0 else low  # never committed: from the log start
            out[(self.group, tp.topic, tp.partition)] = max(0, high - done)
        return out
