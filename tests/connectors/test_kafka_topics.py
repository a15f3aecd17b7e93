"""The topic contract: specs, keys and client config in memory; creating and checking the
topics, and an independent consumer reading a committed snapshot, on a real broker.

The broker is the one deploy/kafka/broker.sh runs, started for this module on free ports
with its own data directory (as tests/deploy/test_kafka_broker.py does). Each test uses its
own topic prefix, so tests do not see each other's topics.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_broker import Broker, running_broker

from corestate.connectors import kafka_topics as kt
from corestate.errors import PermanentError
from corestate.schemas import codec
from corestate.schemas.events import (MAX_CHUNK, MAX_SEGMENT, Chunk, DataSegment, DeadLetter,
                                      SnapshotCommitted)
from tests.schemas.samples import SAMPLES, T

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "kafka" / "broker.sh"
CLI = "import corestate.cli.topics; from corestate.cli.main import main; main()"
BATCH_OVERHEAD = 61 + 21  # record batch header + one record's framing (Kafka message format v2)


def corestate_topics(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`corestate topics ...` in a fresh interpreter (the command registers itself on import)."""
    return subprocess.run([sys.executable, "-c", CLI, "topics", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, **(env or {})})


# -- in memory -------------------------------------------------------------------------

def test_topic_names_policies_and_partitions() -> None:
    names = [t.name("acme") for t in kt.TOPICS]
    assert names == ["acme.captures", "acme.chunks", "acme.files", "acme.stored", "acme.snapshots",
                     "acme.alerts", "acme.dlq"]
    policies = {t.suffix: t.topic_config()["cleanup.policy"] for t in kt.TOPICS}
    assert policies.pop("snapshots") == "compact" and set(policies.values()) == {"delete"}
    assert [t.suffix for t in kt.TOPICS if t.scalable] == ["captures", "chunks", "files", "stored"]


def test_max_message_bytes_fit_the_largest_records_with_headroom() -> None:
    longest_path = b"/" + b"p" * 4095
    segment = codec.encode(DataSegment(host="h" * 255, snapshot_id="s" * 64, path=longest_path, seq=1 << 40,
                                       offset=1 << 40, data=os.urandom(MAX_SEGMENT)))
    chunk = codec.encode(Chunk(blob_id=bytes(32), snapshot_id="s" * 64, data=os.urandom(MAX_CHUNK),
                               source_partition=1))
    key = b"h" * 255 + b"\x00" + longest_path
    dead = codec.encode(DeadLetter(topic="corestate.chunks", partition=1, offset=1, reason="r" * 1000,
                                   time=T, key=key, value=chunk))
    for suffix, record in (("captures", len(segment) + len(key)), ("chunks", len(chunk) + 32),
                           ("dlq", len(dead) + len(key))):
        limit = kt.spec(suffix).max_message_bytes
        assert record + BATCH_OVERHEAD < limit, suffix
    # ... and not wildly more: 1 MiB segments need a limit near 1 MiB, not 8.
    assert kt.spec("captures").max_message_bytes < MAX_SEGMENT + 128 * 1024


def test_keys_follow_the_contract() -> None:
    keys = {type(e).__name__: kt.key_for(e) for e in SAMPLES}
    assert keys["FileBegin"] == b"h1\x00/srv/caf\xe9" == keys["DataSegment"]
    assert keys["Rename"] == b"h1\x00/srv/new"
    assert keys["SnapshotMarker"] == b"h1\x00"
    assert keys["Chunk"] == SAMPLES[6].blob_id  # type: ignore[union-attr]
    assert keys["FileManifest"] == keys["BarrierAck"] == keys["SnapshotCommitted"] == b"run-1"
    assert keys["Alert"] == b"h1"
    assert keys["DeadLetter"] == b"h1\x00/srv/x"


def test_client_config_from_file_and_environment(tmp_path: Path) -> None:
    props = tmp_path / "kafka.properties"
    props.write_text("# TLS to the brokers\n"
                     "security.protocol = SASL_SSL\n"
                     "! also a comment\n"
                     "sasl.mechanism: SCRAM-SHA-512\n"
                     "sasl.username=svc\n"
                     "ssl.ca.location=/etc/ssl/\\\n"
                     "    ca.pem\n"
                     "bootstrap.servers=file:9092\n")
    env = {"CORESTATE_KAFKA_SASL_USERNAME": "from-env", "CORESTATE_KAFKA_CLIENT_ID": "cs",
           "CORESTATE_KAFKA_": "ignored", "OTHER": "x"}
    cfg = kt.client_config(str(props), env)
    assert cfg == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                   "sasl.username": "from-env", "ssl.ca.location": "/etc/ssl/ca.pem",
                   "bootstrap.servers": "file:9092", "client.id": "cs"}
    assert kt.client_config(str(props), env, bootstrap="flag:9092")["bootstrap.servers"] == "flag:9092"
    with pytest.raises(PermanentError, match="no Kafka bootstrap servers"):
        kt.client_config(None, {})
    props.write_text("just-a-word\n")
    with pytest.raises(PermanentError, match=r"kafka.properties:1: expected key=value"):
        kt.client_config(str(props), {})
    with pytest.raises(PermanentError, match="cannot read Kafka config"):
        kt.client_config(str(tmp_path / "missing"), {})


