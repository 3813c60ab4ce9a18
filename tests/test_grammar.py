"""
Unit tests for L{sseserver.grammar}: names, targets, control lines, URLs, queries,
subscriptions and HTTP publishes (SPEC §2.1, §3, §4, §5.2, §5.3, §5.5, §6).
"""

from __future__ import annotations

import pytest

from sseserver.grammar import (
    HASSES,
    MAX_CHANNELS,
    MAX_DATA_BYTES,
    MAX_LINE_BYTES,
    MAX_NAME_BYTES,
    SSE_SERVER,
    Command,
    Message,
    ProtocolError,
    Publish,
    Route,
    Subscription,
    Target,
    TooLarge,
    accepts_event_stream,
    check_data,
    check_name,
    check_type,
    is_subscription,
    parse_line,
    parse_publish,
    parse_subscription,
    parse_target,
    route,
    split_query,
)

C0_AND_DEL = [chr(c) for c in range(0x20)] + ["\x7f"]


def channel(*names: str, exclude=None) -> Target:
    return Target(channels=frozenset(names), exclude=exclude)


# --- limits -----------------------------------------------------------------------------


def test_limits_constants():
    assert (MAX_NAME_BYTES, MAX_CHANNELS, MAX_DATA_BYTES, MAX_LINE_BYTES) == (
        256,
        256,
        65536,
        65536,
    )


class TestCheckName:
    @pytest.mark.parametrize(
        "name",
        [
            "a",
            "x" * 256,
            "é" * 128,
            "€" * 85 + "a",
            "😀" * 64,
            "a*b",
            "room-u17",
            "a b",
        ],
    )
    def test_accepted_up_to_256_bytes(self, name):
        assert len(name.encode("utf-8")) <= 256
        assert check_name(name) == name

    @pytest.mark.parametrize("name", ["x" * 257, "é" * 128 + "a", "😀" * 64 + "a"])
    def test_257_bytes_rejected(self, name):
        assert len(name.encode("utf-8")) == 257
        with pytest.raises(ProtocolError) as info:
            check_name(name)
        assert str(info.value) == "channel name longer than 256 bytes"
        assert info.value.status == 400

    def test_empty_rejected(self):
        with pytest.raises(ProtocolError) as info:
            check_name("")
        assert str(info.value) == "empty channel name"

    @pytest.mark.parametrize("char", C0_AND_DEL, ids=lambda c: "%02x" % ord(c))
    def test_c0_and_del_rejected(self, char):
        for name in (char, "a" + char, char + "a", "ab" + char + "cd"):
            with pytest.raises(ProtocolError) as info:
                check_name(name)
            assert str(info.value) == "control character in channel name"
            assert info.value.status == 400

    def test_non_control_characters_accepted(self):
        # Space, the printable ASCII range, C1 and other Unicode are not C0/DEL.
        name = "".join(chr(c) for c in range(0x20, 0x7F)) + "\x80\x9f\xa0\u2028é"
        assert len(name) == 100
        assert check_name(name[:50]) == name[:50]
        assert check_name(name[50:]) == name[50:]

    def test_what_names_the_thing_in_the_reason(self):
        with pytest.raises(ProtocolError) as info:
            check_name("", "client id")
        assert "client id" in str(info.value)


class TestCheckType:
    @pytest.mark.parametrize("name", ["message", "q1", "x" * 256, "é" * 128, "a b"])
    def test_accepted_up_to_256_bytes(self, name):
        assert check_type(name) == name

    @pytest.mark.parametrize("name", ["x" * 257, "é" * 128 + "a"])
    def test_257_bytes_rejected(self, name):
        with pytest.raises(ProtocolError) as info:
            check_type(name)
        assert info.value.status == 400
        assert not isinstance(info.value, TooLarge)

    def test_empty_rejected(self):
        with pytest.raises(ProtocolError):
            check_type("")

    @pytest.mark.parametrize("char", ["\r", "\n", "\0"], ids=["CR", "LF", "NUL"])
    def test_cr_lf_nul_rejected(self, char):
        for name in (char, "a" + char, char + "a", "a" + char + "b"):
            with pytest.raises(ProtocolError) as info:
                check_type(name)
            assert info.value.status == 400

    def test_every_c0_and_del_rejected(self):
        # SPEC §2.1: "A name (channel, event type, client id) is 1-256 bytes of UTF-8
        # with no C0 control character (0x00-0x1F) and no DEL".
        accepted = []
        for char in C0_AND_DEL:
            try:
                check_type("a" + char + "b")
            except ProtocolError:
                continue
            accepted.append("%02x" % ord(char))
        assert accepted == []


