"""Schema-registry framing wired through the agent and the worker, with confluent-kafka's
in-process ``mock://`` registry: the worker's roles (built by ``build_app``, driven with
stand-in faust events) decode registry-framed records and emit registry-framed ones, a
record whose schema id the registry does not have is dead-lettered with the reason, the
agent's publisher produces registry-framed bytes, and a registry that does not answer
stops either command at start-up with one line."""

from __future__ import annotations

import asyncio
import socket
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("confluent_kafka.schema_registry", reason="pip install 'corestate[kafka]'")
faust = pytest.importorskip("faust", reason="pip install 'corestate[kafka]'")

from corestate.connectors import kafka_runner  # noqa: E402
from corestate.connectors.kafka_topics import (ConfluentSchemaRegistry,  # noqa: E402
                                               open_schema_registry, registry_config)
from corestate.errors import PermanentError, RetryableError  # noqa: E402
from corestate.schemas.codec import CURRENT, REGISTRY_MAGIC, Codec, encode, subject  # noqa: E402
from corestate.schemas.events import (DeadLetter, Event, FileBegin, SnapshotCommitted,  # noqa: E402
                                      SnapshotMarker)
from tests.conftest import run_corestate  # noqa: E402
from tests.connectors.test_worker_acks import FakeEvent, Message  # noqa: E402

T = datetime(2024, 5, 1, tzinfo=timezone.utc)
CHUNK_PARTITIONS = 2


def end_marker() -> SnapshotMarker:
    return SnapshotMarker(host="h", snapshot_id="s1", kind="end", paths=("/srv",),
                          partition_count=3, time=T)


@pytest.fixture
def registry() -> ConfluentSchemaRegistry:
    return ConfluentSchemaRegistry("mock://registry-wiring")


# -- the worker ------------------------------------------------------------------------

