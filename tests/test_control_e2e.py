"""
End-to-end tests of the control port (SPEC §4, §5.1-§5.4, §6) against the real
C{twistd -n sseserver} process, over real sockets.

"Must not receive" checks publish a later marker to everybody (C{*=END}) and
assert exactly what arrived before it.
"""

from __future__ import annotations

import json
import re
import socket

import pytest
from conftest import (
    END,
    ROOT,
    TIMEOUT,
    ControlClient,
    Stream,
    assert_events,
    expect,
    until_marker,
)

DIALECTS = ["hasses", "sse-server"]


def version() -> str:
    text = (ROOT / "sseserver" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text)[1]


def dialect_args(dialect: str) -> list:
    return ["--dialect", dialect]


def assert_closed_without_more(client: ControlClient) -> None:
    """The server sends nothing more before closing once we stop writing."""
    client.sock.shutdown(socket.SHUT_WR)
    rest = client.buffer
    while True:
        data = client.sock.recv(65536)
        if not data:
            break
        rest += data
    assert rest == b""


# --- targets (SPEC §4) under both dialects ---------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_exact_channel(start_server, dialect):
    server = start_server(*dialect_args(dialect))
    room = Stream(server.port, "/sse/room")
    room_query = Stream(server.port, "/sse?subscribe=other-room")
    roomx = Stream(server.port, "/sse/roomx")
    upper = Stream(server.port, "/sse/Room")
    everything = Stream(server.port, "/sse")
    star = Stream(server.port, "/sse?subscribe=*")
    nothing = Stream(server.port, "/sse?subscribe=")
    server.control(b"room=exact\n*=END\n")
    expect(room, [(b"exact", None)])
    expect(room_query, [(b"exact", None)])
    expect(roomx, [])
    expect(upper, [])
    expect(everything, [(b"exact", None)])
    expect(star, [(b"exact", None)])
    expect(nothing, [])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_prefix_target(start_server, dialect):
    server = start_server(*dialect_args(dialect))
    room = Stream(server.port, "/sse/room")
    room1 = Stream(server.port, "/sse?subscribe=room1")
    room2 = Stream(server.port, "/sse/room2")
    both = Stream(server.port, "/sse?subscribe=room1-room2")
    xroom = Stream(server.port, "/sse/xroom")
    other = Stream(server.port, "/sse/ro")
    everything = Stream(server.port, "/sse")
    nothing = Stream(server.port, "/sse?subscribe=")
    server.control(b"room*=pfx\n*=END\n")
    expect(room, [(b"pfx", None)])
    expect(room1, [(b"pfx", None)])
    expect(room2, [(b"pfx", None)])
    expect(both, [(b"pfx", None)])  # at most once per subscriber
    expect(xroom, [])
    expect(other, [])
    expect(everything, [(b"pfx", None)])
    expect(nothing, [])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_star_inside_a_name_is_an_ordinary_character(start_server, dialect):
    server = start_server(*dialect_args(dialect))
    literal = Stream(server.port, "/sse/ro*m")
    room = Stream(server.port, "/sse/room")
    rom = Stream(server.port, "/sse/rom")
    server.control(b"ro*m=lit\n*=END\n")
    expect(literal, [(b"lit", None)])
    expect(room, [])
    expect(rom, [])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_broadcast_reaches_everybody(start_server, dialect):
    server = start_server(*dialect_args(dialect))
    streams = [
        Stream(server.port, "/sse/room"),
        Stream(server.port, "/sse?subscribe=room1-room2&id=u17"),
        Stream(server.port, "/sse"),
        Stream(server.port, "/sse?subscribe=*"),
        Stream(server.port, "/sse?subscribe="),
        Stream(server.port, "/sse?subscribe=&id=u17"),
    ]
    server.control(b"*=to all\n*=END\n")
    for stream in streams:
        expect(stream, [(b"to all", None)])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_empty_target_reaches_all_channel_subscribers_only(start_server, dialect):
    server = start_server(*dialect_args(dialect))
    room = Stream(server.port, "/sse/room")
    everything = Stream(server.port, "/sse/")
    star = Stream(server.port, "/sse?subscribe=*")
    nothing = Stream(server.port, "/sse?subscribe=")
    server.control(b"=x\n = y \n*=END\n")
    expect(room, [])
    expect(everything, [(b"x", None), (b"y", None)])
    expect(star, [(b"x", None), (b"y", None)])
    expect(nothing, [])