class TestCheckData:
    @pytest.mark.parametrize(
        "data",
        [
            "",
            "x",
            "a\nb\r\nc\rd",
            "x" * 65536,
            "é" * 32768,
            "😀" * 16384,
            "€" * 21845 + "a",
        ],
        ids=["empty", "x", "newlines", "ascii", "2-byte", "4-byte", "3-byte"],
    )
    def test_up_to_65536_bytes_pass(self, data):
        assert len(data.encode("utf-8")) <= 65536
        assert check_data(data) == data

    @pytest.mark.parametrize(
        "data",
        [
            "x" * 65537,
            "é" * 32768 + "a",
            "😀" * 16384 + "a",
            "😀" * 16385,
            "x" * 200000,
        ],
        ids=["ascii", "2-byte", "4-byte+1", "4-byte+4", "huge"],
    )
    def test_over_65536_bytes_too_large(self, data):
        with pytest.raises(TooLarge) as info:
            check_data(data)
        assert info.value.status == 413
        assert isinstance(info.value, ProtocolError)
        assert str(info.value) == "data longer than 65536 bytes"

    def test_nul_rejected_with_400(self):
        with pytest.raises(ProtocolError) as info:
            check_data("a\0b")
        assert info.value.status == 400
        assert not isinstance(info.value, TooLarge)


# --- targets ----------------------------------------------------------------------------


class TestParseTarget:
    @pytest.mark.parametrize("dialect", [SSE_SERVER, HASSES])
    def test_common_forms(self, dialect):
        assert parse_target("color", dialect) == Target(channels=frozenset({"color"}))
        assert parse_target("room*", dialect) == Target(prefixes=("room",))
        assert parse_target("*", dialect) == Target(everyone=True)
        assert parse_target("", dialect) == Target()
        assert parse_target("a*b", dialect) == Target(channels=frozenset({"a*b"}))
        assert parse_target("*a", dialect) == Target(channels=frozenset({"*a"}))
        assert parse_target("Color", dialect) == Target(channels=frozenset({"Color"}))

    def test_empty_target_fields(self):
        target = parse_target("")
        assert (target.channels, target.prefixes, target.everyone, target.exclude) == (
            frozenset(),
            (),
            False,
            None,
        )

    def test_hasses_exclusion(self):
        assert parse_target("room-u17", HASSES) == Target(
            channels=frozenset({"room"}), exclude="u17"
        )
        assert parse_target("*-u17", HASSES) == Target(everyone=True, exclude="u17")
        assert parse_target("room*-u17", HASSES) == Target(
            prefixes=("room",), exclude="u17"
        )

    def test_sse_server_keeps_dash_in_channel(self):
        assert parse_target("room-u17", SSE_SERVER) == Target(
            channels=frozenset({"room-u17"})
        )
        assert parse_target("room-u17") == Target(channels=frozenset({"room-u17"}))
        # Not ending in "*": an ordinary channel name in this dialect.
        assert parse_target("*-u17", SSE_SERVER) == Target(
            channels=frozenset({"*-u17"})
        )

    def test_name_limits(self):
        assert parse_target("x" * 256) == Target(channels=frozenset({"x" * 256}))
        assert parse_target("x" * 256 + "*") == Target(prefixes=("x" * 256,))
        for bad in ("x" * 257, "x" * 257 + "*", "a\x01", "a\x7f*"):
            with pytest.raises(ProtocolError):
                parse_target(bad)

    def test_hasses_bad_client_id(self):
        for bad in ("room-", "room-a\x01", "room-" + "x" * 257):
            with pytest.raises(ProtocolError):
                parse_target(bad, HASSES)


# --- control lines ----------------------------------------------------------------------


