"""The one codec: CoreState events to bytes and back, in Avro (fastavro).

Terms:

- a *schema* is one ``<Name>.avsc`` beside this module (the *current* version of record
  ``io.corestate.v1.<Name>``); its earlier versions are ``history/<Name>.v<N>.avsc``,
  ``N`` from 1, and the current one is version ``N + 1`` (version 1 if it has no history);
- the *canonical form* is Avro's Parsing Canonical Form of a schema (docs, defaults,
  aliases and logical types dropped), and its *fingerprint* the CRC-64-AVRO (Rabin)
  fingerprint of the canonical form's UTF-8 bytes, as the Avro specification defines it;
- the *writer schema* is the version an event was encoded with, the *reader schema* the
  current version; Avro schema resolution turns one into the other (fields added with
  a default get that default), so data written by any earlier version still decodes.

Two wire formats; :func:`decode` tells them apart by the first byte:

1. *Single-object encoding* (the default; Avro specification): ``C3 01``, the writer
   schema's 8-byte fingerprint in little-endian order, then the Avro binary body. The
   fingerprint is looked up among every version of every schema, current and history.
   Anyone with the published ``.avsc`` files can decode it; no service is needed.
2. *Schema-registry framing* (Confluent's wire format), used for encoding when the codec
   has a :class:`SchemaRegistry`: byte ``00``, the writer schema's registry id as 4 bytes
   big-endian, then the Avro binary body. Subjects follow the record-name strategy
   (``io.corestate.v1.<Name>``), since one topic carries several event types.

Bytes that are not an event raise :class:`~corestate.schemas.errors.UndecodableEventError`
(never retried) whose ``reason`` is one line, for the dead-letter topic. A writer schema
from the registry that is not one of ours is used only if it is not recursive (none of
ours is; the Avro reader would recurse in C as deep as the bytes nest it, and crash).

The fingerprint, checked against the Avro project's published test vectors
(``share/test/data/schema-tests.txt``, which gives them as signed longs):

>>> rabin64(b'"null"')                 # case 000
7195948357588979594
>>> rabin64(b'"string"') - (1 << 64)   # case 014
-8142146995180207161
>>> fingerprint({"type": "record", "name": "foo", "fields": [{"name": "f1", "type": "boolean"}]})
7843277075252814651

An event and its wire form:

>>> from datetime import datetime, timezone
>>> from corestate.schemas.events import SnapshotCommitted
>>> event = SnapshotCommitted(snapshot_id="run-1", restic_id="ab" * 32, host="h1",
...     paths=("/srv",), time=datetime(2024, 5, 1, tzinfo=timezone.utc), tree="cd" * 32,
...     files=3, bytes_added=4096, tags=("nightly",))
>>> data = encode(event)
>>> data[:2].hex(), data[2:10] == CURRENT["SnapshotCommitted"].fingerprint.to_bytes(8, "little")
('c301', True)
>>> decode(data, SnapshotCommitted) == event
True
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast, overload

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from corestate.schemas.errors import (InvalidEventError, UndecodableEventError,
                                      UnexpectedEventError, UnknownSchemaError)
from corestate.schemas.events import EVENT_TYPES, NESTED_TYPES, Event

__all__ = ["CURRENT", "NAMESPACE", "REGISTRY_MAGIC", "SCHEMA_DIR", "SINGLE_OBJECT_MAGIC",
           "Codec", "SchemaRegistry", "SchemaVersion", "decode", "encode", "fingerprint",
           "rabin64", "subject", "versions"]

SCHEMA_DIR = Path(__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"
NAMESPACE = "io.corestate.v1"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
REGISTRY_MAGIC = 0
_SINGLE_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_REGISTRY_HEADER = 5

# -- fingerprints ----------------------------------------------------------------------

_EMPTY64 = 0xC15D213AA4D7A795  # the Avro specification's "EMPTY" constant


def _rabin_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return tuple(table)


_RABIN_TABLE = _rabin_table()


def rabin64(data: bytes) -> int:
    """CRC-64-AVRO of ``data`` as an unsigned 64-bit integer (the Avro specification's
    algorithm, written out here so the codec does not rest on one library's reading)."""
    fp = _EMPTY64
    table = _RABIN_TABLE
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def canonical_form(schema: object) -> str:
    """Avro's Parsing Canonical Form of a schema given as parsed JSON."""
    return to_parsing_canonical_form(cast(Any, schema))


def fingerprint(schema: object) -> int:
    """The CRC-64-AVRO fingerprint of a schema's canonical form (unsigned)."""
    return rabin64(canonical_form(schema).encode("utf-8"))


# -- the schemas and their versions ----------------------------------------------------

@dataclass(frozen=True)
class SchemaVersion:
    """One version of one record schema, as read from its ``.avsc`` file."""

    name: str  # short record name, e.g. "SnapshotCommitted"
    version: int
    path: Path
    text: str  # the file as published
    parsed: dict[str, Any]  # fastavro's parsed form
    fingerprint: int

    @property
    def full_name(self) -> str:
        return f"{NAMESPACE}.{self.name}"


_HISTORY_FILE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


def _load(path: Path, name: str, version: int) -> SchemaVersion:
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text)
    if raw.get("type") != "record" or raw.get("name") != name or raw.get("namespace") != NAMESPACE:
        raise RuntimeError(f"{path}: expected record {NAMESPACE}.{name}")
    return SchemaVersion(name, version, path, text, cast(dict[str, Any], parse_schema(raw)),
                         fingerprint(raw))