def test_exclusion_target_hasses(start_server):
    server = start_server("--dialect", "hasses")
    u17 = Stream(server.port, "/sse?subscribe=room&id=u17")
    u18 = Stream(server.port, "/sse?subscribe=room&id=u18")
    anonymous = Stream(server.port, "/sse?subscribe=room")
    all_u17 = Stream(server.port, "/sse?subscribe=*&id=u17")
    everything = Stream(server.port, "/sse")
    literal = Stream(server.port, "/sse/room-u17")
    other = Stream(server.port, "/sse?subscribe=hall&id=u18")
    server.control(b"room-u17=x\n*=END\n")
    expect(u17, [])
    expect(u18, [(b"x", None)])
    expect(anonymous, [(b"x", None)])
    expect(all_u17, [])
    expect(everything, [(b"x", None)])
    expect(literal, [])
    expect(other, [])


def test_exclusion_form_is_a_plain_channel_in_sse_server_dialect(start_server):
    server = start_server()
    literal = Stream(server.port, "/sse/room-u17")
    u17 = Stream(server.port, "/sse?subscribe=room&id=u17")
    u18 = Stream(server.port, "/sse?subscribe=room&id=u18")
    everything = Stream(server.port, "/sse")
    server.control(b"room-u17=x\n*=END\n")
    expect(literal, [(b"x", None)])
    expect(u17, [])
    expect(u18, [])
    expect(everything, [(b"x", None)])


def test_broadcast_with_exclusion_hasses(start_server):
    server = start_server("--dialect", "hasses")
    u17 = Stream(server.port, "/sse?subscribe=room&id=u17")
    u18 = Stream(server.port, "/sse?subscribe=room&id=u18")
    nothing_u17 = Stream(server.port, "/sse?subscribe=&id=u17")
    nothing_u18 = Stream(server.port, "/sse?subscribe=&id=u18")
    everything = Stream(server.port, "/sse")
    server.control(b"*-u17=x\n*=END\n")
    expect(u17, [])
    expect(u18, [(b"x", None)])
    expect(nothing_u17, [])
    expect(nothing_u18, [(b"x", None)])
    expect(everything, [(b"x", None)])


def test_broadcast_exclusion_form_is_a_plain_channel_in_sse_server_dialect(
    start_server,
):
    server = start_server()
    literal = Stream(server.port, "/sse/*-u17")
    u18 = Stream(server.port, "/sse?subscribe=room&id=u18")
    nothing = Stream(server.port, "/sse?subscribe=")
    everything = Stream(server.port, "/sse")
    server.control(b"*-u17=x\n*=END\n")
    expect(literal, [(b"x", None)])
    expect(u18, [])
    expect(nothing, [])
    expect(everything, [(b"x", None)])


def test_separator_hasses_splits_items(start_server):
    server = start_server("--dialect", "hasses")
    a = Stream(server.port, "/sse?subscribe=a")
    b = Stream(server.port, "/sse?subscribe=b")
    everything = Stream(server.port, "/sse")
    server.control(b"a=1;b=2;\n*=END\n")
    expect(a, [(b"1", None)])
    expect(b, [(b"2", None)])
    expect(everything, [(b"1", None), (b"2", None)])


def test_separator_not_split_in_sse_server_dialect(start_server):
    server = start_server()
    a = Stream(server.port, "/sse/a")
    b = Stream(server.port, "/sse/b")
    everything = Stream(server.port, "/sse")
    server.control(b"a=1;b=2;\n*=END\n")
    expect(a, [(b"1;b=2;", None)])
    expect(b, [])
    expect(everything, [(b"1;b=2;", None)])


def test_custom_separator_with_sse_server_dialect(start_server):
    server = start_server("--separator", ",")
    a = Stream(server.port, "/sse/a")
    b = Stream(server.port, "/sse/b")
    everything = Stream(server.port, "/sse")
    server.control(b"a=1,b=2,\na=x;y\n*=END\n")
    expect(a, [(b"1", None), (b"x;y", None)])
    expect(b, [(b"2", None)])
    expect(everything, [(b"1", None), (b"2", None), (b"x;y", None)])


# --- the seeds' examples ----------------------------------------------------------------