class TestParseLineMessages:
    def test_spec_examples(self):
        assert parse_line(b"color/q1 = go") == [Message(channel("color"), "q1", "go")]
        assert parse_line(b"channel = some data") == [
            Message(channel("channel"), "message", "some data")
        ]
        assert parse_line(b"*=hello everyone") == [
            Message(Target(everyone=True), "message", "hello everyone")
        ]
        assert parse_line(b"room*=hi") == [
            Message(Target(prefixes=("room",)), "message", "hi")
        ]

    def test_empty_target(self):
        assert parse_line(b"=hello") == [Message(Target(), "message", "hello")]
        assert parse_line(b"/q1=go") == [Message(Target(), "q1", "go")]

    def test_split_at_first_equals(self):
        assert parse_line(b"a=b=c") == [Message(channel("a"), "message", "b=c")]
        assert parse_line(b"a==b") == [Message(channel("a"), "message", "=b")]
        assert parse_line(b"a = x = y == z") == [
            Message(channel("a"), "message", "x = y == z")
        ]
        assert parse_line(b"a/t=k=v") == [Message(channel("a"), "t", "k=v")]

    def test_split_at_first_slash(self):
        assert parse_line(b"a/b/c=x") == [Message(channel("a"), "b/c", "x")]
        assert parse_line(b"a=x/y") == [Message(channel("a"), "message", "x/y")]

    def test_spaces_and_tabs_ignored(self):
        expected = [Message(channel("color"), "q1", "go")]
        for raw in (
            b"color/q1=go",
            b"color / q1 = go",
            b"\tcolor\t/\tq1\t=\tgo\t",
            b"  color  /q1=  go  ",
            b" \t color/q1 \t= \t go \t ",
        ):
            assert parse_line(raw) == expected, raw

    def test_inner_spaces_kept(self):
        assert parse_line(b"a =  x  y  ") == [Message(channel("a"), "message", "x  y")]

    def test_empty_data(self):
        assert parse_line(b"a=") == [Message(channel("a"), "message", "")]
        assert parse_line(b"a =   ") == [Message(channel("a"), "message", "")]

    def test_cr_inside_data_kept(self):
        assert parse_line(b"a=x\ry") == [Message(channel("a"), "message", "x\ry")]

    def test_unicode(self):
        raw = "café/ünï = ☃ 😀".encode("utf-8")
        assert parse_line(raw) == [Message(channel("café"), "ünï", "☃ 😀")]

    def test_empty_lines_ignored(self):
        for raw in (b"", b" ", b"\t", b" \t \t "):
            assert parse_line(raw) == []

    def test_bad_type(self):
        for raw in (b"a/=x", b"a/ \t =x", ("a/" + "t" * 257 + "=x").encode()):
            with pytest.raises(ProtocolError) as info:
                parse_line(raw)
            assert info.value.status == 400

    def test_bad_target(self):
        for raw in (b"a\x01=x", ("x" * 257 + "=y").encode(), b"a\x7f/t=x"):
            with pytest.raises(ProtocolError):
                parse_line(raw)

    def test_dialects_for_dash(self):
        assert parse_line(b"room-u17=x") == [
            Message(channel("room-u17"), "message", "x")
        ]
        assert parse_line(b"room-u17=x", SSE_SERVER) == [
            Message(channel("room-u17"), "message", "x")
        ]
        assert parse_line(b"room-u17=x", HASSES) == [
            Message(channel("room", exclude="u17"), "message", "x")
        ]
        assert parse_line(b"*-u17 = x", HASSES) == [
            Message(Target(everyone=True, exclude="u17"), "message", "x")
        ]
        # A "-" in the data is not a target.
        assert parse_line(b"room=a-b", HASSES) == [
            Message(channel("room"), "message", "a-b")
        ]


