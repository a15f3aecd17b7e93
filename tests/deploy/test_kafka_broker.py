"""The single-node Kafka broker that deploy/kafka/broker.sh runs, driven by real clients.

Terms: *the script* is deploy/kafka/broker.sh; *the broker* is the one it starts for this
module, on free ports and with its own data directory; a *segment* is one of the broker's
on-disk log files, read here to check what the broker actually stored (compression,
producer ids, transaction markers) rather than what a client claims it sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kafka_broker import Broker, running_broker

pytest.importorskip("confluent_kafka", reason="pip install 'corestate[kafka]'")

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import NewTopic  # noqa: E402

pytestmark = pytest.mark.kafka

MiB = 1 << 20


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    yield from running_broker(tmp_path_factory)


def create_topic(b: Broker, partitions: int = 1) -> str:
    """A new topic, once the broker lists it: KRaft's controller acknowledges the
    creation before the broker's metadata has it (seen in CI: a KeyError right after)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    futures = b.admin.create_topics([NewTopic(name, num_partitions=partitions)], operation_timeout=30)
    futures[name].result(timeout=60)
    deadline = time.monotonic() + 30
    while name not in b.admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"topic {name} created but not listed in 30 s"
        time.sleep(0.1)
    return name


def consume(b: Broker, topic: str, count: int, group: str | None = None, timeout: float = 60,
            **conf: object) -> list[Message]:
    """Read ``count`` records of ``topic`` from the start in consumer group ``group``
    (a new one by default), commit them, and return them."""
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group or f"g-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, **conf})
    try:
        c.subscribe([topic])
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            out.append(msg)
        if out:
            c.commit(asynchronous=False)
        # Nothing beyond what was expected arrives.
        extra = c.poll(2.0)
        assert extra is None or extra.error() is not None, f"unexpected record {extra.value()!r}"
        return out
    finally:
        c.close()


def committed(b: Broker, group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return [tp.offset for tp in tps]
    finally:
        c.close()


def produce_all(p: Producer, topic: str, records: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """Produce every record, wait for every acknowledgement, return (partition, offset)s."""
    acks: list[tuple[int, int]] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            acks.append((msg.partition(), msg.offset()))

    for key, value in records:
        p.produce(topic, value=value, key=key, headers={"h": key}, on_delivery=on_delivery)
        p.poll(0)
    assert p.flush(60) == 0
    assert errors == []
    return acks


@dataclass
class Batch:
    """The header of one record batch in a segment (Kafka's message format v2)."""
    base_offset: int
    records: int
    compression: int  # 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd
    transactional: bool
    control: bool
    producer_id: int
    base_sequence: int


def segment_batches(b: Broker, topic: str, partition: int = 0) -> list[Batch]:
    out = []
    for seg in sorted((b.data / "logs" / f"{topic}-{partition}").glob("*.log")):
        buf = seg.read_bytes()
        pos = 0
        while pos + 61 <= len(buf):
            base_offset, length = struct.unpack_from(">qi", buf, pos)
            if length == 0:
                break  # preallocated tail
            (attrs, last_delta, _t0, _t1, pid, _epoch, seq, n) = struct.unpack_from(">hiqqqhii", buf, pos + 21)
            out.append(Batch(base_offset, n, attrs & 7, bool(attrs & 16), bool(attrs & 32), pid, seq))
            pos += 12 + length
    return out


def test_start_is_idempotent_and_binds_loopback_only(broker: Broker) -> None:
    again = broker.start()
    assert "already running" in again.stdout
    status = broker.script("status")
    assert status.returncode == 0, status.stdout
    pid = int((broker.data / "kafka.pid").read_text())
    assert "kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_text()
    md = broker.admin.list_topics(timeout=10)
    assert [(b.id, b.host, b.port) for b in md.brokers.values()] == [(1, "127.0.0.1", broker.port)]
    # Listening on 0.0.0.0 would also answer on another loopback address.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.2", broker.port), timeout=2).close()


def test_admin_creates_topics_and_the_broker_creates_none_by_itself(broker: Broker) -> None:
    topic = create_topic(broker, partitions=3)
    md = broker.admin.list_topics(timeout=10)
    assert len(md.topics[topic].partitions) == 3
    again = broker.admin.create_topics([NewTopic(topic, num_partitions=3)])[topic]
    with pytest.raises(Exception) as exc:
        again.result(timeout=30)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    # The producer asks for auto-creation; auto.create.topics.enable=false refuses it.
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 4000})
    failures: list[KafkaError] = []
    p.produce(missing, b"x", on_delivery=lambda err, msg: failures.append(err))
    p.flush(30)
    assert failures and failures[0] is not None
    assert missing not in broker.admin.list_topics(timeout=10).topics