def test_sse_server_seed_four_lines(start_server):
    server = start_server()
    both = Stream(server.port, "/sse/color/page")
    color = Stream(server.port, "/sse/color")
    page = Stream(server.port, "/sse/page")
    number = Stream(server.port, "/sse/number")
    server.control(
        b"color/q1 = go\npage/q1 = go\ncolor/q2 = end\npage/q2 = end\n*=END\n"
    )
    # "clients subscribed to both ... will get the messages twice"
    expect(
        both,
        [(b"go", b"q1"), (b"go", b"q1"), (b"end", b"q2"), (b"end", b"q2")],
    )
    expect(color, [(b"go", b"q1"), (b"end", b"q2")])
    expect(page, [(b"go", b"q1"), (b"end", b"q2")])
    expect(number, [])


def test_sse_server_seed_default_type_is_message(start_server):
    server = start_server()
    channel = Stream(server.port, "/sse/channel")
    server.control(
        b"channel/message = some data here\nchannel = some data here\n"
        b"  channel / other  =  typed  \n*=END\n"
    )
    events = until_marker(channel)
    assert events[0].split(b"\n")[1:] == [b"data: some data here"]
    assert events[1].split(b"\n")[1:] == [b"data: some data here"]
    assert_events(
        events,
        [
            (b"some data here", None),
            (b"some data here", None),
            (b"typed", b"other"),
            (END, None),
        ],
    )


def test_hasses_seed_room1_hello(start_server):
    server = start_server("--dialect", "hasses")
    room1 = Stream(server.port, "/sse?subscribe=room1")
    room2 = Stream(server.port, "/sse?subscribe=room2")
    server.control(b"room1=hello")
    server.control(b"*=END")
    expect(room1, [(b"hello", None)])
    expect(room2, [])


def test_hasses_seed_broadcast_with_trailing_separator(start_server):
    server = start_server("--dialect", "hasses")
    streams = [
        Stream(server.port, "/sse?subscribe=room1"),
        Stream(server.port, "/sse?subscribe=room2&id=rid"),
        Stream(server.port, "/sse?subscribe="),
    ]
    server.control(b"*=msg;")
    server.control(b"*=END;")
    for stream in streams:
        expect(stream, [(b"msg", None)])


def test_hasses_seed_token_except_rid(start_server):
    server = start_server("--dialect", "hasses")
    rid = Stream(server.port, "/sse?subscribe=tok&id=rid")
    other = Stream(server.port, "/sse?subscribe=tok&id=other")
    plain = Stream(server.port, "/sse?subscribe=tok")
    server.control(b"tok-rid=msg")
    server.control(b"*=END")
    expect(rid, [])
    expect(other, [(b"msg", None)])
    expect(plain, [(b"msg", None)])


def test_tcpstatus_known_scenario(start_server):
    server = start_server()
    empty = server.command(b"tcpstatus")
    assert set(empty) >= {
        "version",
        "runningtime",
        "mode",
        "loglevel",
        "allconncli",
        "sseconncli",
        "maxconncli",
        "msgproccnt",
        "msgsendcnt",
    }
    assert {k: empty[k] for k in ("allconncli", "sseconncli", "maxconncli")} == {
        "allconncli": 0,
        "sseconncli": 0,
        "maxconncli": 0,
    }
    assert (empty["msgproccnt"], empty["msgsendcnt"]) == (0, 0)

    room1 = Stream(server.port, "/sse/room1")
    everything = Stream(server.port, "/sse")
    leaving = Stream(server.port, "/sse/room9")
    idle = Stream(server.port, "/sse", method="HEAD")  # open, not a subscriber
    assert idle.status == 200
    mark = server.mark()
    leaving.close()
    server.wait_for_log(r"disconnected", start=mark)
    # room1=a reaches 2, room2=b reaches 1 (all), nobody=c reaches 1 (all), *=d 2.
    server.control(b"room1=a\nroom2=b\nnobody=c\n*=d\n")
    assert len(room1.read_events(2)) == 2
    assert len(everything.read_events(4)) == 4

    status = server.command(b"tcpstatus")
    assert status["version"] == version()
    assert re.fullmatch(r"\d\d:[0-5]\d:[0-5]\d", status["runningtime"])
    expected = {
        "mode": "unencrypted (http)",
        "loglevel": 1,
        "allconncli": 3,
        "sseconncli": 2,
        "maxconncli": 3,
        "msgproccnt": 4,
        "msgsendcnt": 6,
    }
    assert {k: status[k] for k in expected} == expected
    for key in expected:
        if key != "mode":
            assert type(status[key]) is int, (key, status[key])
    assert type(status["version"]) is str and type(status["runningtime"]) is str