class TestParseLineCommands:
    @pytest.mark.parametrize(
        "name",
        [
            "status",
            "tcpstatus",
            "clientlist",
            "numberofclients",
            "tcpnumberofclients",
            "loglevel_quiet",
            "loglevel_normal",
            "loglevel_debug",
            "reinit_enable",
            "reinit_disable",
            "halt",
        ],
    )
    def test_plain_commands(self, name):
        assert parse_line(name.encode()) == [Command(name)]
        assert parse_line(f" \t{name}\t ".encode()) == [Command(name, None)]

    def test_argument_commands(self):
        assert parse_line(b"subscribedclients:room2") == [
            Command("subscribedclients", "room2")
        ]
        assert parse_line(b"tcpsubscribedclients:room2") == [
            Command("tcpsubscribedclients", "room2")
        ]
        assert parse_line('tcpsubscribedclients:sal"le'.encode()) == [
            Command("tcpsubscribedclients", 'sal"le')
        ]

    def test_argument_command_needs_valid_channel(self):
        for raw in (b"subscribedclients:", b"tcpsubscribedclients:a\x01"):
            with pytest.raises(ProtocolError):
                parse_line(raw)

    def test_unknown_command_reason(self):
        with pytest.raises(ProtocolError) as info:
            parse_line(b"frobnicate")
        assert str(info.value) == "unknown command: 'frobnicate'"
        assert info.value.status == 400

    def test_argument_on_plain_command_is_unknown(self):
        with pytest.raises(ProtocolError) as info:
            parse_line(b"status:x")
        assert str(info.value) == "unknown command: 'status:x'"
        with pytest.raises(ProtocolError) as info:
            parse_line(b"subscribedclients")
        assert str(info.value) == "unknown command: 'subscribedclients'"

    def test_long_unknown_command_shortened(self):
        with pytest.raises(ProtocolError) as info:
            parse_line(b"z" * 1000)
        assert str(info.value) == "unknown command: " + repr("z" * 64 + "...")


class TestParseLineSeparator:
    def test_sse_server_dialect_one_event(self):
        assert parse_line(b"a=1;b=2;") == [Message(channel("a"), "message", "1;b=2;")]

    def test_hasses_splits_at_separator(self):
        expected = [
            Message(channel("a"), "message", "1"),
            Message(channel("b"), "message", "2"),
        ]
        assert parse_line(b"a=1;b=2;", HASSES, ";") == expected
        assert parse_line(b" a = 1 ; b = 2 ; ", HASSES, ";") == expected

    def test_separator_with_sse_server_dialect(self):
        assert parse_line(b"a=1;b=2;", SSE_SERVER, ";") == [
            Message(channel("a"), "message", "1"),
            Message(channel("b"), "message", "2"),
        ]
        assert parse_line(b"a=1,b-c=2", SSE_SERVER, ",") == [
            Message(channel("a"), "message", "1"),
            Message(channel("b-c"), "message", "2"),
        ]

    def test_empty_items_ignored(self):
        assert parse_line(b";;a=1;; ;\t;", HASSES, ";") == [
            Message(channel("a"), "message", "1")
        ]
        assert parse_line(b";;;", HASSES, ";") == []

    def test_commands_and_messages_in_order(self):
        assert parse_line(b"status;x-u1=2;tcpsubscribedclients:x", HASSES, ";") == [
            Command("status"),
            Message(channel("x", exclude="u1"), "message", "2"),
            Command("tcpsubscribedclients", "x"),
        ]

    @pytest.mark.parametrize(
        "raw", [b"a=1;frob;b=2", b"a=1;b/=2", b"a=1;b-=2", b"a=1;\x01=2"]
    )
    def test_bad_item_fails_whole_line(self, raw):
        with pytest.raises(ProtocolError):
            parse_line(raw, HASSES, ";")


class TestParseLineBytes:
    def test_invalid_utf8(self):
        for raw in (b"a=\xff", b"\xc3=x", b"a=\xed\xa0\x80", b"\xe2\x82"):
            with pytest.raises(ProtocolError) as info:
                parse_line(raw)
            assert str(info.value) == "invalid UTF-8 in line"
            assert info.value.status == 400

    def test_nul(self):
        for raw in (b"a=b\x00c", b"\x00", b"status\x00"):
            with pytest.raises(ProtocolError) as info:
                parse_line(raw)
            assert info.value.status == 400

    def test_65536_byte_line_passes(self):
        raw = b"a=" + b"x" * (65536 - 2)
        assert len(raw) == 65536
        assert parse_line(raw) == [Message(channel("a"), "message", "x" * 65534)]

    def test_65536_byte_line_with_padding(self):
        raw = b"a=x" + b" " * (65536 - 3)
        assert parse_line(raw) == [Message(channel("a"), "message", "x")]

    def test_65537_byte_line_too_large(self):
        for raw in (b"a=" + b"x" * (65537 - 2), b"a=x" + b" " * (65537 - 3)):
            assert len(raw) == 65537
            with pytest.raises(TooLarge) as info:
                parse_line(raw)
            assert info.value.status == 413
            assert str(info.value) == "line longer than 65536 bytes"


