"""
Unit tests of the JSON and form publish grammar (SPEC §5.5 POST part, the
control command C{json}): pure functions of sseserver/grammar.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sseserver.grammar import (
    HASSES,
    JsonPublish,
    Message,
    ProtocolError,
    Target,
    TooLarge,
    decode_json,
    parse_form_publish,
    parse_json_publish,
    parse_line,
    parse_target,
)

COLOR = Target(channels=frozenset({"color"}))
ALL_ONLY = Target()


# --- JSON objects -------------------------------------------------------------------------


def test_object_to_the_path_channels():
    assert parse_json_publish({"event": "q1", "data": "go"}, ("color", "page")) == [
        Message(Target(channels=frozenset({"color", "page"})), "q1", "go")
    ]


def test_defaults_and_ignored_id():
    assert parse_json_publish({"data": "x", "id": "ignored"}, ("color",)) == [
        Message(COLOR, "message", "x")
    ]


def test_list_in_order_and_multi_line_data():
    assert parse_json_publish(
        [{"data": "a\nb"}, {"event": "t", "data": ""}], ("color",)
    ) == [Message(COLOR, "message", "a\nb"), Message(COLOR, "t", "")]


@pytest.mark.parametrize(
    "target, expected",
    [
        ("color", COLOR),
        ("room*", Target(prefixes=("room",))),
        ("*", Target(everyone=True)),
        ("", ALL_ONLY),
        ("a-b", Target(channels=frozenset({"a-b"}))),
    ],
)
def test_target_without_path_channels(target, expected):
    assert parse_json_publish({"data": "d", "target": target}) == [
        Message(expected, "message", "d")
    ]


def test_target_follows_the_dialect():
    (message,) = parse_json_publish({"data": "d", "target": "room-u17"}, (), HASSES)
    assert message.target == parse_target("room-u17", HASSES)


def test_no_target_and_no_path_channel_is_all_channel_subscribers_only():
    assert parse_json_publish({"data": "d"}) == [Message(ALL_ONLY, "message", "d")]


@pytest.mark.parametrize(
    "obj, path, reason",
    [
        ({"data": "d", "target": "a"}, ("color",), "target given"),
        ({"data": "d", "target": ""}, ("color",), "target given"),
        ({"event": "t"}, (), "missing data"),
        ({"data": 5}, (), "data must be a string"),
        ({"data": None}, (), "missing data"),
        ({"data": "d", "event": 1}, (), "event must be a string"),
        ({"data": "d", "target": ["a"]}, (), "target must be a string"),
        ({"data": "d", "colour": "x"}, (), "unknown key 'colour'"),
        ({"data": "d", "event": "a\nb"}, (), "control character in event type"),
        ({"data": "d", "event": ""}, (), "empty event type"),
        ({"data": "a\0b"}, (), "NUL in data"),
        ({"data": "\ud800"}, (), "invalid Unicode in data"),
        ({"data": "d", "target": "\ud800"}, (), "invalid Unicode in target"),
        ({"data": "d", "target": "a\tb"}, (), "control character in channel name"),
        ([], (), "empty list"),
        ("text", (), "an object or a list of objects"),
        (5, (), "an object or a list of objects"),
        ([{"data": "ok"}, "x"], (), "an object or a list of objects"),
        ([{"data": "ok"}, {"data": 1}], (), "data must be a string"),
    ],
)
def test_refused(obj, path, reason):
    with pytest.raises(ProtocolError) as caught:
        parse_json_publish(obj, path)
    assert reason in str(caught.value)
    assert caught.value.status == 400


def test_data_over_64_kib_is_413():
    parse_json_publish({"data": "x" * 65536})
    with pytest.raises(TooLarge) as caught:
        parse_json_publish({"data": "x" * 65537})
    assert caught.value.status == 413


def test_bad_path_channel():
    with pytest.raises(ProtocolError):
        parse_json_publish({"data": "d"}, ("a\x01",))


# --- JSON text ----------------------------------------------------------------------------


def test_decode_json():
    assert decode_json(b'{"data": "\\u00e9"}') == {"data": "é"}
    for raw, reason in [
        (b"{", "invalid JSON"),
        (b"", "invalid JSON"),
        (b"\xff", "invalid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    ]:
        with pytest.raises(ProtocolError) as caught:
            decode_json(raw)
        assert reason in str(caught.value)


# --- the control command ------------------------------------------------------------------


def test_json_command_object_and_list():
    assert parse_line(b'json {"target": "color", "data": "a=b\\nc"}') == [
        JsonPublish((Message(COLOR, "message", "a=b\nc"),), single=True)
    ]
    assert parse_line(b' json\t[{"target": "*", "data": "x"}] ') == [
        JsonPublish((Message(Target(everyone=True), "message", "x"),), single=False)
    ]


def test_json_command_is_not_split_at_the_separator():
    (item,) = parse_line(b'json {"target": "a", "data": "1;b=2;"}', HASSES, ";")
    assert item.messages == (
        Message(Target(channels=frozenset({"a"})), "message", "1;b=2;"),
    )


def test_json_command_errors():
    for line, reason in [
        (b"json {", "invalid JSON in json command"),
        (b'json {"data": 1}', "data must be a string"),
        (b"json []", "empty list"),
    ]:
        with pytest.raises(ProtocolError) as caught:
            parse_line(line)
        assert reason in str(caught.value)


def test_lines_that_are_not_the_json_command():
    assert parse_line(b"json=x") == [
        Message(Target(channels=frozenset({"json"})), "message", "x")
    ]
    assert parse_line(b"json x=y") == [
        Message(Target(channels=frozenset({"json x"})), "message", "y")
    ]
    with pytest.raises(ProtocolError, match="unknown command"):
        parse_line(b"json")


@given(st.text(max_size=80))
def test_json_command_only_protocol_errors(text):
    try:
        parse_line(b"json " + text.encode("utf-8", "surrogatepass"))
    except ProtocolError:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda kids: (
            st.lists(kids, max_size=3)
            | st.dictionaries(
                st.sampled_from(["event", "data", "target", "id", "x"]),
                kids,
                max_size=4,
            )
        ),
        max_leaves=10,
    )
)
def test_json_publish_only_protocol_errors(obj):
    try:
        parse_json_publish(obj)
    except ProtocolError:
        pass


# --- forms --------------------------------------------------------------------------------


def test_form_standard_decoding():
    body = b"event=q1&data=line+one%0Aline%20two+%2B"
    assert parse_form_publish(body, ("color",)) == [
        Message(COLOR, "q1", "line one\nline two +")
    ]


def test_form_defaults_ignored_id_and_target():
    assert parse_form_publish(b"data=&id=5", ("color",)) == [
        Message(COLOR, "message", "")
    ]
    assert parse_form_publish(b"data=x&target=room*", ()) == [
        Message(Target(prefixes=("room",)), "message", "x")
    ]
    assert parse_form_publish(b"&data=x&&", ()) == [Message(ALL_ONLY, "message", "x")]


def test_form_multi_line_data_raw_newlines():
    assert parse_form_publish(b"data=a\r\nb", ("color",)) == [
        Message(COLOR, "message", "a\r\nb")
    ]


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"", "missing data"),
        (b"event=x", "missing data"),
        (b"data=a&data=b", "given twice"),
        (b"data=a&colour=b", "unknown form field 'colour'"),
        (b'{"data": "x"}', "Content-Type: application/json"),
        (b"data=%FF", "invalid UTF-8"),
        (b"data=x&event=a%0Ab", "control character"),
        (b"data=a%00", "NUL"),
    ],
)
def test_form_refused(body, reason):
    with pytest.raises(ProtocolError) as caught:
        parse_form_publish(body, ())
    assert reason in str(caught.value)


def test_form_target_with_path_channels():
    with pytest.raises(ProtocolError, match="target given"):
        parse_form_publish(b"data=x&target=a", ("color",))