def test_tcpstatus_reply_is_one_json_line(start_server):
    server = start_server()
    with ControlClient(server.control_port) as client:
        client.send(b"tcpstatus\n")
        line = client.raw_reply()
        assert line.endswith(b"}\n") and line.count(b"\n") == 1
        assert isinstance(json.loads(line), dict)
        assert_closed_without_more(client)


def test_tcpnumberofclients(start_server):
    server = start_server()
    assert server.command(b"tcpnumberofclients") == {"numberofclients": 0}
    a = Stream(server.port, "/sse/room")
    b = Stream(server.port, "/sse?subscribe=")
    idle = Stream(server.port, "/sse", method="HEAD")
    assert idle.status == 200
    assert server.command(b"tcpnumberofclients") == {"numberofclients": 3}
    mark = server.mark()
    a.close()
    server.wait_for_log(r"disconnected", start=mark)
    assert server.command(b"tcpnumberofclients") == {"numberofclients": 2}
    b.close()
    idle.close()


def test_tcpsubscribedclients(start_server):
    server = start_server()
    assert server.command(b"tcpsubscribedclients:room2") == {
        "subscribedclients": 0,
        "subscribedfor": "room2",
    }
    streams = [
        Stream(server.port, "/sse/room2"),
        Stream(server.port, "/sse?subscribe=room1-room2"),
        Stream(server.port, "/sse/room22"),
        Stream(server.port, "/sse"),  # all-channel subscribers are not counted
        Stream(server.port, "/sse?subscribe=*"),
        Stream(server.port, "/sse/a%22b"),
    ]
    assert server.command(b"tcpsubscribedclients:room2") == {
        "subscribedclients": 2,
        "subscribedfor": "room2",
    }
    assert server.command(b"tcpsubscribedclients:room1") == {
        "subscribedclients": 1,
        "subscribedfor": "room1",
    }
    with ControlClient(server.control_port) as client:
        client.send(b'tcpsubscribedclients:a"b\n')
        line = client.raw_reply()
    assert b'"subscribedfor": "a\\"b"' in line, line
    assert json.loads(line) == {"subscribedclients": 1, "subscribedfor": 'a"b'}
    assert all(not stream.closed for stream in streams)


# --- framing and the line grammar (SPEC §5.1, §5.2, §5.4) --------------------------------


