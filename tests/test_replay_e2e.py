"""
End-to-end tests of C{Last-Event-ID} replay (SPEC §2.7) against the real
C{twistd -n sseserver}: a subscriber that drops and reconnects with the last id it
saw gets exactly what it missed, in order, then live events; the gap event; ids
that are malformed or newer than anything; replay while events keep coming.

A "witness" all-channel subscriber stays connected and records every event with
its id, so that replays can be compared byte for byte with what was published.
"""

from __future__ import annotations

import socket
import threading
import time

from conftest import END, TIMEOUT, Stream, until_marker

GAP = b"sseserver-gap"


def parse(block: bytes) -> tuple:
    """An event block as (id or None, type or None, data lines joined by LF)."""
    event_id = event_type = None
    data = []
    for line in block.split(b"\n"):
        field, _, value = line.partition(b": ")
        if field == b"id":
            assert event_id is None, block
            event_id = value
        elif field == b"event":
            event_type = value
        else:
            assert field == b"data", block
            data.append(value)
    return event_id, event_type, b"\n".join(data)


def key(event_id: bytes) -> tuple:
    ms, seq = event_id.split(b"-")
    return int(ms), int(seq)


def events_until(stream: Stream, marker: bytes = END) -> list:
    return [parse(b) for b in until_marker(stream, marker)]


def witness_events(witness: Stream, marker: bytes) -> list:
    """The witness's events up to the marker (exclusive), as parsed blocks."""
    found = events_until(witness, marker)
    assert found[-1][2] == marker
    return found


def last_id(stream: Stream) -> bytes:
    ids = [parse(b)[0] for b in stream.data_events()]
    return [i for i in ids if i is not None][-1]


# --- the missed events, exactly, then live ones --------------------------------------------


