"""
Property tests (hypothesis): the wire encoding read back by an independent SSE
parser (httpx_sse), the grammar never failing with anything but ProtocolError, and
control lines parsing back to what they were built from.
"""

from __future__ import annotations

import re

from httpx_sse._decoders import SSEDecoder
from hypothesis import example, given
from hypothesis import strategies as st

from sseserver.event import IdGenerator, encode
from sseserver.grammar import (
    DIALECTS,
    HASSES,
    SSE_SERVER,
    Message,
    ProtocolError,
    Target,
    is_subscription,
    parse_line,
    parse_publish,
    parse_subscription,
    route,
    split_query,
)

# The SSE spec's line splitting: CR LF, LF or CR.
SSE_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def sse_parse(raw: bytes) -> list:
    """Events of a complete SSE stream, per the WHATWG interpretation."""
    text = raw.decode("utf-8")
    lines = SSE_LINE_BREAK.split(text)
    assert lines[-1] == "", "the stream must end with a line break"
    decoder = SSEDecoder()
    events = []
    for line in lines[:-1]:
        event = decoder.decode(line)
        if event is not None:
            events.append(event)
    return events


TYPE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:"
event_types = st.one_of(
    st.just("message"), st.text(alphabet=TYPE_ALPHABET, min_size=1, max_size=40)
)
event_ids = st.builds(
    lambda ms, seq: f"{ms}-{seq}",
    st.integers(min_value=0, max_value=2**48),
    st.integers(min_value=0, max_value=2**32),
)
payloads = st.text().filter(lambda s: "\0" not in s)


@given(event_ids, event_types, payloads)
@example("1-0", "message", "")
@example("1-0", "t", "\r\n")
@example("1-0", "t", "a\r\rb\n\r\n")
@example("1-0", "message", "\ndata: evil\n\nid: 9-9")
@example("1-0", "message", " leading and trailing ")
@example("1-0", "message", "\ufeffbom \u2028 \x85 \x0b")
def test_encode_read_back_by_independent_parser(event_id, event_type, data):
    events = sse_parse(encode(event_id, event_type, data))
    assert len(events) == 1
    (event,) = events
    assert event.event == event_type
    assert event.data == data.replace("\r\n", "\n").replace("\r", "\n")
    assert event.id == event_id
    assert event.retry is None


@given(st.lists(st.tuples(event_ids, event_types, payloads), min_size=1, max_size=5))
def test_concatenated_events_stay_separate(items):
    raw = b"".join(encode(i, t, d) for i, t, d in items)
    events = sse_parse(raw)
    assert [(e.id, e.event, e.data) for e in events] == [
        (i, t, d.replace("\r\n", "\n").replace("\r", "\n")) for i, t, d in items
    ]


@given(st.lists(st.floats(min_value=0, max_value=4e9, allow_nan=False), min_size=1))
def test_ids_strictly_increase_whatever_the_clock(times):
    clock = iter(times)
    gen = IdGenerator(lambda: next(clock))
    ids = [gen.next() for _ in times]
    keys = [tuple(int(p) for p in i.split("-")) for i in ids]
    assert all(re.fullmatch(r"[0-9]+-[0-9]+", i) for i in ids)
    assert all(a < b for a, b in zip(keys, keys[1:]))


# --- the grammar never fails with anything but ProtocolError ---------------------------

GRAMMAR_CHARS = "ab*=/-;, \t:%2FA0+&?\r\x00\x01\x7fé😀"
grammar_text = st.text(alphabet=GRAMMAR_CHARS, max_size=60)
line_bytes = st.one_of(
    st.binary(max_size=200),
    grammar_text.map(lambda s: s.encode("utf-8")),
    st.text(max_size=100).map(lambda s: s.encode("utf-8")),
)
separators = st.sampled_from([None, ";", ",", "|"])