def _load_all() -> dict[str, list[SchemaVersion]]:
    history: dict[str, dict[int, Path]] = {}
    if HISTORY_DIR.is_dir():
        for p in HISTORY_DIR.iterdir():
            m = _HISTORY_FILE.match(p.name)
            if m:
                history.setdefault(m["name"], {})[int(m["version"])] = p
    out: dict[str, list[SchemaVersion]] = {}
    for cls in EVENT_TYPES:
        name = cls.__name__
        old = history.pop(name, {})
        if sorted(old) != list(range(1, len(old) + 1)):
            raise RuntimeError(f"{HISTORY_DIR}: versions of {name} must run 1..N without gaps, "
                               f"found {sorted(old)}")
        out[name] = [_load(old[v], name, v) for v in sorted(old)]
        out[name].append(_load(SCHEMA_DIR / f"{name}.avsc", name, len(old) + 1))
    if history:
        raise RuntimeError(f"{HISTORY_DIR}: history for unknown schemas {sorted(history)}")
    return out


_VERSIONS = _load_all()

CURRENT: Mapping[str, SchemaVersion] = {name: vs[-1] for name, vs in _VERSIONS.items()}
"""The current version of every event schema, by short record name."""

_BY_FINGERPRINT: dict[int, SchemaVersion] = {}
for _vs in _VERSIONS.values():
    for _v in _vs:
        _other = _BY_FINGERPRINT.setdefault(_v.fingerprint, _v)
        if _other is not _v and _other.name != _v.name:
            raise RuntimeError(f"fingerprint collision: {_other.path} and {_v.path}")


def versions(name: str) -> list[SchemaVersion]:
    """Every version of event schema ``name``, oldest first; the last is the current one."""
    return list(_VERSIONS[name])


def subject(name: str) -> str:
    """The schema-registry subject of event schema ``name`` (record-name strategy)."""
    return f"{NAMESPACE}.{name}"


