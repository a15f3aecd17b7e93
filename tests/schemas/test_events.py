"""The event dataclasses mirror the .avsc schemas: the schema is the source of truth.

Every field of every dataclass must match its schema field by name and position, by type
(the mapping in corestate/schemas/events.py's docstring), by optionality (X | None for a
union with null) and by default. The checker is tested on a deliberately wrong class too.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from corestate.schemas import codec, events
from corestate.schemas.errors import InvalidEventError

PRIMITIVES = {"string": str, "bytes": bytes, "long": int, "int": int, "boolean": bool,
              "double": float, "float": float}
CLASSES = {c.__name__: c for c in (*events.EVENT_TYPES, *events.NESTED_TYPES)}


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return None


def type_problems(hint: Any, schema: Any, named: dict[str, Any], where: str) -> list[str]:
    """Differences between a Python type hint and an Avro type."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if not isinstance(schema, list) and _union_args(hint) is not None:
        return [f"{where}: {hint} is optional but Avro {schema} is not a union with null"]
    if isinstance(schema, str):
        want = PRIMITIVES[schema]
        return [] if hint is want else [f"{where}: {hint} is not Avro {schema} ({want.__name__})"]
    if isinstance(schema, list):
        args = _union_args(hint)
        branches = [b for b in schema if b != "null"]
        if "null" not in schema or len(branches) != 1:
            return [f"{where}: union {schema} has no Python mapping"]
        if args is None or type(None) not in args or len(args) != 2:
            return [f"{where}: Avro {schema} must be Optional, the dataclass says {hint}"]
        inner = next(a for a in args if a is not type(None))
        return type_problems(inner, branches[0], named, where)
    kind = schema["type"]
    if kind == "record":
        short = schema["name"].rpartition(".")[2]
        if hint is not CLASSES.get(short):
            return [f"{where}: record {short} must be the dataclass {short}, not {hint}"]
        return record_problems(hint, schema, named)
    if kind == "array":
        if typing.get_origin(hint) is not tuple or typing.get_args(hint)[1:] != (Ellipsis,):
            return [f"{where}: Avro array must be tuple[X, ...], not {hint}"]
        return type_problems(typing.get_args(hint)[0], schema["items"], named, where + "[]")
    if kind == "fixed":
        return [] if hint is bytes else [f"{where}: fixed must be bytes, not {hint}"]
    if kind == "enum":
        if typing.get_origin(hint) is not Literal or list(typing.get_args(hint)) != schema["symbols"]:
            return [f"{where}: enum {schema['symbols']} must be Literal of them, not {hint}"]
        return []
    if schema.get("logicalType") == "timestamp-micros":
        return [] if hint is datetime else [f"{where}: timestamp-micros must be datetime, not {hint}"]
    return type_problems(hint, kind, named, where)


def python_default(avro_default: Any, schema: Any) -> Any:
    if isinstance(avro_default, list):
        return tuple(avro_default)
    if schema == "bytes" and isinstance(avro_default, str):
        return avro_default.encode("latin-1")
    return avro_default


def record_problems(cls: type, schema: dict[str, Any], named: dict[str, Any]) -> list[str]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    problems = []
    names = [f.name for f in fields]
    avro_names = [f["name"] for f in schema["fields"]]
    if names != avro_names:
        problems.append(f"{cls.__name__}: fields {names} differ from the schema's {avro_names}")
    for f, af in zip(fields, schema["fields"]):
        where = f"{cls.__name__}.{f.name}"
        problems += type_problems(hints[f.name], af["type"], named, where)
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if has_default != ("default" in af):
            problems.append(f"{where}: the dataclass {'has' if has_default else 'lacks'} a default, "
                            f"the schema {'does not' if has_default else 'does'}")
        elif has_default:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if value != python_default(af["default"], af["type"]):
                problems.append(f"{where}: default {value!r} differs from the schema's {af['default']!r}")
    return problems


def schema_problems(cls: type) -> list[str]:
    version = codec.CURRENT[cls.__name__]
    return record_problems(cls, version.parsed, version.parsed["__named_schemas"])


