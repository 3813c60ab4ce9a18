"""
Unit tests for L{sseserver.event}: the wire encoding of SPEC §2.4, HTTP/1.1 chunk
framing, L{Event}'s cached encodings and L{IdGenerator}.
"""

from __future__ import annotations

import re

import pytest

from sseserver.event import (
    FINAL_CHUNK,
    HEARTBEAT,
    HEARTBEAT_CHUNK,
    OPENING,
    Event,
    IdGenerator,
    chunk,
    encode,
)
from sseserver.grammar import Target


class TestEncode:
    def test_message_type_has_no_event_line(self):
        assert encode("1-0", "message", "hello") == b"id: 1-0\ndata: hello\n\n"

    def test_custom_type(self):
        assert encode("17-3", "q1", "go") == b"id: 17-3\nevent: q1\ndata: go\n\n"

    def test_without_id(self):
        assert encode(None, "message", "x") == b"data: x\n\n"
        assert encode(None, "t", "x") == b"event: t\ndata: x\n\n"

    def test_empty_data(self):
        assert encode("1-0", "message", "") == b"id: 1-0\ndata: \n\n"
        assert encode("1-0", "t", "") == b"id: 1-0\nevent: t\ndata: \n\n"

    @pytest.mark.parametrize("brk", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
    def test_each_line_break_splits(self, brk):
        assert encode("1-0", "message", f"a{brk}b") == b"id: 1-0\ndata: a\ndata: b\n\n"

    @pytest.mark.parametrize("brk", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
    def test_trailing_line_break(self, brk):
        assert encode("1-0", "message", f"a{brk}") == b"id: 1-0\ndata: a\ndata: \n\n"

    def test_mixed_and_consecutive_breaks(self):
        assert encode("1-0", "message", "a\r\n\r\nb\n\rc\r\rd") == (
            b"id: 1-0\ndata: a\ndata: \ndata: b\ndata: \ndata: c\ndata: \ndata: d\n\n"
        )
        assert (
            encode("1-0", "message", "\r\r\n") == b"id: 1-0\ndata: \ndata: \ndata: \n\n"
        )
        assert encode("1-0", "message", "\n") == b"id: 1-0\ndata: \ndata: \n\n"

    def test_field_injection_impossible(self):
        wire = encode("1-0", "message", "x\n\nid: 9-9\nevent: evil\r\ndata: y")
        assert wire == (
            b"id: 1-0\ndata: x\ndata: \ndata: id: 9-9\ndata: event: evil\n"
            b"data: data: y\n\n"
        )
        assert wire.count(b"\n\n") == 1 and wire.endswith(b"\n\n")
        assert b"\r" not in wire

    def test_other_unicode_breaks_not_split(self):
        data = "a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g"
        assert (
            encode("1-0", "message", data)
            == b"id: 1-0\ndata: " + data.encode() + b"\n\n"
        )

    def test_unicode(self):
        assert encode("1-0", "événement", "☃ 😀\nü") == (
            "id: 1-0\nevent: événement\ndata: ☃ 😀\ndata: ü\n\n".encode("utf-8")
        )

    def test_spaces_kept(self):
        assert encode("1-0", "message", "  a  ") == b"id: 1-0\ndata:   a  \n\n"


class TestChunk:
    def test_constants(self):
        assert OPENING == b":ok\n\n"
        assert HEARTBEAT == b":\n\n"
        assert FINAL_CHUNK == b"0\r\n\r\n"
        assert chunk(OPENING) == b"5\r\n:ok\n\n\r\n"
        assert HEARTBEAT_CHUNK == b"3\r\n:\n\n\r\n"

    def test_small(self):
        assert chunk(b"hello") == b"5\r\nhello\r\n"
        assert chunk(b"x") == b"1\r\nx\r\n"

    @pytest.mark.parametrize("size", [10, 15, 16, 26, 255, 256, 4096, 65535, 70000])
    def test_size_in_hex(self, size):
        payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        framed = chunk(payload)
        head, crlf, rest = framed.partition(b"\r\n")
        assert crlf == b"\r\n"
        assert re.fullmatch(rb"[0-9a-fA-F]+", head)
        assert int(head, 16) == size
        assert head.lower() == b"%x" % size
        assert rest == payload + b"\r\n"


class TestEvent:
    def test_fields(self):
        target = Target(channels=frozenset({"c"}))
        event = Event("5-1", target, "t", "d")
        assert (event.id, event.target, event.type, event.data) == (
            "5-1",
            target,
            "t",
            "d",
        )

    def test_wire_and_chunk(self):
        event = Event("5-1", Target(), "q1", "a\nb")
        wire = b"id: 5-1\nevent: q1\ndata: a\ndata: b\n\n"
        assert event.wire == wire
        assert event.chunk == b"%x\r\n" % len(wire) + wire + b"\r\n"
        assert len(wire) == 35
        assert event.chunk == b"23\r\n" + wire + b"\r\n"

    def test_wire_cached(self):
        event = Event("5-1", Target(), "message", "x" * 1000)
        first = event.wire
        assert event.wire is first

    def test_chunk_cached(self):
        event = Event("5-1", Target(), "message", "x" * 1000)
        first = event.chunk
        assert event.chunk is first
        assert event.chunk == chunk(event.wire)

    def test_chunk_first_then_wire(self):
        event = Event("5-1", Target(), "message", "hi")
        framed = event.chunk
        assert event.wire == b"id: 5-1\ndata: hi\n\n"
        assert framed == b"12\r\nid: 5-1\ndata: hi\n\n\r\n"
        assert event.wire is event.wire and event.chunk is framed


class FakeClock:
    def __init__(self, *times: float):
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def parts(event_id: str) -> tuple:
    millis, seq = event_id.split("-")
    return int(millis), int(seq)


class TestIdGenerator:
    def test_shape(self):
        gen = IdGenerator(FakeClock(1700000000.5))
        event_id = gen.next()
        assert event_id == "1700000000500-0"
        assert re.fullmatch(r"[0-9]+-[0-9]+", event_id)

    def test_sequence_within_millisecond(self):
        gen = IdGenerator(FakeClock(1.25, 1.25, 1.25, 1.2500001))
        assert [gen.next() for _ in range(4)] == [
            "1250-0",
            "1250-1",
            "1250-2",
            "1250-3",
        ]

    def test_sequence_resets_when_millisecond_advances(self):
        gen = IdGenerator(FakeClock(1.25, 1.25, 1.5, 1.5, 2.0))
        assert [gen.next() for _ in range(5)] == [
            "1250-0",
            "1250-1",
            "1500-0",
            "1500-1",
            "2000-0",
        ]

    def test_clock_going_backwards(self):
        gen = IdGenerator(FakeClock(2.0, 1.0, 0.5, 2.0, 1.5, 3.0, 2.5))
        ids = [gen.next() for _ in range(7)]
        assert ids == [
            "2000-0",
            "2000-1",
            "2000-2",
            "2000-3",
            "2000-4",
            "3000-0",
            "3000-1",
        ]
        assert [parts(i) for i in ids] == sorted(parts(i) for i in ids)
        assert len(set(ids)) == len(ids)

    def test_default_clock_is_wall_time(self):
        import time

        before = int(time.time() * 1000)
        millis, seq = parts(IdGenerator().next())
        after = int(time.time() * 1000)
        assert before <= millis <= after
        assert seq == 0
