"""Stored names and nodes: what Go's quoting accepts, and nodes that cannot be read in full."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corestate.repository.tree import BadName, Node, quote_name, unquote_name
from tests.repository.forge import file_node


@given(st.binary(max_size=64))
def test_quoted_names_round_trip(raw):
    assert unquote_name(quote_name(raw)) == raw


@pytest.mark.parametrize("stored", ["a\\x4", "a\\", "\\q", "\\'", 'a"b', "a\nb", "\\400",
                                    "\\ud800", "\\U00110000", "\\u12", "\\x"])
def test_malformed_names_are_refused_with_the_reason(stored):
    with pytest.raises(BadName, match="is not validly quoted"):
        unquote_name(stored)
    node = Node.from_json(file_node(stored, [], 0))
    assert "is not validly quoted" in node.damage and node.type == "file"


def test_a_node_with_unreadable_fields_keeps_the_rest():
    node = Node.from_json({**file_node("f", [], 0), "content": ["zz"], "mtime": 5, "uid": "x"})
    assert node.name == b"f" and node.type == "file"
    assert all(field in node.damage for field in ("content:", "mtime:", "uid:"))