def test_idempotent_zstd_producer_and_a_consumer_group_round_trip(broker: Broker) -> None:
    topic = create_topic(broker, partitions=3)
    records = [(f"k{i % 7}".encode(), f"value {i} ".encode() * 400) for i in range(300)]
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True,
                  "compression.type": "zstd", "linger.ms": 20})
    acks = produce_all(p, topic, records)
    assert len(acks) == len(records) and len(set(acks)) == len(records)

    group = f"g-{uuid.uuid4().hex[:8]}"
    got = consume(broker, topic, len(records), group=group)
    assert sorted((m.key(), m.value()) for m in got) == sorted(records)
    assert all(m.headers() == [("h", m.key())] for m in got)
    for key in {k for k, _ in records}:  # one key, one partition: produce order is kept
        assert [m.value() for m in got if m.key() == key] == [v for k, v in records if k == key]
    ends = [max((off for part, off in acks if part == n), default=-1) + 1 for n in range(3)]
    assert committed(broker, group, topic, 3) == ends

    # What the broker stored: zstd batches carrying the idempotent producer's id and
    # gap-free sequence numbers (a plain producer writes producer id -1).
    raw = sum(len(v) for _, v in records)
    on_disk = 0
    for part in range(3):
        batches = segment_batches(broker, topic, part)
        assert batches and all(bt.compression == 4 for bt in batches)
        assert len({bt.producer_id for bt in batches}) == 1 and batches[0].producer_id >= 0
        seqs = [(bt.base_sequence, bt.records) for bt in batches]
        assert seqs[0][0] == 0 and all(s + n == s2 for (s, n), (s2, _) in zip(seqs, seqs[1:]))
        on_disk += sum(f.stat().st_size for f in (broker.data / "logs" / f"{topic}-{part}").glob("*.log"))
    assert on_disk < raw / 10


def test_records_of_8_mib_are_accepted(broker: Broker) -> None:
    topic = create_topic(broker)
    big = os.urandom(8 * MiB)  # incompressible: the broker sees the full size
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True,
                  "compression.type": "zstd", "message.max.bytes": 9 * MiB})
    produce_all(p, topic, [(b"big", big)])
    (msg,) = consume(broker, topic, 1)
    assert hashlib.sha256(msg.value()).digest() == hashlib.sha256(big).digest()


