"""Fuzzing the Avro event decoder, in both wire framings (issue 9, section 4).

Bytes on a topic come from whoever can produce to it, or from a broken disk: whatever
they are, :mod:`corestate.schemas.codec` returns an event or raises its own error
(:class:`~corestate.schemas.errors.UndecodableEventError`, a
:class:`~corestate.errors.CoreStateError`) with a one-line reason, never another
exception, never a hang.

``TARGETS`` and ``SEEDS`` follow the convention of ``benchmarks/fuzz.py`` (the long
runs): each target decodes the bytes and must return or raise a ``CoreStateError``.

- ``single_object``: the bytes as they come (Avro single-object encoding, or anything).
- ``single_object_body``: a valid header of one schema (chosen by the first byte), then
  the rest as the Avro body: reaches the body decoder of every schema version.
- ``registry``: the bytes as a codec with a schema registry reads them.
- ``registry_body``: a registry frame of one registered schema (chosen by the first
  byte), then the rest as the body.
- ``registry_schema``: the bytes as the schema text a (hostile or broken) registry
  returns for the id in a frame.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corestate.errors import CoreStateError
from corestate.schemas import codec
from corestate.schemas.codec import Codec
from tests.schemas.samples import SAMPLES


class MemoryRegistry:
    """A schema registry in memory (the codec's ``SchemaRegistry`` protocol)."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}
        self.ids: dict[tuple[str, str], int] = {}

    def register(self, subject: str, schema: str) -> int:
        key = (subject, schema)
        if key not in self.ids:
            self.ids[key] = len(self.ids) + 1
            self.texts[self.ids[key]] = schema
        return self.ids[key]

    def lookup(self, schema_id: int) -> str:
        try:
            return self.texts[schema_id]
        except KeyError:
            raise LookupError(schema_id) from None


_VERSIONS = [v for name in sorted(codec.CURRENT) for v in codec.versions(name)]
_REGISTRY = MemoryRegistry()
_REGISTRY_IDS = [_REGISTRY.register(codec.subject(v.name), v.text) for v in _VERSIONS]
_REGISTRY_CODEC = Codec(_REGISTRY)


def single_object(data: bytes) -> None:
    codec.decode(data)


def single_object_body(data: bytes) -> None:
    if not data:
        return
    version = _VERSIONS[data[0] % len(_VERSIONS)]
    codec.decode(codec.SINGLE_OBJECT_MAGIC + version.fingerprint.to_bytes(8, "little") + data[1:])


def registry(data: bytes) -> None:
    Codec(_REGISTRY).decode(data)


def registry_body(data: bytes) -> None:
    if not data:
        return
    schema_id = _REGISTRY_IDS[data[0] % len(_REGISTRY_IDS)]
    _REGISTRY_CODEC.decode(b"\x00" + schema_id.to_bytes(4, "big") + data[1:])


class _Hostile(MemoryRegistry):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def lookup(self, schema_id: int) -> str:
        return self.text


def registry_schema(data: bytes) -> None:
    body = codec.encode(SAMPLES[3])[10:]  # a Delete's body
    Codec(_Hostile(data.decode("utf-8", "surrogateescape"))).decode(b"\x00\x00\x00\x00\x01" + body)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "single_object": single_object,
    "single_object_body": single_object_body,
    "registry": registry,
    "registry_body": registry_body,
    "registry_schema": registry_schema,
}


def _registry_frame(event: object) -> bytes:
    return _REGISTRY_CODEC.encode(event)  # type: ignore[arg-type]


def _body_seeds(frames: list[bytes], header: int, index: Callable[[bytes], int]) -> list[bytes]:
    return [bytes([index(f)]) + f[header:] for f in frames]


_SINGLE = [codec.encode(e) for e in SAMPLES]
_FRAMED = [_registry_frame(e) for e in SAMPLES]
_BY_FINGERPRINT = {v.fingerprint: i for i, v in enumerate(_VERSIONS)}