# --- URLs -------------------------------------------------------------------------------


class TestRoute:
    def test_prefix_itself(self):
        assert route(b"/sse", b"/sse") == Route("prefix", (), None)
        assert route(b"/sse/", b"/sse") == Route("prefix", (), None)
        assert route(b"/sse//", b"/sse") == Route("prefix", (), None)

    def test_segments(self):
        assert route(b"/sse/color/number/page", b"/sse") == Route(
            "prefix", ("color", "number", "page"), None
        )
        assert route(b"/sse/a//b", b"/sse") == Route("prefix", ("a", "b"), None)
        assert route(b"/sse//a///b/", b"/sse") == Route("prefix", ("a", "b"), None)

    def test_segment_boundary(self):
        assert route(b"/ssefoo", b"/sse") == Route("notfound")
        assert route(b"/ssefoo/a", b"/sse") == Route("notfound")
        assert route(b"/ss", b"/sse") == Route("notfound")
        assert route(b"/other", b"/sse") == Route("notfound")
        assert route(b"/ssefoo?subscribe=a", b"/sse") == Route("notfound", (), None)

    def test_percent_decoding(self):
        assert route(b"/sse/a%20b/c%2Fd/e+f/%C3%A9/%2B", b"/sse") == Route(
            "prefix", ("a b", "c/d", "e+f", "é", "+"), None
        )

    def test_percent_decoded_invalid_utf8(self):
        with pytest.raises(ProtocolError) as info:
            route(b"/sse/%FF", b"/sse")
        assert info.value.status == 400

    def test_root(self):
        assert route(b"/", b"/sse") == Route("root", (), None)
        assert route(b"/?x=1", b"/sse") == Route("root", (), b"x=1")

    def test_query_split(self):
        assert route(b"/sse?subscribe=a-b&id=u17", b"/sse") == Route(
            "prefix", (), b"subscribe=a-b&id=u17"
        )
        assert route(b"/sse/color?message=first", b"/sse") == Route(
            "prefix", ("color",), b"message=first"
        )
        assert route(b"/sse?", b"/sse") == Route("prefix", (), b"")
        assert route(b"/sse/x?y=1?z/w", b"/sse") == Route("prefix", ("x",), b"y=1?z/w")

    def test_other_prefixes(self):
        assert route(b"/sse/a", b"/sse/") == Route("prefix", ("a",), None)
        assert route(b"/a/b/c", b"/a/b") == Route("prefix", ("c",), None)
        assert route(b"/a/bc", b"/a/b") == Route("notfound")
        assert route(b"/a", b"/a/b") == Route("notfound")


class TestSplitQuery:
    def test_empty(self):
        assert split_query(None) == []
        assert split_query(b"") == []
        assert split_query(b"&;&&;") == []

    def test_separators(self):
        assert split_query(b"a=1&b=2;c=3") == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]

    def test_without_equals_is_none(self):
        assert split_query(b"status&a=&b") == [
            (b"status", None),
            (b"a", b""),
            (b"b", None),
        ]

    def test_first_equals(self):
        assert split_query(b"a=b=c&=d") == [(b"a", b"b=c"), (b"", b"d")]

    def test_raw_not_decoded(self):
        assert split_query(b"a%3D=%26+x") == [(b"a%3D", b"%26+x")]