def test_reconnect_gets_exactly_the_missed_events_then_live_ones(start_server):
    server = start_server()
    witness = Stream(server.port, "/sse")
    first = Stream(server.port, "/sse/a/b")
    server.control(b"a=before 1\nb/t=before 2\nc=not mine\n*=M1\n")
    events_until(first, b"M1")
    seen = last_id(first)
    first.close()

    # 100 events: 50 that reach a subscriber of a and b, 50 that do not.
    mine = ["a", "b", "*", "a*", "b/kind", "a*/kind"]
    others = ["c", "d", "", "x*", "c/kind", "ab"]
    lines, expected = [], []
    for n in range(100):
        if n % 2 == 0:
            target = mine[n // 2 % len(mine)]
            expected.append(n)
        else:
            target = others[n // 2 % len(others)]
        lines.append(f"{target}=event {n}".encode())
    server.control(b"\n".join(lines) + b"\n*=M2\n")
    published = witness_events(witness, b"M2")
    by_data = {data: (i, t, data) for i, t, data in published}
    want = [by_data[f"event {n}".encode()] for n in expected]
    assert len(want) == 50

    again = Stream(server.port, "/sse/a/b", headers={"Last-Event-ID": seen.decode()})
    server.control(b"b=live\n*=" + END + b"\n")
    received = events_until(again)
    assert received[:50] == want
    assert received[50] == by_data[b"M2"]  # M2 was published before the reconnect
    assert [(t, d) for _, t, d in received[51:]] == [(None, b"live"), (None, END)]
    ids = [key(i) for i, _, _ in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert key(received[0][0]) > key(seen)


def test_last_event_id_query_parameter_and_hasses_form(start_server):
    server = start_server()
    witness = Stream(server.port, "/sse")
    server.control(b"room1=one\nroom2=two\nroom3=three\n*=M\n")
    published = witness_events(witness, b"M")
    one = published[0][0].decode()
    path_form = Stream(
        server.port,
        f"/sse/room2/room3?lastEventId={one}",
        headers={"Accept": "text/event-stream"},
    )
    hasses_form = Stream(server.port, f"/sse?subscribe=room3&id=u1&lastEventId={one}")
    server.control(b"*=" + END + b"\n")
    assert events_until(path_form) == published[1:] + [events_until(witness)[-1]]
    assert [d for _, _, d in events_until(hasses_form)] == [b"three", b"M", END]


def test_header_wins_over_query_parameter(start_server):
    server = start_server()
    witness = Stream(server.port, "/sse")
    server.control(b"a=1\na=2\na=3\n*=M\n")
    ids = [i.decode() for i, _, _ in witness_events(witness, b"M")]
    stream = Stream(
        server.port,
        f"/sse/a?lastEventId={ids[0]}",
        headers={"Accept": "text/event-stream", "Last-Event-ID": ids[1]},
    )
    server.control(b"*=" + END + b"\n")
    assert [d for _, _, d in events_until(stream)] == [b"3", b"M", END]


def test_replay_on_http_1_0(start_server):
    server = start_server()
    witness = Stream(server.port, "/sse")
    server.control(b"a=1\na=2 line 1\\nline 2\n*=M\n")
    first_id = witness_events(witness, b"M")[0][0].decode()
    stream = Stream(
        server.port, "/sse/a", version="HTTP/1.0", headers={"Last-Event-ID": first_id}
    )
    assert not stream.chunked
    server.control(b"*=" + END + b"\n")
    assert [d for _, _, d in events_until(stream)] == [b"2 line 1\\nline 2", b"M", END]


# --- the gap --------------------------------------------------------------------------------


def test_an_id_older_than_the_history_gets_the_gap_event_first(start_server):
    server = start_server("--history", "10")
    witness = Stream(server.port, "/sse")
    first = Stream(server.port, "/sse/a")
    server.control(b"a=seen\n")
    events_until(first, b"seen")
    seen = last_id(first)
    first.close()
    # 20 more: 10 to a, 10 to b, alternating; the history keeps the last 10.
    server.control(
        b"".join(b"%s=n%d\n" % (b"ab"[n % 2 : n % 2 + 1], n) for n in range(20))
    )
    published = [e for e in events_until(witness, b"n19") if e[2] != b"seen"]
    assert len(published) == 20
    retained = published[-10:]
    again = Stream(server.port, "/sse/a", headers={"Last-Event-ID": seen.decode()})
    server.control(b"a=" + END + b"\n")
    received = events_until(again)
    assert received[0] == (None, GAP, retained[0][0])
    # the gap event has no id line
    assert again.data_events()[0] == b"event: sseserver-gap\ndata: " + retained[0][0]
    assert received[1:-1] == [
        e for e in retained if e[2] in {b"n%d" % n for n in range(0, 20, 2)}
    ]
    assert [d for _, _, d in received[1:-1]] == [b"n10", b"n12", b"n14", b"n16", b"n18"]
    assert received[-1][2] == END


def test_an_id_at_the_horizon_is_no_gap(start_server):
    """The newest evicted event is the one the subscriber saw: nothing lost."""
    server = start_server("--history", "3")
    witness = Stream(server.port, "/sse")
    server.control(b"a=1\na=2\na=3\na=4\n")
    published = events_until(witness, b"4")
    horizon = published[0][0].decode()  # evicted by the 4th
    stream = Stream(server.port, "/sse/a", headers={"Last-Event-ID": horizon})
    server.control(b"a=" + END + b"\n")
    assert [(t, d) for _, t, d in events_until(stream)] == [
        (None, b"2"),
        (None, b"3"),
        (None, b"4"),
        (None, END),
    ]


def test_an_id_older_than_everything_with_nothing_evicted_is_no_gap(start_server):
    """
    Nothing was evicted (the history has not filled up): an old id, also one from
    before the server started, gets everything retained that matches, no gap.
    """
    server = start_server()
    early = Stream(server.port, "/sse/a", headers={"Last-Event-ID": "1-0"})
    witness = Stream(server.port, "/sse")
    server.control(b"a=first\nb=other\n*=M\n")
    published = witness_events(witness, b"M")
    late = Stream(server.port, "/sse/a", headers={"Last-Event-ID": "1-0"})
    server.control(b"*=" + END + b"\n")
    end = events_until(witness)[-1]
    assert events_until(early) == [published[0], published[2], end]
    assert events_until(late) == [published[0], published[2], end]


# --- ids that give no replay ----------------------------------------------------------------


def test_malformed_ids_are_ignored(start_server):
    server = start_server()
    server.control(b"a=old\n")
    streams = [
        Stream(server.port, "/sse/a", headers={"Last-Event-ID": value})
        for value in ("abc", "1-", "-1", "1-0x", "1 - 0", "1.0-0", "0x1-0")
    ]
    streams.append(
        Stream(
            server.port,
            "/sse/a?lastEventId=1-0-0",
            headers={"Accept": "text/event-stream"},
        )
    )
    streams.append(
        Stream(
            server.port,
            "/sse/a?lastEventId=%31-%",
            headers={"Accept": "text/event-stream"},
        )
    )
    server.control(b"a=" + END + b"\n")
    for stream in streams:
        assert [(t, d) for _, t, d in events_until(stream)] == [(None, END)]


def test_an_id_newer_than_anything_gives_nothing(start_server):
    server = start_server()
    server.control(b"a=old\n")
    stream = Stream(
        server.port, "/sse/a", headers={"Last-Event-ID": "99999999999999-0"}
    )
    huge = Stream(server.port, "/sse/a", headers={"Last-Event-ID": "9" * 100 + "-0"})
    server.control(b"a=" + END + b"\n")
    for s in (stream, huge):
        assert [(t, d) for _, t, d in events_until(s)] == [(None, END)]


def test_history_0_ignores_last_event_id(start_server):
    server = start_server("--history", "0")
    server.control(b"a=old\n")
    stream = Stream(server.port, "/sse/a", headers={"Last-Event-ID": "1-0"})
    server.control(b"a=" + END + b"\n")
    assert [(t, d) for _, t, d in events_until(stream)] == [(None, END)]


def test_retry_comes_before_the_replay(start_server):
    server = start_server("--retry", "2500", "--history", "1")
    server.control(b"a=x\na=y\n")
    stream = Stream(server.port, "/sse/a", headers={"Last-Event-ID": "1-0"})
    server.control(b"a=" + END + b"\n")
    until_marker(stream)
    assert stream.body.startswith(b"retry: 2500\n\nevent: sseserver-gap\ndata: ")


# --- replay while events keep coming ------------------------------------------------------


class Publisher(threading.Thread):
    """Publishes c=0, c=1, ... (and as many others) on one control connection."""

    def __init__(self, port: int, total: int):
        super().__init__(daemon=True)
        self.port = port
        self.total = total
        self.error = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), TIMEOUT) as sock:
                batch = 50
                for start in range(0, self.total, batch):
                    lines = b"".join(
                        b"c=%d\nnoise=%d\n" % (n, n)
                        for n in range(start, min(start + batch, self.total))
                    )
                    sock.sendall(lines)
                    time.sleep(0.001)  # about 20,000 events a second, for 2 s
                sock.sendall(b"c=" + END + b"\n")
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(TIMEOUT * 3)
                while sock.recv(65536):
                    pass
        except Exception as error:  # reported by the test
            self.error = error


def resume(port: int, path: str, received: list) -> Stream:
    """Reconnect as an EventSource does: with the last id received, if any."""
    ids = [i for i, _, _ in received if i is not None]
    headers = {"Last-Event-ID": ids[-1].decode()} if ids else {}
    return Stream(port, path, headers=headers)


def read_some(stream: Stream, count: int) -> tuple:
    """
    Read until C{count} events or the END marker arrived, or the server ended the
    stream; return the complete events and whether the server ended it.
    """

    def enough(body: bytes) -> bool:
        blocks = body.split(b"\n\n")[:-1]
        return (
            stream.finished
            or len(blocks) >= count + 1
            or (bool(blocks) and blocks[-1].endswith(b"\ndata: " + END))
        )

    stream.read_until(enough)
    return [parse(b) for b in stream.data_events()], stream.finished


def test_replay_while_publishing_at_a_high_rate(start_server):
    """
    The subscriber drops and reconnects again and again while another thread
    publishes at a high rate: over all its connections it gets every event of
    its channel once, in order (no gap, no duplicate), checked by data and id.
    """
    server = start_server("--history", "1000000")
    total = 40_000
    publisher = Publisher(server.control_port, total)
    stream = Stream(server.port, "/sse/c")
    publisher.start()
    received = []
    reconnects = during = 0
    deadline = time.monotonic() + 40
    while True:
        # read a little, then drop the connection (unread events are replayed)
        blocks, _ = read_some(stream, 1 + 50 * (reconnects % 4))
        received.extend(blocks)
        if received and received[-1][2] == END:
            break
        assert time.monotonic() < deadline, "publishing took too long"
        stream.close()
        reconnects += 1
        during += publisher.is_alive()
        stream = resume(server.port, "/sse/c", received)
    publisher.join(TIMEOUT)
    assert publisher.error is None, publisher.error
    assert during >= 5, (during, reconnects)
    assert all(t is None for _, t, _ in received)
    data = [d for _, _, d in received]
    assert data == [b"%d" % n for n in range(total)] + [END]
    ids = [key(i) for i, _, _ in received]
    assert all(a < b for a, b in zip(ids, ids[1:]))


def test_a_replay_too_big_for_the_buffer_comes_in_parts(start_server):
    """
    A replay the subscriber cannot take at once ends its stream cleanly after a
    part; reconnecting with the last id received goes on from there, until all
    of it has arrived.
    """
    server = start_server("--history", "5000", "--max-client-buffer", "100000")
    witness = Stream(server.port, "/sse/a")
    payload = b"x" * 2000
    server.control(b"a=first\n")
    received = events_until(witness, b"first")
    witness.close()
    server.control(
        b"".join(b"a=%d %s\n" % (n, payload) for n in range(600)) + b"a=" + END + b"\n"
    )
    parts = 0
    while not (received and received[-1][2] == END):
        stream = resume(server.port, "/sse/a", received)
        time.sleep(0.1)  # let the kernel's buffers fill up: the replay is cut
        blocks, _ = read_some(stream, 10**9)
        stream.close()
        received.extend(blocks)
        parts += 1
        assert parts < 100
    assert parts >= 2, parts
    data = [d for _, _, d in received]
    assert len(data) == 602
    assert data == [b"first"] + [b"%d %s" % (n, payload) for n in range(600)] + [END]
    ids = [key(i) for i, _, _ in received]
    assert all(a < b for a, b in zip(ids, ids[1:]))
