"""Consumer lag of a worker group, as Kafka's own tools compute it.

Terms:

- the *lag* of a consumer group on a partition is the partition's high watermark (the
  offset the next record will get) minus the group's committed offset there (the next
  record it will read after a restart); a partition the group never committed counts
  from its log start. It is what ``kafka-consumer-groups --describe`` shows, and it is
  independent of any one worker process: every worker of the group reports the same
  numbers;
- the *poller* asks the brokers (an AdminClient: committed offsets, then latest
  offsets) every ``every`` seconds on a daemon thread and keeps the last answer, which
  each scrape reads; a failed poll keeps the previous answer and is logged once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

log = logging.getLogger("corestate.telemetry.lag")

Lag = dict[tuple[str, str, int], int]

_ADMIN_ONLY = ("bootstrap.servers", "security.protocol", "sasl.", "ssl.", "client.id",
               "socket.", "broker.", "metadata.", "log_level")


class LagPoller:
    def __init__(self, client: Mapping[str, str], group: str, topics: Sequence[str],
                 every: float = 5.0, timeout: float = 10.0) -> None:
        from confluent_kafka.admin import AdminClient

        conf = {k: v for k, v in client.items() if k.startswith(_ADMIN_ONLY)}
        conf.setdefault("log_level", "2")
        self.admin = AdminClient(conf)
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
        while not self._stop.is_set():
            try:
                self.lag = self.poll()
                self._failing = False
            except Exception as exc:  # brokers away: keep the last answer
                if not self._failing:
                    log.warning("consumer lag of %s not read: %s", self.group, exc)
                self._failing = True
            self._stop.wait(self.every)

    def poll(self) -> Lag:
        """One reading: ``(group, topic, partition) -> lag``."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        meta = self.admin.list_topics(timeout=self.timeout).topics
        parts = [TopicPartition(t, p) for t in self.topics if t in meta
                 for p in sorted(meta[t].partitions)]
        if not parts:
            return {}
        request = [ConsumerGroupTopicPartitions(self.group, parts)]
        committed_f = self.admin.list_consumer_group_offsets(request, request_timeout=self.timeout)
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in committed_f[self.group].result(self.timeout).topic_partitions}
        ends = self.admin.list_offsets({tp: OffsetSpec.latest() for tp in parts},
                                       request_timeout=self.timeout)
        starts = self.admin.list_offsets({tp: OffsetSpec.earliest() for tp in parts},
                                         request_timeout=self.timeout)
        out: Lag = {}
        for tp in parts:
            end = ends[tp].result(self.timeout).offset
            done = committed.get((tp.topic, tp.partition), -1)
            if done < 0:  # never committed: everything from the log start is lag
                done = starts[tp].result(self.timeout).offset
            out[(self.group, tp.topic, tp.partition)] = max(0, end - done)
        return out