class TestIsSubscription:
    def test_accept_header(self):
        assert accepts_event_stream(b"text/event-stream") is True
        assert accepts_event_stream(b"Text/Event-Stream") is True
        assert accepts_event_stream(b"text/html, text/event-stream;q=0.9") is True
        assert accepts_event_stream(b"*/*") is False
        assert accepts_event_stream(b"") is False
        assert accepts_event_stream(None) is False

    @pytest.mark.parametrize(
        "query",
        [
            None,  # GET /sse/color/number/page, GET /sse
            b"subscribe=room1-room2&id=u17",
            b"subscribe=*",
            b"subscribe=",
            b"subscribe",
            b"subscribe=a&message=x",
            b"sub%73cribe=a",
        ],
    )
    def test_subscriptions_without_accept(self, query):
        assert is_subscription(split_query(query), False) is True

    def test_query_on_path_is_publish(self):
        assert is_subscription(split_query(b"id=u17"), False) is False
        assert is_subscription(split_query(b"lastEventId=1-0"), False) is False
        assert is_subscription(split_query(b"message=first"), False) is False
        assert is_subscription(split_query(b"q1=go&q2=end"), False) is False
        assert is_subscription(split_query(b"status"), False) is False

    def test_accept_makes_any_query_a_subscription(self):
        assert is_subscription(split_query(b"message=first"), True) is True
        assert is_subscription(split_query(b"status"), True) is True
        assert is_subscription([], True) is True


class TestParseSubscription:
    def test_path_channels(self):
        assert parse_subscription(("color", "number", "page"), []) == Subscription(
            ("color", "number", "page"), False, None, None
        )

    def test_bare_prefix_is_all(self):
        assert parse_subscription((), []) == Subscription((), True, None, None)

    def test_hasses_subscribe(self):
        params = split_query(b"subscribe=room1-room2&id=u17")
        assert parse_subscription((), params) == Subscription(
            ("room1", "room2"), False, "u17", None
        )

    def test_subscribe_star(self):
        assert parse_subscription((), split_query(b"subscribe=*")) == Subscription(
            (), True, None, None
        )
        assert parse_subscription((), split_query(b"subscribe=a-*-b")) == Subscription(
            (), True, None, None
        )

    def test_subscribe_empty(self):
        sub = parse_subscription((), split_query(b"subscribe="))
        assert sub == Subscription((), False, None, None)
        assert sub.all_channels is False and sub.channels == ()

    def test_pieces_decoded_after_split(self):
        params = split_query(b"subscribe=a%2Db-c%20d-e+f-%C3%A9")
        assert parse_subscription((), params).channels == ("a-b", "c d", "e+f", "é")

    def test_empty_pieces_skipped(self):
        params = split_query(b"subscribe=-a--b-")
        assert parse_subscription((), params).channels == ("a", "b")

    def test_duplicates_once(self):
        params = split_query(b"subscribe=a-b-a")
        assert parse_subscription(("b",), params).channels == ("b", "a")

    def test_path_and_subscribe_combined(self):
        params = split_query(b"subscribe=x&id=me")
        assert parse_subscription(("p",), params) == Subscription(
            ("p", "x"), False, "me", None
        )

    def test_last_event_id_and_empty_id(self):
        params = split_query(b"id=&lastEventId=170-3")
        assert parse_subscription(("c",), params) == Subscription(
            ("c",), False, None, "170-3"
        )

    def test_client_id_decoded_and_checked(self):
        assert parse_subscription((), split_query(b"id=u%2017")).client_id == "u 17"
        for bad in (b"id=a%0Ab", b"id=" + b"x" * 257, b"id=%FF"):
            with pytest.raises(ProtocolError):
                parse_subscription((), split_query(bad))

    def test_256_channels_ok_257_rejected(self):
        names = [f"c{i}" for i in range(257)]
        ok = parse_subscription(tuple(names[:256]), [])
        assert ok.channels == tuple(names[:256])
        with pytest.raises(ProtocolError) as info:
            parse_subscription(tuple(names), [])
        assert str(info.value) == "more than 256 channels"
        query = ("subscribe=" + "-".join(names)).encode()
        with pytest.raises(ProtocolError):
            parse_subscription((), split_query(query))

    @pytest.mark.parametrize(
        "query",
        [
            b"subscribe=a%01",
            b"subscribe=a-%7F",
            b"subscribe=%FF",
            b"subscribe=" + b"x" * 257,
        ],
    )
    def test_bad_channel(self, query):
        with pytest.raises(ProtocolError) as info:
            parse_subscription((), split_query(query))
        assert info.value.status == 400

    def test_bad_path_channel(self):
        with pytest.raises(ProtocolError):
            parse_subscription(("ok", "a\x1f"), [])

    def test_accept_with_path_and_query(self):
        # GET /sse/color?message=first with Accept: text/event-stream
        r = route(b"/sse/color?message=first&id=u1&lastEventId=5-1", b"/sse")
        params = split_query(r.query)
        assert is_subscription(params, True) is True
        assert parse_subscription(r.segments, params) == Subscription(
            ("color",), False, "u1", "5-1"
        )

    def test_accept_on_prefix_with_foreign_query_is_all(self):
        params = split_query(b"message=first")
        assert parse_subscription((), params) == Subscription((), True, None, None)