def test_equals_sign_in_data(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/a")
    server.control(b"a=b=c\na = x = y\na==z\n*=END\n")
    expect(room, [(b"b=c", None), (b"x = y", None), (b"=z", None)])


def test_equals_sign_in_data_hasses(start_server):
    server = start_server("--dialect", "hasses")
    room = Stream(server.port, "/sse?subscribe=a")
    server.control(b"a=b=c;a=d=e\n*=END\n")
    expect(room, [(b"b=c", None), (b"d=e", None)])


def test_thousand_lines_in_one_sendall(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    other = Stream(server.port, "/sse/other")
    batch = b"".join(b"room=%d\n" % n for n in range(1000)) + b"*=END\n"
    with socket.create_connection(("127.0.0.1", server.control_port), TIMEOUT) as s:
        s.sendall(batch)
        events = until_marker(room)
    expected = [(b"%d" % n, None) for n in range(1000)] + [(END, None)]
    assert_events(events, expected)
    expect(other, [])


def test_lines_split_across_writes(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    batch = b"".join(b"room=line %d\r\n" % n for n in range(200)) + b"*=END\n"
    with ControlClient(server.control_port) as client:
        for start in range(0, len(batch), 7):
            client.send(batch[start : start + 7])
        events = until_marker(room)
    assert_events(events, [(b"line %d" % n, None) for n in range(200)] + [(END, None)])


def test_last_line_without_newline_counts_on_close(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    server.control(b"room=last")
    server.control(b"room=first\nroom=second")
    server.control(b"*=END")
    expect(room, [(b"last", None), (b"first", None), (b"second", None)])


def test_crlf_lines(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    server.control(b"room=one\r\nroom=two\r\n  room = three  \r\n*=END\r\n")
    events = until_marker(room)
    assert b"\r" not in b"".join(events)
    assert_events(
        events, [(b"one", None), (b"two", None), (b"three", None), (END, None)]
    )


def test_line_length_limit(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    longest = b"room=" + b"x" * (65536 - 5)
    too_long = b"room=" + b"y" * (65537 - 5)
    assert (len(longest), len(too_long)) == (65536, 65537)
    mark = server.mark()
    with ControlClient(server.control_port) as client:
        client.send(longest + b"\n" + too_long + b"\n" + longest + b"\r\n")
        client.send(b"room=after\ntcpnumberofclients\n")
        assert client.reply() == {"error": "line longer than 65536 bytes"}
        # exactly one error: the next reply is the command's
        assert client.reply() == {"numberofclients": 1}
        # the same connection keeps working
        client.send(too_long + b"\r\n" + b"tcpnumberofclients\n")
        assert client.reply() == {"error": "line longer than 65536 bytes"}
        assert client.reply() == {"numberofclients": 1}
        client.send(b"room=still open\n*=END\n")
        events = until_marker(room)
        assert_closed_without_more(client)
    assert_events(
        events,
        [
            (b"x" * 65531, None),
            (b"x" * 65531, None),
            (b"after", None),
            (b"still open", None),
            (END, None),
        ],
    )
    server.wait_for_log(r"rejected: line longer than 65536 bytes$", start=mark)


def test_much_longer_line_is_skipped_to_the_next_newline(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    with ControlClient(server.control_port) as client:
        client.send(b"room=" + b"z" * 300000 + b"\nroom=next\ntcpnumberofclients\n")
        assert client.reply() == {"error": "line longer than 65536 bytes"}
        assert client.reply() == {"numberofclients": 1}
        client.send(b"*=END\n")
        expect(room, [(b"next", None)])


def test_invalid_utf8_and_nul_rejected(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    mark = server.mark()
    with ControlClient(server.control_port) as client:
        client.send(b"room=\xff\xfe bad\nroom=a\x00b\n\x00\ntcpnumberofclients\n")
        assert client.reply() == {"error": "invalid UTF-8 in line"}
        assert client.reply() == {"error": "NUL byte in line"}
        assert client.reply() == {"error": "NUL byte in line"}
        assert client.reply() == {"numberofclients": 1}
        client.send(b"room=fine\n*=END\n")
        expect(room, [(b"fine", None)])
        assert_closed_without_more(client)
    server.wait_for_log(r"rejected: invalid UTF-8 in line$", start=mark)
    server.wait_for_log(r"rejected: NUL byte in line$", start=mark)


def test_unknown_command(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    mark = server.mark()
    with ControlClient(server.control_port) as client:
        client.send(b"bogus\n")
        line = client.raw_reply()
        assert line == b'{"error": "unknown command: \'bogus\'"}\n'
        client.send(b"room=ok\n*=END\n")
        expect(room, [(b"ok", None)])
        assert_closed_without_more(client)
    server.wait_for_log(r"rejected: unknown command: 'bogus'$", start=mark)


def test_publishing_gets_no_reply(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    with ControlClient(server.control_port) as client:
        client.send(b"room=1\n=2\n*=3\nroom*=4\ncolor/q1 = go\n\n   \n")
        client.send(b"tcpnumberofclients\n")
        assert client.reply() == {"numberofclients": 1}
        client.send(b"*=END\n")
        expect(room, [(b"1", None), (b"3", None), (b"4", None)])
        assert_closed_without_more(client)


def test_halt_refused_without_allow_commands(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    mark = server.mark()
    with ControlClient(server.control_port) as client:
        client.send(b"halt\n")
        reply = client.reply()
        assert list(reply) == ["error"]
        assert (
            reply["error"].startswith("halt: ") and "--allow-commands" in reply["error"]
        )
        client.send(b"tcpnumberofclients\n")
        assert client.reply() == {"numberofclients": 1}
    server.wait_for_log(r"rejected: halt: .*--allow-commands", start=mark)
    server.control(b"room=still running\n*=END\n")
    expect(room, [(b"still running", None)])
    assert server.process.poll() is None
    assert not room.finished


def test_error_in_one_item_rejects_the_whole_line_hasses(start_server):
    server = start_server("--dialect", "hasses")
    room = Stream(server.port, "/sse?subscribe=room")
    with ControlClient(server.control_port) as client:
        client.send(b"room=1;bogus;room=2\ntcpnumberofclients\n")
        assert client.reply() == {"error": "unknown command: 'bogus'"}
        assert client.reply() == {"numberofclients": 1}
        client.send(b"*=END\n")
        expect(room, [])