def _recursive(parsed: dict[str, Any]) -> bool:
    """Whether a parsed schema's named types refer to themselves, directly or not.

    No CoreState event schema is recursive. A recursive writer schema (which only a
    schema registry can supply) lets a few bytes per level nest records as deep as the
    record is long, and the Avro reader recurses in C: the process would crash instead
    of rejecting the record."""
    named = cast(dict[str, Any], parsed.get("__named_schemas", {}))

    def refs(schema: Any, out: set[str], top: bool) -> set[str]:
        if isinstance(schema, str):
            if schema in named:
                out.add(schema)
        elif isinstance(schema, list):
            for branch in schema:
                refs(branch, out, False)
        elif isinstance(schema, dict):
            if "name" in schema and not top:
                out.add(str(schema["name"]))  # a nested definition: a node of its own
            elif schema.get("type") in ("record", "error"):
                for f in schema.get("fields", ()):
                    refs(f.get("type"), out, False)
            elif schema.get("type") == "array":
                refs(schema.get("items"), out, False)
            elif schema.get("type") == "map":
                refs(schema.get("values"), out, False)
            elif isinstance(schema.get("type"), (dict, list)):
                refs(schema["type"], out, False)
        return out

    edges = {name: refs(defn, set(), True) for name, defn in named.items()}
    done: set[str] = set()
    for start in edges:  # depth-first, iteratively: a gray node met again is a cycle
        if start in done:
            continue
        path, stack = {start}, [(start, iter(edges[start]))]
        while stack:
            node, todo = stack[-1]
            nxt = next(todo, None)
            if nxt is None:
                stack.pop()
                path.discard(node)
                done.add(node)
            elif nxt in path:
                return True
            elif nxt not in done:
                path.add(nxt)
                stack.append((nxt, iter(edges.get(nxt, ()))))
    return False


# -- events <-> fastavro's dicts -------------------------------------------------------

_Conv = Callable[[Any], Any]
_CLASSES: dict[str, type[Any]] = {cls.__name__: cls for cls in (*EVENT_TYPES, *NESTED_TYPES)}


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def _as_bytes(value: Any) -> Any:
    # fastavro fills a missing bytes field from its JSON default as str (code points
    # 0-255 stand for bytes, per the Avro specification).
    return value.encode("latin-1") if isinstance(value, str) else value


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise InvalidEventError(f"time {value.isoformat()} has no time zone; use an aware "
                                f"datetime (UTC)")
    return value


def _reader_conv(schema: Any, named: dict[str, Any]) -> _Conv | None:
    """A function from fastavro's decoded value to the event's value (None: as is)."""
    if isinstance(schema, str):
        if schema in ("bytes",):
            return _as_bytes
        if schema in named:
            return _reader_conv(named[schema], named)
        return None
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if len(branches) != 1:
            raise RuntimeError(f"unions other than [null, X] are not mapped: {schema}")
        inner = _reader_conv(branches[0], named)
        if inner is None:
            return None
        return lambda v: None if v is None else inner(v)
    kind = schema["type"]
    if kind == "record":
        cls = _CLASSES[_short(schema["name"])]
        fields = [(f["name"], _reader_conv(f["type"], named)) for f in schema["fields"]]

        def record(d: dict[str, Any]) -> Any:
            return cls(*[d[n] if c is None else c(d[n]) for n, c in fields])
        return record
    if kind == "array":
        item = _reader_conv(schema["items"], named)
        if item is None:
            return tuple
        return lambda v: tuple(map(item, v))
    if kind == "fixed":
        return _as_bytes
    if kind in ("enum", "map"):
        return None
    return _reader_conv(kind, named)  # a primitive with a logical type


def _writer_conv(schema: Any, named: dict[str, Any]) -> _Conv | None:
    """A function from the event's value to what fastavro writes (None: as is)."""
    if isinstance(schema, str):
        return _writer_conv(named[schema], named) if schema in named else None
    if isinstance(schema, list):
        inner = _writer_conv([b for b in schema if b != "null"][0], named)
        if inner is None:
            return None
        return lambda v: None if v is None else inner(v)
    kind = schema["type"]
    if kind == "record":
        fields = [(f["name"], _writer_conv(f["type"], named)) for f in schema["fields"]]

        def record(obj: Any) -> dict[str, Any]:
            return {n: getattr(obj, n) if c is None else c(getattr(obj, n)) for n, c in fields}
        return record
    if kind == "array":
        item = _writer_conv(schema["items"], named)
        if item is None:
            return list
        return lambda v: [item(x) for x in v]
    if schema.get("logicalType") == "timestamp-micros":
        return _aware
    return None


