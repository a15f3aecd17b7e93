"""The codec: round trips of every event in both wire formats, the fingerprint against the
Avro project's published vectors, and garbage turning into one specific error."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from datetime import datetime

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from corestate.errors import IntegrityError
from corestate.schemas import codec, events
from corestate.schemas.codec import Codec, decode, encode
from corestate.schemas.errors import (InvalidEventError, UndecodableEventError,
                                      UnexpectedEventError, UnknownSchemaError)
from corestate.schemas.events import Chunk, DataSegment, SnapshotCommitted
from tests.schemas.samples import SAMPLES, T

ids = [type(e).__name__ for e in SAMPLES]

# Apache Avro, share/test/data/schema-tests.txt: (case, input, canonical form, fingerprint
# as the signed long the file gives).
AVRO_VECTORS = [
    ("000", '"null"', '"null"', 7195948357588979594),
    ("014", '"string"', '"string"', -8142146995180207161),
    ("018", '[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    ("020", '{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
     '{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    # Case 026 has "default":"true" (a string) for a boolean, which fastavro rightly refuses;
    # the canonical form drops defaults, so a JSON true changes neither it nor the fingerprint.
    ("026", '{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":true},'
            '{"order":"descending","name":"f2","doc":"Hello","type":"int"}], "type":"record", "name":"foo"}',
     '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}',
     -4860222112080293046),
    ("028", '{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}',
     '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}', -4448647247586288245),
    ("030", '{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
     '{"name":"x.y.z.foo","type":"fixed","size":32}', -3064184465700546786),
    ("033", '{"name":"PigValue","type":"record", "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
     '{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
     -1759257747318642341),
]


@pytest.mark.parametrize("case,given,canonical,signed", AVRO_VECTORS, ids=[v[0] for v in AVRO_VECTORS])
def test_fingerprint_matches_the_avro_projects_vectors(case: str, given: str, canonical: str,
                                                       signed: int) -> None:
    assert codec.canonical_form(json.loads(given)) == canonical
    assert codec.rabin64(canonical.encode()) == signed % (1 << 64)
    assert codec.fingerprint(json.loads(given)) == signed % (1 << 64)


def test_every_schema_fingerprint_agrees_with_fastavro_in_header_byte_order() -> None:
    for name in codec.CURRENT:
        for v in codec.versions(name):
            raw = json.loads(v.text)
            header = v.fingerprint.to_bytes(8, "little").hex()
            assert fastavro_fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO") == header


@pytest.mark.parametrize("event", SAMPLES, ids=ids)
def test_single_object_round_trip(event: events.Event) -> None:
    data = encode(event)
    version = codec.CURRENT[type(event).__name__]
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == version.fingerprint.to_bytes(8, "little")
    back = decode(data)
    assert back == event and type(back) is type(event)
    assert decode(data, type(event)) == event
    # The body is plain Avro binary of the published schema: fastavro reads it from the
    # .avsc text alone.
    plain = schemaless_reader(io.BytesIO(data[10:]), parse_schema(json.loads(version.text)), None)
    assert set(plain) == {f.name for f in dataclasses.fields(event)}


def test_decode_checks_the_expected_type_before_the_body() -> None:
    data = encode(SAMPLES[0])
    with pytest.raises(UnexpectedEventError, match="expected SnapshotCommitted, got FileBegin"):
        decode(data, SnapshotCommitted)
    # The type is known from the header: a broken body is not even read.
    with pytest.raises(UnexpectedEventError):
        decode(data[:10] + b"\xff" * 5, SnapshotCommitted)


def _one_line(exc: UndecodableEventError) -> str:
    assert isinstance(exc, IntegrityError)
    assert exc.reason and "\n" not in exc.reason and len(exc.reason) < 400
    return exc.reason


GOOD = encode(SAMPLES[2])  # a FileEnd


@pytest.mark.parametrize("data,cls,reason", [
    (b"", UndecodableEventError, "empty"),
    (b"\xc3\x01\x00", UndecodableEventError, "shorter than the 10-byte"),
    (b"hello world", UndecodableEventError, "unknown wire format: starts with 6865"),
    (b'{"json": true}', UndecodableEventError, "unknown wire format"),
    (b"\xc3\x01" + bytes(8) + b"\x00", UnknownSchemaError, "unknown schema fingerprint 0000000000000000"),
    (GOOD[:-3], UndecodableEventError, "FileEnd body does not decode"),
    (GOOD + b"\x00\x01", UndecodableEventError, "2 bytes left over"),
    (b"\x00\x00\x00\x00\x07" + GOOD[10:], UndecodableEventError, "no schema registry is configured"),
    (b"\x00\x01", UndecodableEventError, "shorter than the 5-byte"),
    # a path length of -1: the varint for -1 where FileEnd's first string (host) starts
    (GOOD[:10] + b"\x01", UndecodableEventError, "FileEnd body does not decode"),
], ids=["empty", "short-header", "text", "json", "unknown-fingerprint", "truncated", "trailing",
        "registry-without-registry", "short-registry-header", "negative-length"])
def test_garbage_raises_one_specific_error_with_a_one_line_reason(data: bytes, cls: type, reason: str) -> None:
    with pytest.raises(cls) as exc:
        decode(data)
    assert reason in _one_line(exc.value)
    assert str(exc.value).startswith("undecodable event: ")


def test_random_corruption_never_escapes_as_another_exception() -> None:
    rng = random.Random(20240501)
    originals = [encode(e) for e in SAMPLES if not isinstance(e, DataSegment)]
    outcomes = {"decoded": 0, "rejected": 0}
    for _ in range(3000):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(2, len(data))  # keep the magic, so bodies get exercised
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos:]
                data += b"\x00"
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        try:
            decode(bytes(data))
            outcomes["decoded"] += 1
        except UndecodableEventError as exc:
            _one_line(exc)
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 1000


def test_a_data_segment_over_one_mib_on_the_wire_is_rejected() -> None:
    version = codec.CURRENT["DataSegment"]
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + version.fingerprint.to_bytes(8, "little"))
    schemaless_writer(buf, version.parsed, {"host": "h", "snapshot_id": "s", "path": b"/p", "seq": 0,
                                            "offset": 0, "data": bytes(events.MAX_SEGMENT + 1)})
    with pytest.raises(UndecodableEventError, match="at most 1048576"):
        decode(buf.getvalue())


def test_invalid_events_are_refused_when_encoding() -> None:
    with pytest.raises(InvalidEventError, match="blob_id"):
        encode(Chunk(blob_id=b"short", snapshot_id="s", data=b"x", source_partition=0))
    naive = dataclasses.replace(SAMPLES[9], time=datetime(2024, 1, 1))
    with pytest.raises(InvalidEventError, match="no time zone"):
        encode(naive)
    with pytest.raises(InvalidEventError, match="not a CoreState event"):
        encode("FileBegin")  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="kind"):
        encode(dataclasses.replace(SAMPLES[5], kind="middle"))  # type: ignore[arg-type]


# -- schema-registry framing -----------------------------------------------------------

ConfluentSchemaRegistry = pytest.importorskip(
    "corestate.connectors.kafka_topics", reason="pip install 'corestate[kafka]'").ConfluentSchemaRegistry


@pytest.fixture
def registry() -> ConfluentSchemaRegistry:
    pytest.importorskip("confluent_kafka.schema_registry")
    return ConfluentSchemaRegistry("mock://corestate-tests")


@pytest.mark.parametrize("event", SAMPLES, ids=ids)
def test_registry_framing_round_trip(registry: ConfluentSchemaRegistry, event: events.Event) -> None:
    data = Codec(registry).encode(event)
    name = type(event).__name__
    registered = registry.client.get_latest_version(f"io.corestate.v1.{name}")
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == registered.schema_id
    assert json.loads(registered.schema.schema_str) == json.loads(codec.CURRENT[name].text)
    # A second codec knows nothing yet: it looks the id up in the registry.
    assert Codec(registry).decode(data) == event
    # The single-object bytes of the same event carry the same body.
    assert data[5:] == encode(event)[10:]


def test_registry_codec_reads_both_formats_and_the_plain_codec_refuses_registry_frames(
        registry: ConfluentSchemaRegistry) -> None:
    c = Codec(registry)
    event = SAMPLES[9]
    assert c.decode(encode(event)) == event
    framed = c.encode(event)
    with pytest.raises(UndecodableEventError, match="no schema registry is configured"):
        decode(framed)


def test_registry_unknown_and_foreign_ids(registry: ConfluentSchemaRegistry) -> None:
    from confluent_kafka.schema_registry import Schema

    c = Codec(registry)
    body = encode(SAMPLES[9])[10:]
    with pytest.raises(UnknownSchemaError, match="schema id 4242 is not in the schema registry"):
        c.decode(b"\x00" + (4242).to_bytes(4, "big") + body)
    foreign = registry.client.register_schema("other-value", Schema(json.dumps(
        {"type": "record", "name": "Order", "namespace": "com.shop", "fields": [{"name": "id", "type": "long"}]}),
        "AVRO"))
    with pytest.raises(UnknownSchemaError, match=f"schema id {foreign} is not a CoreState event"):
        c.decode(b"\x00" + foreign.to_bytes(4, "big") + b"\x02")


def test_registry_framed_data_of_an_old_schema_version_decodes_into_the_current_one(
        registry: ConfluentSchemaRegistry) -> None:
    v1 = codec.versions("SnapshotCommitted")[0]
    assert v1.version == 1 and "tags" not in {f["name"] for f in json.loads(v1.text)["fields"]}
    old_id = registry.register("io.corestate.v1.SnapshotCommitted", v1.text)
    buf = io.BytesIO()
    buf.write(b"\x00" + old_id.to_bytes(4, "big"))
    schemaless_writer(buf, v1.parsed, {"snapshot_id": "r", "restic_id": "ab" * 32, "host": "h",
                                       "paths": ["/a"], "time": T, "tree": "cd" * 32, "files": 1,
                                       "bytes_added": 2})
    got = Codec(registry).decode(buf.getvalue(), SnapshotCommitted)
    assert got == SnapshotCommitted("r", "ab" * 32, "h", ("/a",), T, "cd" * 32, 1, 2, tags=())
