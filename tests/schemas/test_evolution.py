"""Schema evolution: data written with any earlier version of a schema reads into the
current one, and a schema cannot change without its previous version kept in history/.

fingerprints.json beside this file lists, per schema, the fingerprint of every version
(oldest first, the current one last) as the 8 bytes of the single-object header, in hex.

To change a schema: copy the current ``corestate/schemas/<Name>.avsc`` to
``corestate/schemas/history/<Name>.v<N>.avsc`` (N = its version, the list's length), edit
the current file compatibly (new fields need a default), and append the new fingerprint
to the list. Editing a published history file is never right: old data carries its
fingerprint.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError

from corestate.schemas import codec
from corestate.schemas.events import SnapshotCommitted

FINGERPRINTS = Path(__file__).with_name("fingerprints.json")
PRIMITIVE_SAMPLES = {"null": None, "boolean": True, "int": 7, "long": 1 << 40, "float": 1.5,
                     "double": 2.25, "bytes": b"\x00\xffb", "string": "s\u00e9"}


def sample(schema: Any, named: dict[str, Any]) -> Any:
    """A value of Avro type ``schema`` with nothing left at a default."""
    if isinstance(schema, str):
        return sample(named[schema], named) if schema in named else PRIMITIVE_SAMPLES[schema]
    if isinstance(schema, list):
        return sample([b for b in schema if b != "null"][-1], named)
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: sample(f["type"], named) for f in schema["fields"]}
    if kind == "array":
        return [sample(schema["items"], named), sample(schema["items"], named)]
    if kind == "map":
        return {"k": sample(schema["values"], named)}
    if kind == "fixed":
        return bytes(range(1, schema["size"] + 1))
    if kind == "enum":
        return schema["symbols"][-1]
    return sample(kind, named)


def resolved_as_expected(old_view: Any, new_view: Any, new_schema: Any, named: dict[str, Any],
                         where: str) -> list[str]:
    """Compare what the old schema reads with what the new one reads from the same bytes:
    shared fields equal, fields only the new schema has at their default."""
    if isinstance(new_schema, str) and new_schema in named:
        new_schema = named[new_schema]
    if isinstance(new_schema, list):
        inner = [b for b in new_schema if b != "null"]
        if old_view is None or new_view is None:
            return [] if old_view == new_view else [f"{where}: {old_view!r} became {new_view!r}"]
        return resolved_as_expected(old_view, new_view, inner[0], named, where)
    if isinstance(new_schema, dict) and new_schema["type"] == "record":
        problems = []
        for f in new_schema["fields"]:
            name = f["name"]
            if name in old_view:
                problems += resolved_as_expected(old_view[name], new_view[name], f["type"], named,
                                                 f"{where}.{name}")
            else:
                default = f["default"]
                if isinstance(default, str) and f["type"] == "bytes":
                    default = default.encode("latin-1")
                got = new_view[name]
                if isinstance(got, str) and isinstance(default, bytes):
                    got = got.encode("latin-1")  # fastavro hands bytes defaults over as str
                if got != default:
                    problems.append(f"{where}.{name}: new field is {got!r}, not its default {default!r}")
        return problems
    if isinstance(new_schema, dict) and new_schema["type"] == "array":
        if len(old_view) != len(new_view):
            return [f"{where}: {len(old_view)} items became {len(new_view)}"]
        return [p for a, b in zip(old_view, new_view)
                for p in resolved_as_expected(a, b, new_schema["items"], named, where + "[]")]
    return [] if old_view == new_view else [f"{where}: {old_view!r} became {new_view!r}"]


def compatibility_problems(old_raw: dict[str, Any], new_raw: dict[str, Any]) -> list[str]:
    """Write a full datum with ``old_raw``, read it with ``new_raw``; every difference."""
    old, new = parse_schema(copy.deepcopy(old_raw)), parse_schema(copy.deepcopy(new_raw))
    datum = sample(old, old["__named_schemas"])
    buf = io.BytesIO()
    schemaless_writer(buf, old, datum)
    raw = buf.getvalue()
    try:
        new_view = schemaless_reader(io.BytesIO(raw), old, new)
    except (SchemaResolutionError, ValueError, TypeError, KeyError) as exc:
        return [f"the new schema cannot read the old one's data: {type(exc).__name__}: {exc}"]
    old_view = schemaless_reader(io.BytesIO(raw), old, None)
    return resolved_as_expected(old_view, new_view, new, new["__named_schemas"], new["name"])


HISTORY = [(name, v) for name in sorted(codec.CURRENT) for v in codec.versions(name)[:-1]]


def test_there_is_at_least_one_real_evolution() -> None:
    assert ("SnapshotCommitted", 1) in [(n, v.version) for n, v in HISTORY]


@pytest.mark.parametrize("name,old", HISTORY, ids=[f"{n}.v{v.version}" for n, v in HISTORY])
def test_every_previous_version_reads_into_the_current_one(name: str, old: codec.SchemaVersion) -> None:
    current = codec.CURRENT[name]
    assert old.fingerprint != current.fingerprint, f"{old.path.name} is the current schema again"
    assert compatibility_problems(json.loads(old.text), json.loads(current.text)) == []


@pytest.mark.parametrize("name,old", HISTORY, ids=[f"{n}.v{v.version}" for n, v in HISTORY])
def test_old_single_object_data_decodes_through_the_codec(name: str, old: codec.SchemaVersion) -> None:
    datum = sample(old.parsed, old.parsed["__named_schemas"])
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + old.fingerprint.to_bytes(8, "little"))
    schemaless_writer(buf, old.parsed, datum)
    event = codec.decode(buf.getvalue())
    assert type(event).__name__ == name
    assert codec.decode(codec.encode(event)) == event  # and it is a valid current event


def test_snapshot_committed_v1_gets_empty_tags() -> None:
    v1 = codec.versions("SnapshotCommitted")[0]
    datum = sample(v1.parsed, v1.parsed["__named_schemas"])
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + v1.fingerprint.to_bytes(8, "little"))
    schemaless_writer(buf, v1.parsed, datum)
    event = codec.decode(buf.getvalue(), SnapshotCommitted)
    assert event.tags == () and event.paths == (datum["paths"][0], datum["paths"][1])
    assert event.restic_id == datum["restic_id"] and event.files == datum["files"]


def test_the_checker_finds_incompatible_changes() -> None:
    current = json.loads(codec.CURRENT["SnapshotCommitted"].text)
    no_default = copy.deepcopy(current)
    no_default["fields"].append({"name": "owner", "type": "string"})
    assert compatibility_problems(current, no_default)
    retyped = copy.deepcopy(current)
    next(f for f in retyped["fields"] if f["name"] == "files")["type"] = "string"
    assert compatibility_problems(current, retyped)
    with_default = copy.deepcopy(current)
    with_default["fields"].append({"name": "owner", "type": "string", "default": "root"})
    assert compatibility_problems(current, with_default) == []  # a compatible change is fine


def test_fingerprints_are_checked_in_for_every_version() -> None:
    """Fails when a current schema changed without a history entry, or history was edited."""
    listed: dict[str, list[str]] = json.loads(FINGERPRINTS.read_text())
    assert sorted(listed) == sorted(codec.CURRENT), "fingerprints.json lists other schemas than there are"
    for name in codec.CURRENT:
        found = [v.fingerprint.to_bytes(8, "little").hex() for v in codec.versions(name)]
        want = listed[name]
        if found[:-1] != want[:len(found) - 1]:
            pytest.fail(f"{name}: a file in corestate/schemas/history/ was changed or removed: "
                        f"history fingerprints {found[:-1]}, checked in {want[:-1]}")
        if len(found) == len(want) and found[-1] != want[-1]:
            pytest.fail(f"{name}.avsc changed (fingerprint {found[-1]}, checked in {want[-1]}) but its "
                        f"previous version is not in history/: copy the previous file to "
                        f"history/{name}.v{len(want)}.avsc and append {found[-1]} to {FINGERPRINTS.name}")
        assert found == want, f"{name}: fingerprints {found}, checked in {want}"
