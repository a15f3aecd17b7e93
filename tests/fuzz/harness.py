"""What every fuzz module shares: the contract of a target and hypothesis strategies
that mutate valid inputs.

A *target* takes bytes, decodes them with one of the project's decoders and returns,
or raises a :class:`~corestate.errors.CoreStateError` (bad bytes are reported in the
project's own words). Any other exception is a bug. Each ``tests/fuzz/test_<area>.py``
defines ``TARGETS: dict[str, Callable[[bytes], None]]`` and ``SEEDS: dict[str,
list[bytes]]`` (valid inputs for each target) and its own short hypothesis tests;
``benchmarks/fuzz.py`` runs every target of every module for longer, with atheris or
hypothesis.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from hypothesis import strategies as st

from corestate.errors import CoreStateError

Target = Callable[[bytes], None]


def run(target: Target, data: bytes) -> None:
    """Run one input; only the project's own errors are an acceptable failure."""
    try:
        target(data)
    except CoreStateError:
        pass


_JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                          st.floats(allow_nan=False), st.text(max_size=20),
                          st.sampled_from(["", "a" * 64, "0" * 64, "file", "dir", "\\x4", ".."]))
JSON_VALUES = st.recursive(_JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


def _mutate(seed: bytes, edits: list[tuple[int, float, bytes]]) -> bytes:
    data = bytearray(seed)
    for kind, where, value in edits:
        pos = int(where * len(data))
        if kind == 0 and data:  # flip bits of one byte
            data[min(pos, len(data) - 1)] ^= value[0] if value else 1
        elif kind == 1:  # insert
            data[pos:pos] = value
        elif kind == 2:  # delete
            del data[pos:pos + len(value) + 1]
        else:  # truncate
            del data[pos:]
    return bytes(data)


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, and seeds with bytes flipped, inserted, deleted or cut off."""
    edit = st.tuples(st.integers(0, 3), st.floats(0, 1), st.binary(min_size=1, max_size=8))
    return st.one_of(st.binary(max_size=512),
                     st.builds(_mutate, st.sampled_from(seeds), st.lists(edit, max_size=6)))


@st.composite
def _json_replaced(draw: st.DrawFn, docs: list[object]) -> bytes:
    doc = orjson.loads(orjson.dumps(draw(st.sampled_from(docs))))  # a private copy
    for _ in range(draw(st.integers(1, 3))):
        slots: list[tuple[object, object]] = []  # (container, key) of every value

        def visit(node: object) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    slots.append((node, k))
                    visit(v)
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    slots.append((node, i))
                    visit(v)

        visit(doc)
        if not slots:
            return orjson.dumps(draw(JSON_VALUES))
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(JSON_VALUES)  # type: ignore[index]
    return orjson.dumps(doc)


def json_mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Valid JSON seeds with values replaced by random JSON or removed, plus
    :func:`mutated` bytes."""
    docs = []
    for seed in seeds:
        try:
            docs.append(orjson.loads(seed))
        except orjson.JSONDecodeError:
            continue
    return st.one_of(_json_replaced(docs), mutated(seeds)) if docs else mutated(seeds)