SEEDS: dict[str, list[bytes]] = {
    "single_object": _SINGLE,
    "single_object_body": _body_seeds(
        _SINGLE, 10, lambda f: _BY_FINGERPRINT[int.from_bytes(f[2:10], "little")]),
    "registry": _FRAMED,
    "registry_body": _body_seeds(
        _FRAMED, 5, lambda f: _REGISTRY_IDS.index(int.from_bytes(f[1:5], "big"))),
    "registry_schema": [v.text.encode() for v in _VERSIONS if v.name == "Delete"],
}


# -- short runs in the test suite -------------------------------------------------------

def check(target: str, data: bytes) -> None:
    """Run one target; anything but success or a CoreStateError fails the test."""
    try:
        TARGETS[target](data)
    except CoreStateError as exc:
        reason = str(exc)
        assert reason and "\n" not in reason, f"{target}: not one line: {reason!r}"


def test_seeds_decode() -> None:
    for name, seeds in SEEDS.items():
        assert seeds, name
        for seed in seeds:
            TARGETS[name](seed)  # valid input: no error at all


def _mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few bytes replaced, inserted or cut."""
    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["set", "insert", "cut"]))
            if op == "set" and pos < len(data):
                data[pos] = draw(st.integers(0, 255))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=10))
            else:
                del data[pos:pos + draw(st.integers(1, 16))]
        return bytes(data)
    return build()


_SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_SETTINGS
@given(data=st.binary(max_size=256))
def test_random_bytes(data: bytes) -> None:
    for name in TARGETS:
        check(name, data)


@_SETTINGS
@given(data=_mutated(SEEDS["single_object"]))
def test_mutated_single_object(data: bytes) -> None:
    check("single_object", data)
    check("single_object_body", bytes([data[0] if data else 0]) + data[10:])


@_SETTINGS
@given(data=_mutated(SEEDS["registry"]))
def test_mutated_registry_frame(data: bytes) -> None:
    check("registry", data)
    check("registry_body", bytes([data[4] if len(data) > 4 else 0]) + data[5:])


@_SETTINGS
@given(data=_mutated(SEEDS["registry_schema"]))
def test_mutated_registry_schema(data: bytes) -> None:
    check("registry_schema", data)


# -- regressions found by fuzzing ---------------------------------------------------------

_RECURSIVE = [
    # a record that holds itself: zero bytes per level, unbounded
    {"type": "record", "name": "Delete", "namespace": "io.corestate.v1",
     "fields": [{"name": "x", "type": "io.corestate.v1.Delete"}]},
    # through an optional field: two bytes per level of the record's own body
    {"type": "record", "name": "Delete", "namespace": "io.corestate.v1",
     "fields": [{"name": "host", "type": "string"},
                {"name": "x", "type": ["null", "io.corestate.v1.Delete"]}]},
    # through another record and a map
    {"type": "record", "name": "Delete", "namespace": "io.corestate.v1",
     "fields": [{"name": "y", "type": {"type": "record", "name": "Inner", "fields": [
         {"name": "z", "type": {"type": "map", "values": ["null", "Delete"]}}]}}]},
]


def test_a_recursive_schema_from_the_registry_is_refused_not_a_crash() -> None:
    """A registry that returns a recursive schema for an id (anyone who may register
    one under our subject): the Avro reader recursed in C until the process died
    (SIGSEGV). Run apart, so a regression fails this test instead of the whole run."""
    code = (
        "import json, sys\n"
        "from corestate.schemas.errors import UnknownSchemaError\n"
        "from tests.fuzz.test_events import registry_schema\n"
        "for schema in json.loads(sys.argv[1]):\n"
        "    body = json.dumps(schema).encode()\n"
        "    try:\n"
        "        registry_schema(body)\n"
        "    except UnknownSchemaError as exc:\n"
        "        assert 'is recursive' in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit('accepted')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(_RECURSIVE)],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"


def test_our_schemas_are_not_recursive() -> None:
    assert not any(codec._recursive(v.parsed) for v in _VERSIONS)