@given(line_bytes, st.sampled_from(DIALECTS), separators)
@example(b"room-=x", HASSES, None)
@example(b"-=x", HASSES, ";")
@example(b"a/\x01=b", SSE_SERVER, None)
def test_parse_line_only_protocol_errors(raw, dialect, separator):
    try:
        result = parse_line(raw, dialect, separator)
    except ProtocolError:
        return
    assert isinstance(result, list)


uri_bytes = st.one_of(
    st.binary(max_size=200),
    st.text(alphabet="/sef?%2F0A+&=;-*", max_size=60).map(str.encode),
    st.builds(lambda s: b"/sse" + s, st.binary(max_size=100)),
)
prefixes = st.sampled_from([b"/sse", b"/sse/", b"/", b"/a/b"])


@given(uri_bytes, prefixes)
@example(b"/sse/%", b"/sse")
@example(b"/sse/%ZZ%C3", b"/sse")
def test_route_only_protocol_errors(uri, prefix):
    try:
        result = route(uri, prefix)
    except ProtocolError:
        return
    assert result.kind in ("prefix", "root", "notfound")
    assert all(isinstance(s, str) and s for s in result.segments)


query_bytes = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.text(alphabet="subcrie=id&;-*%2D0AF+xlastEvnI", max_size=80).map(str.encode),
)


@given(query_bytes)
def test_split_query_never_raises(query):
    params = split_query(query)
    for key, value in params:
        assert isinstance(key, bytes)
        assert value is None or isinstance(value, bytes)
        assert b"&" not in key and b";" not in key and b"=" not in key


segment_lists = st.lists(st.text(max_size=20), max_size=5)


@given(segment_lists, query_bytes, st.booleans())
@example([], b"subscribe=%FF", False)
@example([], b"subscribe=a%00-b&id=%0A", False)
@example(["a"], b"id&lastEventId", True)
def test_parse_subscription_only_protocol_errors(segments, query, accepts):
    params = split_query(query)
    try:
        if not is_subscription(params, accepts):
            return
        sub = parse_subscription(segments, params)
    except ProtocolError:
        return
    assert not (sub.all_channels and sub.channels)
    assert len(sub.channels) == len(set(sub.channels)) <= 256


@given(segment_lists, query_bytes)
@example(["c"], b"token&x")
@example(["c"], b"=&%FF=1")
def test_parse_publish_only_protocol_errors(segments, query):
    try:
        publish = parse_publish(segments, split_query(query))
    except ProtocolError:
        return
    assert isinstance(publish.items, tuple)


# --- control line round trip -----------------------------------------------------------

NOT_IN_CHANNEL = set("=/*;\x7f") | {chr(c) for c in range(0x20)}
channel_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30
).filter(lambda s: not (set(s) & NOT_IN_CHANNEL) and s.strip(" \t") == s and s != "")
type_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30
).filter(
    lambda s: (
        not (set(s) & (set("=\x7f") | {chr(c) for c in range(0x20)}))
        and s.strip(" \t") == s
    )
)
line_data = st.text(max_size=200).filter(
    lambda s: "\n" not in s and "\r" not in s and "\0" not in s
)


@given(channel_names, type_names, line_data)
@example("color", "q1", "go")
@example("a-b", "t/u", "x = y = z")
@example("room", "message", "  padded\t ")
def test_control_line_round_trip(ch, event_type, data):
    raw = f"{ch}/{event_type} = {data}".encode("utf-8")
    assert parse_line(raw) == [
        Message(Target(channels=frozenset({ch})), event_type, data.strip(" \t"))
    ]


@given(channel_names.filter(lambda s: "-" not in s), line_data)
def test_control_line_round_trip_default_type_hasses(ch, data):
    raw = f"{ch}-u17={data}".encode("utf-8")
    assert parse_line(raw, HASSES, ";" if ";" not in data else None) == [
        Message(
            Target(channels=frozenset({ch}), exclude="u17"),
            "message",
            data.strip(" \t"),
        )
    ]