class TestParsePublish:
    def test_two_events_in_order(self):
        r = route(b"/sse/color/page?q1=go&q2=end", b"/sse")
        target = channel("color", "page")
        assert parse_publish(r.segments, split_query(r.query)) == Publish(
            (Message(target, "q1", "go"), Message(target, "q2", "end")), None
        )

    def test_semicolon_and_repeated_key(self):
        assert parse_publish(("c",), split_query(b"m=1;m=2&m=3")) == Publish(
            tuple(Message(channel("c"), "m", d) for d in "123"), None
        )

    def test_no_channel_goes_to_all_channel_subscribers(self):
        assert parse_publish((), split_query(b"message=hi")) == Publish(
            (Message(Target(), "message", "hi"),), None
        )

    def test_token_consumed(self):
        assert parse_publish(("c",), split_query(b"q1=go&token=s3cr%65t+x")) == Publish(
            (Message(channel("c"), "q1", "go"),), "s3cret+x"
        )
        assert parse_publish(("c",), split_query(b"token=abc")) == Publish((), "abc")

    def test_command(self):
        assert parse_publish((), split_query(b"status")) == Publish(
            (Command("status"),), None
        )
        assert parse_publish(
            ("c",), split_query(b"a=1&subscribedclients:room2")
        ) == Publish(
            (Message(channel("c"), "a", "1"), Command("subscribedclients", "room2")),
            None,
        )

    def test_unknown_command(self):
        with pytest.raises(ProtocolError) as info:
            parse_publish((), split_query(b"a=1&frob"))
        assert str(info.value) == "unknown command: 'frob'"

    @pytest.mark.parametrize(
        "query", [b"a%0Ab=x", b"a%0D=x", b"a%00=x", b"=x", b"ok=1&%0A=2", b"%FF=x"]
    )
    def test_bad_type(self, query):
        with pytest.raises(ProtocolError) as info:
            parse_publish(("c",), split_query(query))
        assert info.value.status == 400

    def test_data_decoding(self):
        assert parse_publish(
            ("c",), split_query(b"m=line1%0Aline2%0D%0Al3")
        ) == Publish((Message(channel("c"), "m", "line1\nline2\r\nl3"),), None)
        assert parse_publish(("c",), split_query(b"m=a+b%2Bc%20d=e")) == Publish(
            (Message(channel("c"), "m", "a+b+c d=e"),), None
        )
        assert parse_publish(("c",), split_query(b"m=")) == Publish(
            (Message(channel("c"), "m", ""),), None
        )

    def test_data_limits(self):
        ok = parse_publish(("c",), split_query(b"m=" + b"x" * 65536))
        assert ok.items[0].data == "x" * 65536
        ok = parse_publish(("c",), split_query(b"m=" + b"%C3%A9" * 32768))
        assert ok.items[0].data == "é" * 32768
        for query in (b"m=" + b"x" * 65537, b"m=" + b"%C3%A9" * 32768 + b"x"):
            with pytest.raises(TooLarge) as info:
                parse_publish(("c",), split_query(query))
            assert info.value.status == 413

    def test_data_invalid(self):
        for query in (b"m=%FF", b"m=a%00b"):
            with pytest.raises(ProtocolError) as info:
                parse_publish(("c",), split_query(query))
            assert info.value.status == 400

    def test_bad_channel(self):
        with pytest.raises(ProtocolError):
            parse_publish(("a\x01",), split_query(b"m=1"))
        with pytest.raises(ProtocolError):
            parse_publish(("x" * 257,), split_query(b"m=1"))