class Sent:
    """What the app's output topics were asked to send: (topic, key, value, partition)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.records: list[tuple[str, bytes | None, bytes, int | None]] = []

        async def send(topic: Any, *, key: bytes | None = None, value: bytes = b"",
                       partition: int | None = None, **_kw: Any) -> None:
            self.records.append((topic.get_topic_name(), key, value, partition))

        monkeypatch.setattr(faust.Topic, "send", send)


def chunk_role(monkeypatch: pytest.MonkeyPatch, codec: Codec | None) -> kafka_runner.Role:
    """The chunk role as ``build_app`` makes it (no broker: the topic layout is given)."""
    monkeypatch.setattr(kafka_runner, "_topic_layout", lambda *_a: (CHUNK_PARTITIONS, 1))

    def fail(exc: BaseException) -> None:
        raise AssertionError(f"the role failed: {exc}")

    def no_repo() -> Any:
        raise AssertionError("the chunk role opens no repository")

    _app, [role] = kafka_runner.build_app({"bootstrap.servers": "127.0.0.1:9"}, ["chunk"], no_repo,
                                          "reg", 3600.0, ExitStack(), fail, codec)
    return role


def record(value: bytes, offset: int = 0) -> FakeEvent:
    return FakeEvent(Message(value, partition=1, offset=offset, topic="reg.captures", key=b"h\x00"))


def test_a_role_decodes_registry_framing_and_emits_registry_framing(
        monkeypatch: pytest.MonkeyPatch, registry: ConfluentSchemaRegistry) -> None:
    sent = Sent(monkeypatch)
    codec = Codec(registry)
    role = chunk_role(monkeypatch, codec)
    assert role.codec is codec
    framed = Codec(registry).encode(end_marker())  # another process's codec, same registry
    assert framed[0] == REGISTRY_MAGIC
    events = [record(framed, 0), record(encode(end_marker()), 1)]  # both formats are read

    async def run() -> None:
        for e in events:
            await role.handle(e)

    asyncio.run(run())
    assert role.dead_letters == 0 and [e.acked for e in events] == [[0], [1]]
    # each end marker is forwarded to every chunks partition and to files
    assert [(t, p) for t, _k, _v, p in sent.records] == [
        ("reg.chunks", 0), ("reg.chunks", 1), ("reg.files", None)] * 2
    reader = Codec(ConfluentSchemaRegistry("mock://elsewhere"))  # ids must come from `registry`
    for _t, _k, value, _p in sent.records:
        assert value[0] == REGISTRY_MAGIC
        assert int.from_bytes(value[1:5], "big") == registry.register(
            subject("SnapshotMarker"), CURRENT["SnapshotMarker"].text)
        forwarded = Codec(registry).decode(value, SnapshotMarker)
        assert forwarded.snapshot_id == "s1" and forwarded.source_partition == 1
    with pytest.raises(Exception, match="not in the schema registry"):
        reader.decode(sent.records[0][2])


def test_an_unknown_schema_id_goes_to_the_dead_letter_topic_with_the_reason(
        monkeypatch: pytest.MonkeyPatch, registry: ConfluentSchemaRegistry) -> None:
    sent = Sent(monkeypatch)
    role = chunk_role(monkeypatch, Codec(registry))
    body = encode(end_marker())[10:]
    unknown = bytes([REGISTRY_MAGIC]) + (4242).to_bytes(4, "big") + body
    event = record(unknown, 7)
    asyncio.run(role.handle(event))
    assert role.dead_letters == 1 and event.acked == [7]  # dead-lettered, then acknowledged
    [(topic, key, value, _p)] = sent.records
    assert topic == "reg.dlq" and key == b"h\x00" and value[0] == REGISTRY_MAGIC
    letter = Codec(registry).decode(value, DeadLetter)
    assert letter.reason == "schema id 4242 is not in the schema registry"
    assert (letter.topic, letter.partition, letter.offset, letter.value) == (
        "reg.captures", 1, 7, unknown)


def test_without_a_registry_the_worker_keeps_single_object_encoding_and_dead_letters_framing(
        monkeypatch: pytest.MonkeyPatch, registry: ConfluentSchemaRegistry) -> None:
    sent = Sent(monkeypatch)
    role = chunk_role(monkeypatch, None)
    events = [record(encode(end_marker()), 0), record(Codec(registry).encode(end_marker()), 1)]

    async def run() -> None:
        for e in events:
            await role.handle(e)

    asyncio.run(run())
    assert all(v[:2] == b"\xc3\x01" for _t, _k, v, _p in sent.records)
    letter = Codec().decode(sent.records[-1][2], DeadLetter)
    assert "no schema registry is configured" in letter.reason


# -- the agent -------------------------------------------------------------------------

class FakeProducer:
    """What corestate.connectors.kafka_agent.CapturePublisher uses of confluent-kafka's Producer, over no broker."""

    def __init__(self, conf: dict[str, str]) -> None:
        self.produced: list[tuple[str, bytes, bytes | None, int]] = []
        self._pending: list[Any] = []
        PRODUCERS.append(self)

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = type("T", (), {"error": None, "partitions": {0: None, 1: None}})()
        return type("M", (), {"topics": {topic: meta}})()

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any,
                partition: int) -> None:
        self.produced.append((topic, value, key, partition))
        self._pending.append(on_delivery)

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        for cb in self._pending:
            cb(None, None)
        self._pending.clear()
        return 0

    def __len__(self) -> int:
        return len(self._pending)


PRODUCERS: list[FakeProducer] = []


def test_the_agents_publisher_produces_registry_framed_records(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, registry: ConfluentSchemaRegistry) -> None:
    import confluent_kafka

    from corestate.agents.agent import publish_once
    from corestate.connectors.kafka_agent import CapturePublisher

    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    PRODUCERS.clear()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x" * 5000)
    publisher = CapturePublisher({"bootstrap.servers": "127.0.0.1:9"}, "reg", Codec(registry))
    summary = publish_once(publisher, [str(tmp_path / "src")], host="h1")
    [producer] = PRODUCERS
    assert summary.records == len(producer.produced) > 4
    reader = Codec(registry)  # a worker's codec: resolves the ids through the registry
    decoded: list[Event] = []
    for topic, value, _key, _p in producer.produced:
        assert topic == "reg.captures" and value[0] == REGISTRY_MAGIC
        decoded.append(reader.decode(value))
    assert {type(e).__name__ for e in decoded} >= {"SnapshotMarker", "FileBegin", "DataSegment",
                                                   "FileEnd"}
    assert any(isinstance(e, FileBegin) and e.path.endswith(b"/src/f") for e in decoded)
    assert set(registry.client.get_subjects()) >= {subject("SnapshotMarker"), subject("FileBegin")}


