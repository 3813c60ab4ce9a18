"""
Unit tests for L{sseserver.clusterwire}: messages as stream entry fields and back,
and the nodes' figures summed into cluster totals.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sseserver.clusterwire import (
    cluster_totals,
    entry_fields,
    node_figures,
    parse_entry,
)
from sseserver.grammar import Message, Target


def as_xread(fields: list) -> list:
    """Fields as XREAD gives them back: a flat list of bytes."""
    return [field.encode("utf-8") for field in fields]


def round_trip(message: Message, node: str = "node-1"):
    return parse_entry(as_xread(entry_fields(message, node)))


EMPTY_TOTALS = {"nodes": 0, "sseconncli": 0, "allconncli": 0, "channels": {}}


# --- entry_fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "where"),
    [
        (
            Target(channels=frozenset({"news", "alerts"})),
            '{"channels":["alerts","news"]}',
        ),
        (Target(prefixes=("sport.", "news.")), '{"prefixes":["sport.","news."]}'),
        (Target(everyone=True), '{"everyone":true}'),
        (Target(everyone=True, exclude="c7"), '{"everyone":true,"exclude":"c7"}'),
        (
            Target(channels=frozenset({"a"}), exclude=""),
            '{"channels":["a"],"exclude":""}',
        ),
        (Target(), "{}"),
        (Target(channels=frozenset({"café"})), '{"channels":["café"]}'),
    ],
)
def test_entry_fields_target_json(target, where):
    fields = entry_fields(Message(target, "news", "hello"), "node-1")
    assert fields == [
        "target",
        where,
        "type",
        "news",
        "data",
        "hello",
        "node",
        "node-1",
    ]


def test_entry_fields_keep_data_verbatim():
    fields = entry_fields(Message(Target(), "", "a\nb\r\nc ✓"), "n")
    assert fields == ["target", "{}", "type", "", "data", "a\nb\r\nc ✓", "node", "n"]


# --- round trip ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        Target(channels=frozenset({"news"})),
        Target(channels=frozenset({"news", "alerts", "日本"})),
        Target(prefixes=("sport.",)),
        Target(prefixes=("b.", "a.")),
        Target(everyone=True),
        Target(everyone=True, exclude="c7"),
        Target(channels=frozenset({"x"}), exclude="c7"),
        Target(prefixes=("p",), exclude="é"),
        Target(exclude="c7"),
        Target(),
    ],
    ids=str,
)
def test_round_trip_every_target_form(target):
    message = Message(target, "update", "payload")
    assert round_trip(message, "node-7") == (message, "node-7")


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("", ""),
        ("événement", "données: ✓ 日本語 🎉"),
        ("t", "line 1\nline 2\r\nline 3\r"),
        ("t", '{"json": ["inside", "data"]}'),
        ("t", "nul\x00byte"),
    ],
)
def test_round_trip_type_and_data(event_type, data):
    message = Message(Target(channels=frozenset({"c"})), event_type, data)
    assert round_trip(message, "ñode") == (message, "ñode")


TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
TARGETS = st.builds(
    Target,
    channels=st.frozensets(TEXT, max_size=4),
    prefixes=st.lists(TEXT, max_size=4).map(tuple),
    everyone=st.booleans(),
    exclude=st.none() | TEXT,
)


@given(TARGETS, TEXT, st.text(st.characters(codec="utf-8")), TEXT)
def test_round_trip_property(target, event_type, data, node):
    message = Message(target, event_type, data)
    assert round_trip(message, node) == (message, node)


# --- parse_entry ---------------------------------------------------------------------


def test_parse_entry_from_xread_bytes():
    fields = [
        b"target",
        b'{"channels":["caf\xc3\xa9"],"exclude":"c9"}',
        b"type",
        b"",
        b"data",
        b"a\nb",
        b"node",
        b"n2",
    ]
    target = Target(channels=frozenset({"café"}), exclude="c9")
    assert parse_entry(fields) == (Message(target, "", "a\nb"), "n2")


def test_parse_entry_in_any_field_order():
    fields = [
        b"node",
        b"n",
        b"data",
        b"d",
        b"type",
        b"t",
        b"target",
        b'{"everyone":true}',
    ]
    assert parse_entry(fields) == (Message(Target(everyone=True), "t", "d"), "n")


def test_parse_entry_without_node_gives_empty_node():
    fields = [b"target", b"{}", b"type", b"t", b"data", b"d"]
    assert parse_entry(fields) == (Message(Target(), "t", "d"), "")


GOOD = {b"target": b"{}", b"type": b"t", b"data": b"d", b"node": b"n"}


def without(name: bytes) -> list:
    return [part for key, value in GOOD.items() if key != name for part in (key, value)]


def with_target(where: bytes) -> list:
    return [b"target", where, b"type", b"t", b"data", b"d"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([b"target", b"{}", b"type"], "odd number of fields"),
        ([b"target"], "odd number of fields"),
        (without(b"target"), "not an sseserver entry"),
        (without(b"type"), "not an sseserver entry"),
        (without(b"data"), "not an sseserver entry"),
        ([], "not an sseserver entry"),
        (with_target(b"{not json"), "not an sseserver entry"),
        (with_target(b""), "not an sseserver entry"),
        (with_target(b"[1, 2]"), "not an sseserver entry"),
        (with_target(b'{"channels": 5}'), "not an sseserver entry"),
        (with_target(b'{"prefixes": 5}'), "not an sseserver entry"),
        ([b"target", b"{}", b"type", b"t", b"data", b"\xff"], "utf-8"),
    ],
)
def test_malformed_entry_raises_value_error(fields, reason):
    with pytest.raises(ValueError, match=reason):
        parse_entry(fields)


# --- node_figures and cluster_totals -------------------------------------------------


def test_node_figures_json():
    assert (
        node_figures(3, 5, {"news": 2})
        == b'{"sseconncli":3,"allconncli":5,"channels":{"news":2}}'
    )


def test_node_figures_escape_non_ascii_channels():
    assert (
        node_figures(0, 0, {"café": 1})
        == b'{"sseconncli":0,"allconncli":0,"channels":{"caf\\u00e9":1}}'
    )


def test_cluster_totals_of_nothing():
    assert cluster_totals([]) == EMPTY_TOTALS


def test_cluster_totals_sums_several_nodes():
    values = [
        node_figures(3, 5, {"news": 2, "café": 1}),
        node_figures(10, 11, {"news": 7}),
        node_figures(0, 1, {}),
    ]
    assert cluster_totals(values) == {
        "nodes": 3,
        "sseconncli": 13,
        "allconncli": 17,
        "channels": {"news": 9, "café": 1},
    }


def test_cluster_totals_skip_expired_nodes():
    values = [None, node_figures(2, 3, {"a": 1}), None]
    expected = {"nodes": 1, "sseconncli": 2, "allconncli": 3, "channels": {"a": 1}}
    assert cluster_totals(values) == expected


def test_cluster_totals_without_channels_field():
    totals = cluster_totals([b'{"sseconncli":4,"allconncli":6}'])
    assert totals == {"nodes": 1, "sseconncli": 4, "allconncli": 6, "channels": {}}


ONE_NODE = {"nodes": 1, "sseconncli": 2, "allconncli": 3, "channels": {"a": 1}}


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"null",
        b"5",
        b'"text"',
        b"[1, 2]",
        b'{"sseconncli":1}',
        b'{"allconncli":1}',
        b'{"sseconncli":"many","allconncli":1}',
        b'{"sseconncli":null,"allconncli":1}',
        b'{"sseconncli":1,"allconncli":1,"channels":7}',
        b'{"sseconncli":1,"allconncli":1,"channels":null}',
        b'{"sseconncli":1,"allconncli":1,"channels":"ab"}',
    ],
)
def test_cluster_totals_skip_garbage_values(garbage):
    assert cluster_totals([node_figures(2, 3, {"a": 1}), garbage]) == ONE_NODE


@pytest.mark.parametrize(
    "garbage",
    [
        b'{"sseconncli":1,"allconncli":1,"channels":{"a":"many"}}',
        b'{"sseconncli":1,"allconncli":1,"channels":{"a":null}}',
    ],
)
def test_cluster_totals_skip_a_node_with_a_garbage_channel_count(garbage):
    # A node's figures are skipped whole when any part of them is not a number.
    assert cluster_totals([node_figures(2, 3, {"a": 1}), garbage]) == ONE_NODE