def test_topic_overrides_cannot_break_the_contract() -> None:
    with pytest.raises(PermanentError, match="cleanup.policy"):
        kt.check_topics("127.0.0.1:1", config={"cleanup.policy": "delete"})
    with pytest.raises(PermanentError, match="below the 8454144 that chunks records need"):
        kt.check_topics("127.0.0.1:1", config={"max.message.bytes": str(2 << 20)})


def test_cli_passes_librdkafka_settings_through(tmp_path: Path) -> None:
    pytest.importorskip("confluent_kafka", reason="pip install 'corestate[kafka]'")
    # librdkafka rejects an unknown property by name: proof the setting reached the client.
    proc = corestate_topics("check", "--bootstrap", "127.0.0.1:1",
                            env={"CORESTATE_KAFKA_NO_SUCH_PROPERTY": "1"})
    assert proc.returncode == 1
    assert 'invalid Kafka client setting: No such configuration property: "no.such.property"' in proc.stderr
    props = tmp_path / "client.properties"
    props.write_text("security.protocol=carrier-pigeon\n")
    proc = corestate_topics("check", "--bootstrap", "127.0.0.1:1", "--kafka-config", str(props))
    assert proc.returncode == 1 and '"carrier-pigeon"' in proc.stderr and "security.protocol" in proc.stderr
    # The environment wins over the file.
    proc = corestate_topics("check", "--bootstrap", "127.0.0.1:1", "--kafka-config", str(props), "--timeout", "2",
                            env={"CORESTATE_KAFKA_SECURITY_PROTOCOL": "plaintext"})
    assert proc.returncode == 1 and "cannot reach Kafka at 127.0.0.1:1" in proc.stderr


# -- on a real broker ------------------------------------------------------------------