def test_transactions_commit_abort_and_send_offsets(broker: Broker) -> None:
    src, out = create_topic(broker), create_topic(broker)
    produce_all(Producer({"bootstrap.servers": broker.bootstrap}), src,
                [(b"s", f"in-{i}".encode()) for i in range(10)])

    tp = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}",
                   "acks": "all", "enable.idempotence": True})
    tp.init_transactions(60)
    tp.begin_transaction()
    for i in range(3):
        tp.produce(out, key=b"a", value=f"aborted-{i}".encode())
    tp.flush(30)
    tp.abort_transaction(60)

    # Consume, transform, produce, and commit the input offsets in the same transaction.
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    c.subscribe([src])
    inputs: list[Message] = []
    deadline = time.monotonic() + 60
    while len(inputs) < 10 and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is not None and m.error() is None:
            inputs.append(m)
    assert len(inputs) == 10
    tp.begin_transaction()
    for m in inputs:
        tp.produce(out, key=b"c", value=m.value().replace(b"in-", b"out-"))
    tp.send_offsets_to_transaction(c.position(c.assignment()), c.consumer_group_metadata(), 60)
    tp.commit_transaction(60)
    c.close()

    committed_only = consume(broker, out, 10, **{"isolation.level": "read_committed"})
    assert [m.value() for m in committed_only] == [f"out-{i}".encode() for i in range(10)]
    everything = consume(broker, out, 13, **{"isolation.level": "read_uncommitted"})
    assert [m.value() for m in everything][:3] == [f"aborted-{i}".encode() for i in range(3)]
    assert committed(broker, group, src, 1) == [10]
    batches = segment_batches(broker, out)
    assert [(bt.transactional, bt.control) for bt in batches if bt.control] == [(True, True)] * 2


def test_aiokafka_produces_consumes_and_commits(broker: Broker) -> None:
    aiokafka = pytest.importorskip("aiokafka", reason="pip install 'corestate[kafka]'")
    topic = create_topic(broker, partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"

    async def run() -> list[tuple[int, int, bytes, bytes]]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                             enable_idempotence=True, compression_type="gzip")
        await producer.start()
        try:
            for i in range(50):
                await producer.send(topic, key=f"k{i % 5}".encode(), value=f"v{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()
        tx = aiokafka.AIOKafkaProducer(bootstrap_servers=broker.bootstrap,
                                       transactional_id=f"aio-{uuid.uuid4().hex[:8]}")
        await tx.start()
        try:
            async with tx.transaction():
                await tx.send(topic, key=b"tx", value=b"committed")
        finally:
            await tx.stop()
        consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                                             auto_offset_reset="earliest", enable_auto_commit=False,
                                             isolation_level="read_committed")
        await consumer.start()
        got: list[tuple[int, int, bytes, bytes]] = []
        try:
            async with asyncio.timeout(60):
                async for msg in consumer:
                    got.append((msg.partition, msg.offset, msg.key, msg.value))
                    if len(got) == 51:
                        break
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(run())
    expected = [(f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(50)] + [(b"tx", b"committed")]
    assert sorted((k, v) for _, _, k, v in got) == sorted(expected)
    # The commit covers every record read; it may also step over the transaction's
    # commit marker, which takes an offset of its own.
    for part, offset in enumerate(committed(broker, group, topic, 2)):
        read = max(o for p, o, _, _ in got if p == part) + 1
        assert read <= offset <= read + 1


def test_stop_then_restart_keeps_data_offsets_and_cluster(broker: Broker) -> None:
    topic = create_topic(broker, partitions=2)
    records = [(f"k{i}".encode(), f"durable {i}".encode()) for i in range(40)]
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "enable.idempotence": True})
    produce_all(p, topic, records)
    del p
    group = f"g-{uuid.uuid4().hex[:8]}"
    assert len(consume(broker, topic, 40, group=group)) == 40
    cluster_id = broker.admin.describe_cluster().result(timeout=30).cluster_id

    stop = broker.script("stop", timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "SIGKILL" not in stop.stdout  # a clean shutdown, within the grace period
    assert not (broker.data / "kafka.pid").exists()
    status = broker.script("status")
    assert status.returncode == 3 and "not running" in status.stdout
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=2).close()

    started = broker.start()
    assert "formatted" not in started.stdout  # the same storage, not a new cluster
    assert broker.script("status").returncode == 0
    assert broker.admin.describe_cluster().result(timeout=30).cluster_id == cluster_id
    again = consume(broker, topic, 40)
    assert sorted((m.key(), m.value()) for m in again) == sorted(records)
    assert sum(committed(broker, group, topic, 2)) == 40