def test_the_agents_commit_feed_reads_registry_framed_commits(
        monkeypatch: pytest.MonkeyPatch, registry: ConfluentSchemaRegistry) -> None:
    import confluent_kafka

    from corestate.connectors.kafka_agent import CommitFeed

    committed = SnapshotCommitted(snapshot_id="s1", restic_id="ab" * 32, host="h1", paths=("/srv",),
                                  time=T, tree="cd" * 32, files=1, bytes_added=1)
    values = [Codec(registry).encode(committed), encode(committed)]

    class Msg:
        def __init__(self, value: bytes) -> None:
            self._value = value

        def error(self) -> None:
            return None

        def value(self) -> bytes:
            return self._value

        def offset(self) -> int:
            return 0

    class FakeConsumer:
        def __init__(self, conf: dict[str, str]) -> None:
            self.msgs = [Msg(v) for v in values]

        def list_topics(self, topic: str, timeout: float) -> Any:
            return FakeProducer.list_topics(None, topic, timeout)  # type: ignore[arg-type]

        def assign(self, _parts: Any) -> None:
            pass

        def consume(self, num_messages: int, timeout: float) -> list[Msg]:
            out, self.msgs = self.msgs, []
            return out

    monkeypatch.setattr(confluent_kafka, "Consumer", FakeConsumer)
    feed = CommitFeed({"bootstrap.servers": "127.0.0.1:9"}, "reg", Codec(registry))
    assert feed.poll() == [committed, committed]


# -- start-up --------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_registry_settings_come_from_the_environment() -> None:
    env = {"CORESTATE_SCHEMA_REGISTRY_URL": "mock://env", "CORESTATE_SCHEMA_REGISTRY_TIMEOUT": "2.5",
           "CORESTATE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "svc:pw", "CORESTATE_KAFKA_X": "1"}
    assert registry_config(env) == {"url": "mock://env", "timeout": 2.5,
                                    "basic.auth.user.info": "svc:pw"}
    with pytest.raises(PermanentError, match="CORESTATE_SCHEMA_REGISTRY_MAX_RETRIES must be a number"):
        registry_config({"CORESTATE_SCHEMA_REGISTRY_MAX_RETRIES": "many"})
    assert open_schema_registry(None, {}) is None
    opened = open_schema_registry(None, env)
    assert opened is not None  # every current schema registered at start-up
    assert sorted(opened.client.get_subjects()) == sorted(subject(n) for n in CURRENT)
    assert open_schema_registry("mock://flag", env) is not None  # the flag wins over the URL


def test_an_unreachable_registry_fails_in_one_line_without_the_credentials() -> None:
    url = f"http://svc:secret@127.0.0.1:{closed_port()}/apis/ccompat/v7"
    with pytest.raises(RetryableError) as caught:
        open_schema_registry(url, {"CORESTATE_SCHEMA_REGISTRY_MAX_RETRIES": "0"})
    message = caught.value.message
    assert message.startswith(f"schema registry at http://127.0.0.1:{url.split(':')[3]}")
    assert "unreachable" in message and "secret" not in message and "\n" not in message


@pytest.mark.parametrize("command", [
    ("worker", "--roles", "chunk"),
    ("agent", "/", "--once"),
])
def test_agent_and_worker_stop_at_start_up_when_the_registry_does_not_answer(
        command: tuple[str, ...]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    proc = run_corestate(*command, "--bootstrap", "127.0.0.1:9", "--schema-registry", url,
                         env={"CORESTATE_SCHEMA_REGISTRY_MAX_RETRIES": "0"}, check=False,
                         timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"corestate: error: schema registry at {url}: unreachable: [Errno 111] Connection refused"]