@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    pytest.importorskip("confluent_kafka", reason="pip install 'corestate[kafka]'")
    yield from running_broker(tmp_path_factory)


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def broker_view(b: Broker, names: list[str]) -> dict[str, tuple[int, str, str]]:
    """(partitions, cleanup.policy, max.message.bytes) per topic, asked of the broker directly."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    md = admin.list_topics(timeout=30)
    out = {}
    for res, fut in admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names]).items():
        cfg = fut.result(timeout=30)
        out[res.name] = (len(md.topics[res.name].partitions), cfg["cleanup.policy"].value,
                         cfg["max.message.bytes"].value)
    return out


@pytest.mark.kafka
def test_create_is_idempotent_and_sets_the_contracts_policies(broker: Broker) -> None:
    p = prefix()
    before = kt.check_topics(broker.bootstrap, prefix=p)
    assert [s.state for s in before] == ["missing"] * 7
    first = kt.create_topics(broker.bootstrap, prefix=p)
    assert [(s.name, s.state) for s in first] == [(t.name(p), "created") for t in kt.TOPICS]
    second = kt.create_topics(broker.bootstrap, prefix=p)
    assert [s.state for s in second] == ["ok"] * 7 and all(s.problems == () for s in second)
    view = broker_view(broker, [t.name(p) for t in kt.TOPICS])
    assert view[f"{p}.snapshots"] == (1, "compact", str(kt.spec("snapshots").max_message_bytes))
    assert view[f"{p}.captures"] == (6, "delete", str(MAX_SEGMENT + 64 * 1024))
    assert view[f"{p}.chunks"] == (6, "delete", str(MAX_CHUNK + 64 * 1024))
    assert [view[t.name(p)][0] for t in kt.TOPICS] == [6, 6, 6, 6, 1, 1, 1]
    assert all(s.replication == 1 for s in second)  # one broker: the default replication is 1
    assert kt.check_topics(broker.bootstrap, partitions=6, replication=1, prefix=p) == second


@pytest.mark.kafka
def test_check_reports_a_wrong_partition_count_precisely(broker: Broker) -> None:
    p = prefix()
    kt.create_topics(broker.bootstrap, partitions=2, prefix=p)
    statuses = {s.name: s for s in kt.check_topics(broker.bootstrap, partitions=3, prefix=p)}
    for suffix in ("captures", "chunks", "files", "stored"):
        name = f"{p}.{suffix}"
        assert statuses[name].state == "mismatch"
        assert statuses[name].problems == (f"{name} has 2 partitions, expected 3",)
    assert all(statuses[f"{p}.{s}"].state == "ok" for s in ("snapshots", "alerts", "dlq"))
    replication = {s.name: s for s in kt.check_topics(broker.bootstrap, replication=3, prefix=p)}
    assert replication[f"{p}.dlq"].problems == (f"{p}.dlq partitions [0] do not have replication factor 3",)


@pytest.mark.kafka
def test_create_checks_existing_topics_and_never_alters_them(broker: Broker) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    p = prefix()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    pre = [NewTopic(f"{p}.snapshots", num_partitions=1, config={"cleanup.policy": "delete"}),
           NewTopic(f"{p}.stored", num_partitions=4),
           NewTopic(f"{p}.chunks", num_partitions=6, config={"max.message.bytes": "1000000"})]
    for fut in admin.create_topics(pre).values():
        fut.result(timeout=60)
    statuses = {s.name: s for s in kt.create_topics(broker.bootstrap, prefix=p)}
    assert statuses[f"{p}.snapshots"].problems == (f"{p}.snapshots has cleanup.policy=delete, expected compact",)
    assert statuses[f"{p}.stored"].problems == (
        f"{p}.stored has 4 partitions but {p}.files has 6: they must be equal (both are partitioned by snapshot id)",)
    assert statuses[f"{p}.chunks"].problems == (
        f"{p}.chunks has max.message.bytes=1000000, needs at least {MAX_CHUNK + 64 * 1024}",)
    # files is new, and named too: a co-partitioning mismatch is a problem of both topics.
    assert statuses[f"{p}.files"].problems == (
        f"{p}.files has 6 partitions but {p}.stored has 4: they must be equal (both are partitioned by snapshot id)",)
    assert statuses[f"{p}.alerts"].state == "created" and statuses[f"{p}.snapshots"].state == "mismatch"
    view = broker_view(broker, [f"{p}.snapshots", f"{p}.stored"])
    assert view[f"{p}.snapshots"][1] == "delete" and view[f"{p}.stored"][0] == 4  # untouched


@pytest.mark.kafka
def test_cli_create_then_check(broker: Broker) -> None:
    p = prefix()
    created = corestate_topics("create", "--bootstrap", broker.bootstrap, "--prefix", p, "--partitions", "2",
                               "--topic-config", "retention.ms=3600000", "--json")
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    assert [(d["name"], d["state"], d["partitions"]) for d in doc] == [
        (t.name(p), "created", 2 if t.scalable else 1) for t in kt.TOPICS]
    assert all(d["config"]["retention.ms"] == "3600000" for d in doc)
    ok = corestate_topics("check", "--prefix", p, "--partitions", "2",
                          env={"CORESTATE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap})
    assert ok.returncode == 0 and ok.stdout.count(" ok ") == 7, ok.stdout + ok.stderr
    bad = corestate_topics("check", "--bootstrap", broker.bootstrap, "--prefix", p, "--partitions", "3")
    assert bad.returncode == 1
    assert f"{p}.chunks has 2 partitions, expected 3" in bad.stdout
    assert "4 of 7 topics do not match the contract" in bad.stderr


@pytest.mark.kafka
def test_an_independent_consumer_decodes_a_committed_snapshot_with_only_the_avsc(broker: Broker) -> None:
    from confluent_kafka import Consumer, Producer
    from fastavro import parse_schema, schemaless_reader
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    p = prefix()
    kt.create_topics(broker.bootstrap, prefix=p)
    event = SnapshotCommitted(snapshot_id="run-42", restic_id="0123456789abcdef" * 4, host="db-1",
                              paths=("/var/lib/db", "/etc"), time=T, tree="fedcba9876543210" * 4,
                              files=1234, bytes_added=56 << 20, tags=("hourly", "db"))
    producer = Producer({"bootstrap.servers": broker.bootstrap, **kt.PRODUCER_DEFAULTS})
    producer.produce(f"{p}.snapshots", key=kt.key_for(event), value=codec.encode(event))
    assert producer.flush(60) == 0

    # What a consumer written elsewhere does: plain client, plain fastavro, the published file.
    raw = json.loads((ROOT / "corestate" / "schemas" / "SnapshotCommitted.avsc").read_text())
    schema = parse_schema(raw)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"g-{p}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([f"{p}.snapshots"])
    msg = None
    deadline = time.monotonic() + 60
    while msg is None and time.monotonic() < deadline:
        got = consumer.poll(1.0)
        if got is not None and got.error() is None:
            msg = got
    consumer.close()
    assert msg is not None
    value = msg.value()
    assert value[:2] == b"\xc3\x01"
    assert value[2:10].hex() == fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO")
    record = schemaless_reader(io.BytesIO(value[10:]), schema, None)
    assert msg.key() == b"run-42"
    assert record == {"snapshot_id": "run-42", "restic_id": "0123456789abcdef" * 4, "host": "db-1",
                      "paths": ["/var/lib/db", "/etc"], "time": T, "tree": "fedcba9876543210" * 4,
                      "files": 1234, "bytes_added": 56 << 20, "tags": ["hourly", "db"]}