def _record_conv(version: SchemaVersion, make: Callable[[Any, dict[str, Any]], _Conv | None]) -> _Conv:
    named = cast(dict[str, Any], version.parsed.get("__named_schemas", {}))
    conv = make(version.parsed, named)
    assert conv is not None  # a record always converts
    return conv


_FROM_AVRO = {name: _record_conv(v, _reader_conv) for name, v in CURRENT.items()}
_TO_AVRO = {name: _record_conv(v, _writer_conv) for name, v in CURRENT.items()}


# -- the codec -------------------------------------------------------------------------

class SchemaRegistry(Protocol):
    """A Confluent-compatible schema registry, reduced to the two calls the codec makes.

    ``corestate.connectors.kafka_topics.ConfluentSchemaRegistry`` implements it with
    confluent-kafka's ``SchemaRegistryClient`` (``mock://`` URLs work without a service).
    """

    def register(self, subject: str, schema: str) -> int:
        """The id of ``schema`` (Avro JSON) under ``subject``, registering it if new."""
        ...

    def lookup(self, schema_id: int) -> str:
        """The Avro JSON of schema ``schema_id``; raises ``LookupError`` if there is none."""
        ...


E = TypeVar("E", bound=Event)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


class Codec:
    """Encodes and decodes events; with a ``registry`` it encodes with registry framing.

    Decoding accepts both wire formats; registry-framed bytes need the registry.
    """

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry
        self._ids: dict[str, int] = {}  # schema name -> registry id of its current version
        self._by_id: dict[int, SchemaVersion] = {}  # registry id -> writer schema
        self._headers = {name: SINGLE_OBJECT_MAGIC + v.fingerprint.to_bytes(8, "little")
                         for name, v in CURRENT.items()}

    # encoding ---------------------------------------------------------------------------
    def encode(self, event: Event) -> bytes:
        """The wire form of ``event``: registry framing with a registry, else single-object."""
        name = type(event).__name__
        to_avro = _TO_AVRO.get(name)
        if to_avro is None or type(event) is not _CLASSES[name]:
            raise InvalidEventError(f"{type(event).__qualname__} is not a CoreState event")
        version = CURRENT[name]
        datum = to_avro(event)
        buf = io.BytesIO()
        if self.registry is None:
            buf.write(self._headers[name])
        else:
            buf.write(bytes([REGISTRY_MAGIC]) + self._registry_id(version).to_bytes(4, "big"))
        try:
            schemaless_writer(buf, version.parsed, datum, disable_tuple_notation=True)
        except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
            raise InvalidEventError(f"cannot encode {name}: {self._why_invalid(version, datum, exc)}") from None
        return buf.getvalue()

    def _registry_id(self, version: SchemaVersion) -> int:
        schema_id = self._ids.get(version.name)
        if schema_id is None:
            assert self.registry is not None
            schema_id = self.registry.register(subject(version.name), version.text)
            self._ids[version.name] = schema_id
            self._by_id[schema_id] = version
        return schema_id

    @staticmethod
    def _why_invalid(version: SchemaVersion, datum: Any, exc: Exception) -> str:
        try:
            validate(datum, version.parsed, raise_errors=True)
        except ValidationError as verr:
            if verr.errors:
                return _one_line(str(verr.errors[0]))
        return _one_line(f"{type(exc).__name__}: {exc}")

    # decoding ---------------------------------------------------------------------------
    @overload
    def decode(self, data: bytes, expected: type[E]) -> E: ...

    @overload
    def decode(self, data: bytes, expected: None = None) -> Event: ...

    def decode(self, data: bytes, expected: type[Any] | None = None) -> Event:
        """The event in ``data``; with ``expected``, it must be of that type."""
        if not data:
            raise UndecodableEventError("empty record value")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < _SINGLE_HEADER:
                raise UndecodableEventError(f"{len(data)} bytes is shorter than the "
                                            f"{_SINGLE_HEADER}-byte single-object header")
            writer = _BY_FINGERPRINT.get(int.from_bytes(data[2:_SINGLE_HEADER], "little"))
            if writer is None:
                raise UnknownSchemaError(
                    f"unknown schema fingerprint {data[2:_SINGLE_HEADER].hex()} (not a CoreState "
                    f"schema of this version; a newer producer needs a newer consumer)")
            start = _SINGLE_HEADER
        elif data[0] == REGISTRY_MAGIC:
            if len(data) < _REGISTRY_HEADER:
                raise UndecodableEventError(f"{len(data)} bytes is shorter than the "
                                            f"{_REGISTRY_HEADER}-byte schema-registry header")
            writer = self._registry_schema(int.from_bytes(data[1:_REGISTRY_HEADER], "big"))
            start = _REGISTRY_HEADER
        else:
            raise UndecodableEventError(
                f"unknown wire format: starts with {data[:2].hex()}, neither Avro single-object "
                f"encoding (c301) nor schema-registry framing (00)")
        if expected is not None and writer.name != expected.__name__:
            raise UnexpectedEventError(f"expected {expected.__name__}, got {writer.name}")
        return self._body(writer, data, start)

    def _registry_schema(self, schema_id: int) -> SchemaVersion:
        known = self._by_id.get(schema_id)
        if known is not None:
            return known
        if self.registry is None:
            raise UndecodableEventError(f"schema-registry framing (schema id {schema_id}) but "
                                        f"no schema registry is configured")
        try:
            text = self.registry.lookup(schema_id)
        except LookupError:
            raise UnknownSchemaError(f"schema id {schema_id} is not in the schema registry") from None
        try:
            raw = json.loads(text)
            name = _short(str(raw["name"])) if raw.get("type") == "record" else ""
            if name not in CURRENT or str(raw.get("namespace", NAMESPACE)) != NAMESPACE:
                raise UnknownSchemaError(f"schema id {schema_id} is not a CoreState event "
                                         f"schema ({_one_line(str(raw.get('name')), 80)})")
            version = _BY_FINGERPRINT.get(fingerprint(raw))
            if version is None or version.name != name:
                parsed = cast(dict[str, Any], parse_schema(raw))
                if _recursive(parsed):
                    raise UnknownSchemaError(f"schema id {schema_id} is recursive (no CoreState "
                                             f"event schema is); refused")
                version = SchemaVersion(name, 0, Path(f"registry:{schema_id}"), text, parsed,
                                        fingerprint(raw))
        except UnknownSchemaError:
            raise
        except Exception as exc:  # whatever a bad schema text makes the JSON or Avro parser raise
            raise UnknownSchemaError(f"schema id {schema_id} does not parse as Avro: "
                                     f"{type(exc).__name__}: {exc}") from None
        self._by_id[schema_id] = version
        return version

    @staticmethod
    def _body(writer: SchemaVersion, data: bytes, start: int) -> Event:
        reader = CURRENT[writer.name]
        fo = io.BytesIO(data)
        fo.seek(start)
        try:
            datum = schemaless_reader(fo, writer.parsed,
                                      None if writer.fingerprint == reader.fingerprint else reader.parsed)
            event = cast(Event, _FROM_AVRO[writer.name](datum))
        except InvalidEventError as exc:
            raise UndecodableEventError(f"{writer.name}: {exc.message}") from None
        except Exception as exc:  # fastavro raises whatever truncated or garbled bytes provoke
            raise UndecodableEventError(f"{writer.name} body does not decode: "
                                        f"{type(exc).__name__}: {_one_line(str(exc), 200)}") from None
        if fo.tell() != len(data):
            raise UndecodableEventError(f"{writer.name}: {len(data) - fo.tell()} bytes left over "
                                        f"after the record")
        return event


_DEFAULT = Codec()


def encode(event: Event) -> bytes:
    """``event`` in Avro single-object encoding."""
    return _DEFAULT.encode(event)


@overload
def decode(data: bytes, expected: type[E]) -> E: ...


@overload
def decode(data: bytes, expected: None = None) -> Event: ...


def decode(data: bytes, expected: type[Any] | None = None) -> Event:
    """The event in single-object-encoded ``data`` (registry framing needs a :class:`Codec`
    with a registry); with ``expected``, it must be of that type."""
    return _DEFAULT.decode(data, expected)