@pytest.mark.parametrize("cls", events.EVENT_TYPES, ids=lambda c: c.__name__)
def test_dataclass_matches_its_schema(cls: type) -> None:
    assert schema_problems(cls) == []


def test_the_checker_finds_every_kind_of_difference() -> None:
    @dataclasses.dataclass(frozen=True)
    class BarrierAck:  # noqa: F811 - the real one's name, wrong in four ways
        snapshot_id: bytes  # wrong type
        packer_partition: int | None  # optional, the schema says required
        durable: bool = True  # default the schema does not have
        partitions: int = 0  # wrong name

    problems = schema_problems(BarrierAck)
    assert any("fields" in p and "partitions" in p for p in problems)
    assert any("snapshot_id" in p and "string" in p for p in problems)
    assert any("packer_partition" in p and "optional" in p for p in problems)
    assert any("durable" in p and "default" in p for p in problems)

    @dataclasses.dataclass(frozen=True)
    class SnapshotCommitted:  # tags default differs, paths a list
        snapshot_id: str
        restic_id: str
        host: str
        paths: list[str]
        time: datetime
        tree: str
        files: int
        bytes_added: int
        tags: tuple[str, ...] = ("x",)

    problems = schema_problems(SnapshotCommitted)
    assert any("paths" in p and "tuple" in p for p in problems)
    assert any("tags" in p and "default" in p for p in problems)


def test_every_schema_file_is_an_event_and_every_event_has_one() -> None:
    files = {p.stem for p in codec.SCHEMA_DIR.glob("*.avsc")}
    assert files == {c.__name__ for c in events.EVENT_TYPES}
    for name in files:
        raw = json.loads((codec.SCHEMA_DIR / f"{name}.avsc").read_text())
        assert (raw["type"], raw["name"], raw["namespace"]) == ("record", name, "io.corestate.v1")


def test_every_field_is_documented_for_consumers() -> None:
    undocumented = []
    for name, version in codec.CURRENT.items():
        raw = json.loads(version.text)
        assert raw.get("doc"), name

        def walk(record: dict[str, Any], where: str) -> None:
            for f in record["fields"]:
                t = f["type"]
                inner = t if isinstance(t, dict) else None
                if isinstance(t, dict) and t.get("type") == "array" and isinstance(t["items"], dict):
                    inner = t["items"]
                if inner is not None and inner.get("type") == "record":
                    walk(inner, f"{where}.{f['name']}")
                elif not f.get("doc") and not (isinstance(t, dict) and t.get("doc")):
                    if where.count(".") == 0:  # nested records' plain fields may go undocumented
                        undocumented.append(f"{where}.{f['name']}")
        walk(raw, name)
    assert undocumented == []


def test_events_are_immutable_and_hashable() -> None:
    from tests.schemas.samples import SAMPLES

    for e in SAMPLES:
        with pytest.raises(dataclasses.FrozenInstanceError):
            e.snapshot_id = "other"  # type: ignore[misc,union-attr]
        hash(e)


def test_a_data_segment_carries_at_most_one_mib() -> None:
    events.DataSegment("h", "s", b"/p", 0, 0, bytes(events.MAX_SEGMENT))
    with pytest.raises(InvalidEventError, match="at most 1048576"):
        events.DataSegment("h", "s", b"/p", 0, 0, bytes(events.MAX_SEGMENT + 1))


def test_docs_link_every_published_schema() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "topics.md").read_text()
    for name in codec.CURRENT:
        assert f"corestate/schemas/{name}.avsc" in doc, name


def test_schemas_is_the_bottom_layer() -> None:
    """corestate.schemas imports only the standard library, fastavro and corestate.errors."""
    import ast
    import sys

    allowed_corestate = {"corestate.errors"}
    found = []
    for path in sorted(codec.SCHEMA_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                ok = (top in sys.stdlib_module_names or top in ("__future__", "fastavro")
                      or name in allowed_corestate or name.startswith("corestate.schemas"))
                if not ok:
                    found.append(f"{path.name}: {name}")
    assert found == []
