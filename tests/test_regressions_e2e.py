"""
End-to-end regression tests: one per bug of the two predecessor daemons listed in
SPEC §10 (hasses and SSE-Server), against the real C{twistd -n sseserver} process
over real sockets.

"Must not receive" checks publish a later marker event (C{END}) and assert exactly
what arrived before it; nothing here asserts on timing.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import threading
import time
from unittest import mock

import pytest
import trustme
from conftest import (
    END,
    TIMEOUT,
    ControlClient,
    Server,
    Stream,
    expect,
    fifo_write,
)

# --- helpers ------------------------------------------------------------------------------


def request_bytes(target: str = "/sse", headers: dict | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def stream_on(sock, parts=(), pause: float = 0.2, **kwargs) -> Stream:
    """
    A L{Stream} over an already connected socket (plain or TLS): C{parts} of the
    request are sent one by one with C{pause} seconds between them (each its own
    TCP segment), then the response is read as by L{Stream}.
    """
    for index, part in enumerate(parts):
        if index:
            time.sleep(pause)
        sock.sendall(part)
    with mock.patch.object(socket, "create_connection", lambda *a, **k: sock):
        return Stream(0, request=b"", **kwargs)


def nodelay_socket(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A connected TCP socket sending every write at once; a small receive buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # set before connecting, so that the advertised window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def slow_subscriber(port: int, target: str = "/sse") -> Stream:
    """A subscriber with a tiny receive buffer; the test simply stops reading it."""
    return stream_on(nodelay_socket(port, rcvbuf=4096), [request_bytes(target)])


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_for_count(server, expected: int, key="numberofclients", line=None) -> dict:
    """Ask C{line} until C{key} in the reply is C{expected}; return the reply."""
    line = line or b"tcpnumberofclients"
    deadline = time.monotonic() + TIMEOUT
    while True:
        reply = server.command(line)
        if reply[key] == expected or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


def assert_alive(server) -> None:
    assert server.process.poll() is None, "\n".join(server.lines)
    assert server.command(b"tcpstatus")["version"]


def dechunk(raw: bytes):
    """
    Strictly decode a chunked body: hexadecimal size, CRLF, exactly that many
    bytes, CRLF.  Returns (body, complete) where complete means C{raw} ends at a
    chunk boundary.
    """
    out, pos = [], 0
    while pos < len(raw):
        end = raw.find(b"\r\n", pos)
        if end < 0:
            return b"".join(out), False
        size_text = raw[pos:end]
        assert re.fullmatch(rb"[0-9a-fA-F]+", size_text), raw[pos : pos + 40]
        size = int(size_text, 16)
        if len(raw) < end + 2 + size + 2:
            return b"".join(out), False
        out.append(raw[end + 2 : end + 2 + size])
        assert raw[end + 2 + size : end + 4 + size] == b"\r\n", (
            f"chunk of {size} bytes not followed by CRLF"
        )
        pos = end + 4 + size
    return b"".join(out), True


def read_big(stream: Stream, marker: bytes = END, timeout: float = 30.0) -> bytes:
    """
    Read a large chunked stream fast (no per-read parsing) until the C{marker}
    event is complete; return the whole strictly de-chunked body so far.  Calls
    may be repeated on one stream with later markers.
    """
    needle = b"\ndata: " + marker + b"\n\n"
    raw = getattr(stream, "fast_raw", None)
    if raw is None:
        raw = stream.fast_raw = bytearray(stream._chunk_buffer)
        stream._chunk_buffer = b""
    deadline = time.monotonic() + timeout
    searched = 0
    while True:
        if raw.find(needle, max(0, searched - len(needle) - 8)) >= 0:
            body, _ = dechunk(bytes(raw))
            if needle in body:
                return stream.body + body
        searched = len(raw)
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(
                f"timed out; {len(raw)} bytes, tail {bytes(raw[-200:])!r}"
            )
        stream.sock.settimeout(left)
        data = stream.sock.recv(1 << 20)
        if not data:
            raise AssertionError(
                f"closed after {len(raw)} bytes: {bytes(raw[-200:])!r}"
            )
        raw += data


def read_big_in_threads(streams: list, marker: bytes = END) -> list:
    """L{read_big} on every stream at once; returns the bodies (or raises)."""
    results = [None] * len(streams)

    def reader(index, stream):
        try:
            results[index] = read_big(stream, marker)
        except (AssertionError, OSError) as error:  # re-raised below
            results[index] = error

    threads = [
        threading.Thread(target=reader, args=(i, s), daemon=True)
        for i, s in enumerate(streams)
    ]
    for thread in threads:
        thread.start()
    return threads, results


def join_readers(threads, results) -> list:
    for thread in threads:
        thread.join(40)
        assert not thread.is_alive()
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def data_values(body: bytes) -> list:
    """The data of each event of a body (one data line each), ids checked increasing."""
    ids = [
        tuple(map(int, i.split(b"-")))
        for i in re.findall(rb"(?m)^id: (\d+-\d+)$", body)
    ]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    return re.findall(rb"(?m)^data: (.*)$", body)


def make_payload(size: int, seed: str = "ab=;%:é€_xyz") -> bytes:
    """Exactly C{size} bytes of UTF-8 with multi-byte characters (no newline)."""
    out, length, i = [], 0, 0
    while True:
        char = seed[i % len(seed)].encode("utf-8")
        if length + len(char) > size:
            break
        out.append(char)
        length += len(char)
        i += 1
    out.append(b"z" * (size - length))
    return b"".join(out)


def fetch_status(port: int, target: str) -> int:
    response = Stream(port, target, wait_open=False)
    response.close()
    return response.status


# --- hasses -----------------------------------------------------------------------------


def test_hasses_client_leaving_during_a_batch_does_not_kill_the_server(start_server):
    """
    hasses: died on SIGPIPE when a client left in the middle of a multi-event batch.
    Of 30 subscribers, 15 RST-close while one control write of 500 events is being
    delivered; the server survives, the others get all 500 events, and
    C{tcpnumberofclients} is exact afterwards.
    """
    server = start_server()
    stay = [Stream(server.port, "/sse") for _ in range(15)]
    leave = [slow_subscriber(server.port, "/sse") for _ in range(8)]
    leave += [Stream(server.port, "/sse/room") for _ in range(7)]
    batch = [b"*=event %03d %s" % (i, b"b" * 1000) for i in range(500)]
    publisher = threading.Thread(
        target=server.control, args=(b"\n".join(batch) + b"\n",), daemon=True
    )
    publisher.start()
    read_big(stay[0], batch[100][2:])  # the batch is under way
    for stream in leave:
        stream.reset()
    publisher.join(TIMEOUT)
    readers = read_big_in_threads(stay)
    server.control(b"*=END\n")
    expected = [line[2:] for line in batch] + [END]
    for body in join_readers(*readers):
        assert data_values(body) == expected
    assert wait_for_count(server, len(stay)) == {"numberofclients": len(stay)}
    assert server.command(b"tcpstatus")["sseconncli"] == len(stay)
    assert_alive(server)


def test_hasses_last_client_in_the_table_slow(start_server):
    """
    hasses: segfaulted when the last client of its table was slow.  The most recently
    connected subscriber never reads while 6 MB are published (more than the
    kernel's socket buffers hold, so sseserver holds the rest); the others still get
    everything, the server stays up, and the slow one gets every event once it
    reads (with --max-client-buffer above what it falls behind).
    """
    server = start_server("--max-client-buffer", str(64 << 20))
    fast = [Stream(server.port, "/sse") for _ in range(3)] + [
        Stream(server.port, "/sse/room")
    ]
    slow = slow_subscriber(server.port, "/sse/room")
    payload = b"x" * 4000
    lines = [b"room=%d:%s" % (i, payload) for i in range(1500)]
    readers = read_big_in_threads(fast)
    server.control(b"\n".join(lines) + b"\n*=END\n")
    expected = [line[5:] for line in lines] + [END]
    for body in join_readers(*readers):
        assert data_values(body) == expected
    assert_alive(server)
    server.control(b"*=after\n")
    for stream in fast:
        assert data_values(read_big(stream, b"after"))[-1:] == [b"after"]
    assert data_values(read_big(slow, b"after")) == expected + [b"after"]


def test_hasses_6k_request_with_a_long_header(start_server):
    """
    hasses: a request of 6 KiB or more overflowed its buffer.  A 6 KiB header and a
    6 KiB request line (many long channel names) are served.
    """
    server = start_server()
    cookie = Stream(server.port, "/sse/room", headers={"Cookie": "c=" + "v" * 6144})
    channels = [f"channel{i:02d}" + "x" * 200 for i in range(30)]
    path = "/sse/" + "/".join(channels)
    assert len(path) > 6144
    long_line = Stream(server.port, path)
    query = Stream(server.port, "/sse?subscribe=" + "-".join(channels) + "&id=u1")
    server.control(
        b"room=for the cookie\n"
        + channels[-1].encode()
        + b"=last channel\n"
        + channels[0].encode()
        + b"=first channel\nchannel=none\n*=END\n"
    )
    expect(cookie, [(b"for the cookie", None)])
    expect(long_line, [(b"last channel", None), (b"first channel", None)])
    expect(query, [(b"last channel", None), (b"first channel", None)])


def test_hasses_6k_control_batch(start_server):
    """
    hasses: a control batch of 6 KiB or more overflowed its buffer.  A 6 KiB write of
    several lines, one of them 5 KiB, is handled line by line.
    """
    server = start_server()
    room = Stream(server.port, "/sse/room")
    big = make_payload(5 * 1024)
    lines = [b"room=first", b"room/long=" + big] + [
        b"room=line %03d" % i for i in range(80)
    ]
    batch = b"\n".join(lines) + b"\n"
    assert len(batch) >= 6 * 1024
    with ControlClient(server.control_port) as client:
        client.send(batch)
        client.send(b"*=END\n")
    expect(
        room,
        [(b"first", None), (big, b"long")]
        + [(b"line %03d" % i, None) for i in range(80)],
    )


def test_hasses_1mib_control_batch_of_short_lines(start_server):
    """
    hasses: a control batch of 6 KiB or more overflowed its buffer.  A 1 MiB write of
    short lines: every line is delivered, in order.
    """
    server = start_server()
    stream = Stream(server.port, "/sse/room")
    lines = [b"room=%035d" % i for i in range((1 << 20) // 41 + 1)]
    batch = b"\n".join(lines) + b"\n"
    assert len(batch) >= 1 << 20
    readers = read_big_in_threads([stream])
    with ControlClient(server.control_port) as client:
        client.send(batch + b"*=END\n")
        [body] = join_readers(*readers)
    got = data_values(body)
    assert len(got) == len(lines) + 1
    assert got == [line[5:] for line in lines] + [END]


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_hasses_large_messages_arrive_whole_with_correct_chunk_lengths(
    start_server, version
):
    """
    hasses: frames over 2 KiB were truncated, with a wrong chunk length.  Messages of
    2 KiB, 3 KiB, 60 KiB and the largest a 64 KiB control line carries arrive byte for byte, and the raw
    chunk framing is exact (chunk sizes count bytes, not characters).
    """
    server = start_server()
    stream = Stream(server.port, "/sse/big", version=version)
    sizes = [2047, 2048, 2049, 3 * 1024, 60 * 1024, 65532]  # 64 KiB line
    payloads = [make_payload(size, seed=f"{size}é€ab=") for size in sizes]
    with ControlClient(server.control_port) as client:
        for payload in payloads:
            client.send(b"big=" + payload + b"\n")
        client.send(b"*=END\n")
    expect(stream, [(payload, None) for payload in payloads])
    for payload in payloads:
        assert b"\ndata: " + payload + b"\n\n" in stream.body
    if version == "HTTP/1.1":
        assert stream.chunked
        body, complete = dechunk(stream.raw)
        assert complete
        assert body == stream.body
    else:
        assert not stream.chunked
        assert stream.raw == stream.body
    assert stream.body.startswith(b":ok\n\n")


def test_hasses_query_less_get_does_not_reuse_earlier_parameters(start_server):
    """
    hasses: a GET without a query reused the parameters of the previous request.
    After query GETs (with a client id, and subscribing to broadcasts only), a
    query-less GET on a new connection, and one on a kept-alive connection after a
    query request, subscribe to all channels with no client id.
    """
    server = start_server("--dialect", "hasses")
    room1 = Stream(server.port, "/sse?subscribe=room1&id=u17")
    plain = Stream(server.port, "/sse")
    nothing = Stream(server.port, "/sse?subscribe=&id=u17")
    plain_again = Stream(server.port, "/sse")

    # the same connection: a 404 carrying a query, then a query-less GET
    sock = nodelay_socket(server.port)
    sock.sendall(request_bytes("/missing?subscribe=room1&id=u17"))
    first = stream_on(sock, wait_open=False)
    assert first.status == 404
    length = int(first.headers["content-length"])
    first.read_until(lambda body: len(body) >= length)
    assert first.body and len(first.body) == length
    reused = stream_on(sock, [request_bytes("/sse")])
    assert reused.status == 200

    server.control(b"room2=a\n*-u17=b\n=c\nroom1=d\n*=END\n")
    everything = [(b"a", None), (b"b", None), (b"c", None), (b"d", None)]
    expect(room1, [(b"d", None)])
    expect(plain, everything)
    expect(nothing, [])
    expect(plain_again, everything)
    expect(reused, everything)


def test_hasses_newlines_in_control_and_fifo_messages_inject_no_fields(
    start_server, tmp_path
):
    """
    hasses: newlines inside a message injected SSE fields.  A CR inside a control or
    FIFO line splits into data lines only; a type with CR or NUL is rejected.
    """
    fifo = tmp_path / "sse.fifo"
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    with ControlClient(server.control_port) as client:
        client.send(b"room=a\rid: 7\revent: evil\rretry: 1\r\r\rdata: z\r\n")
        for bad in (b"room/x\rid: 7=1", b"room/x\x00y=1", b"room/x\ry=2"):
            client.send(bad + b"\n")
            reply = client.reply()
            assert set(reply) == {"error"} and reply["error"], (bad, reply)
        # percent escapes mean nothing on the control port: a literal type
        client.send(b"room/x%0Aid: 7=3\n")
        client.send(b"tcpnumberofclients\n")
        assert client.reply() == {"numberofclients": 1}
    fifo_write(fifo, b"room=f\rid: 8\r\revent: evil\nroom/y\rid: 9=2\n")
    fifo_write(fifo, b"*=END\n")
    expect(
        room,
        [
            (b"a\nid: 7\nevent: evil\nretry: 1\n\n\ndata: z", None),
            (b"3", b"x%0Aid: 7"),
            (b"f\nid: 8\n\nevent: evil", None),
        ],
    )
    # every line of the stream is a field sseserver wrote itself
    for line in room.body.split(b"\n"):
        assert line == b"" or line.startswith((b"id: ", b"data: ", b"event: ", b":"))


def test_hasses_newlines_in_http_query_inject_no_fields(start_server):
    """
    hasses: newlines inside a message injected SSE fields.  C{%0A} and C{%0D} in an
    HTTP publish query become data lines; in an event type, 400 and nothing sent.
    """
    server = start_server("--http-publish")
    room = Stream(server.port, "/sse/room")
    ok = Stream(
        server.port,
        "/sse/room?message=a%0Aid:%207%0D%0Aevent:%20evil%0Dretry:%201%0A%0Adata:%20z",
        wait_open=False,
    )
    assert ok.status == 200, ok.head
    for bad in (
        "/sse/room?x%0Aid:%207=1",
        "/sse/room?x%0D=1",
        "/sse/room?x%0D%0Aid:%207=1",
        "/sse/room?x%00=1",
        "/sse/room?message=fine&x%0Ay=2",
    ):
        response = Stream(server.port, bad, wait_open=False)
        assert response.status == 400, (bad, response.head)
    server.control(b"*=END\n")
    expect(room, [(b"a\nid: 7\nevent: evil\nretry: 1\n\ndata: z", None)])


def test_hasses_equals_sign_in_the_data_is_kept(start_server):
    """
    hasses: a C{=} in a message cut it.  The line splits at its first C{=} only, on
    the control port (both dialects) and in an HTTP publish query.
    """
    server = start_server("--http-publish")
    hasses = start_server("--dialect", "hasses")
    room = Stream(server.port, "/sse/room")
    hroom = Stream(hasses.port, "/sse/room")
    server.control(b"room=a=b=c\nroom/t = x = y \nroom==\nroom=k=v;j=w;\n")
    response = Stream(server.port, "/sse/room?message=1=2=3", wait_open=False)
    assert response.status == 200
    server.control(b"*=END\n")
    expect(
        room,
        [
            (b"a=b=c", None),
            (b"x = y", b"t"),
            (b"=", None),
            (b"k=v;j=w;", None),
            (b"1=2=3", None),
        ],
    )
    hasses.control(b"room=a=b=c\nroom=k=v;room=j=w;\n*=END\n")
    expect(hroom, [(b"a=b=c", None), (b"k=v", None), (b"j=w", None)])


def test_hasses_lines_written_together_are_neither_merged_nor_dropped(
    start_server, tmp_path
):
    """
    hasses: lines written together were merged or dropped.  1000 lines in one control
    write, 1000 in one FIFO write, and lines cut at random places over many small
    writes all arrive, one event each, in order.
    """
    fifo = tmp_path / "sse.fifo"
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    control_lines = [b"room=control %04d" % i for i in range(1000)]
    fifo_lines = [b"room=fifo %04d" % i for i in range(1000)]
    pieces_lines = [b"room=piece %04d" % i for i in range(300)]
    with ControlClient(server.control_port) as client:
        client.send(b"\n".join(control_lines) + b"\n")
        client.send(b"tcpnumberofclients\n")
        client.reply()  # everything before it was read
    fifo_write(fifo, b"\n".join(fifo_lines) + b"\n")
    room.read_events(2000)
    sock = nodelay_socket(server.control_port)
    data = b"\n".join(pieces_lines) + b"\n"
    sizes = [1, 7, 3, 13, 2, 29, 5]
    pos, index = 0, 0
    while pos < len(data):
        sock.sendall(data[pos : pos + sizes[index % len(sizes)]])
        pos += sizes[index % len(sizes)]
        index += 1
    sock.sendall(b"*=END\n")
    sock.close()
    expect(
        room,
        [(line[5:], None) for line in control_lines + fifo_lines + pieces_lines],
    )


def test_hasses_request_split_over_tcp_segments_is_served(start_server):
    """
    hasses: a request split over two TCP segments was rejected.  Half the request
    line, a pause, then the rest; and headers split over several segments.
    """
    server = start_server()
    whole = request_bytes("/sse/room", {"Accept": "text/event-stream"})
    line_split = stream_on(nodelay_socket(server.port), [whole[:9], whole[9:]])
    cut = whole.index(b"Host") + 2
    header_split = stream_on(
        nodelay_socket(server.port),
        [whole[:cut], whole[cut:-3], whole[-3:-1], whole[-1:]],
    )
    query = request_bytes("/sse?subscribe=room-other&id=u9")
    query_split = stream_on(
        nodelay_socket(server.port), [query[:14], query[14:30], query[30:]]
    )
    for stream in (line_split, header_split, query_split):
        assert stream.status == 200
    server.control(b"room=hello\nother=x\n*=END\n")
    expect(line_split, [(b"hello", None)])
    expect(header_split, [(b"hello", None)])
    expect(query_split, [(b"hello", None), (b"x", None)])


def test_hasses_control_port_listens_on_loopback_by_default(tmp_path):
    """
    hasses: the control port listened on all interfaces.  Without --control it is
    C{tcp:8085:interface=127.0.0.1}: bound to 127.0.0.1 only.
    """
    from sseserver.tap import Options

    options = Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
    assert options["control"] == ["tcp:8085:interface=127.0.0.1"]

    args = ["--port", "tcp:0:interface=127.0.0.1"]
    if "admin" in Options():
        args += ["--admin", "none"]
    # Not start_server: its wait would not notice a failure to bind 8085.
    server = Server(args, tmp_path)
    try:
        found = server.wait_for_log(
            r"\] control listening on (\S+)$|cannot listen on '(tcp:8085[^']*)'"
        )
        if found[1] is None:
            # Something else holds 8085 here: the refusal names the endpoint used.
            assert found[2] == "tcp:8085:interface=127.0.0.1"
            assert server.process.wait(TIMEOUT) != 0
            return
        assert found[1] == "127.0.0.1:8085"
        server.wait_started()
        assert server.control_ports == [8085]
        # another loopback address of this host is refused: not bound to 0.0.0.0
        other = socket.socket()
        other.settimeout(TIMEOUT)
        try:
            with pytest.raises(OSError):
                other.connect(("127.0.0.2", 8085))
        finally:
            other.close()
        assert server.command(b"tcpnumberofclients") == {"numberofclients": 0}
    finally:
        server.stop()


# --- SSE-Server ---------------------------------------------------------------------------


def test_sse_server_slow_reader_does_not_stall_the_others(start_server):
    """
    SSE-Server: one slow reader stalled the whole server.  Subscribers that connect
    first (and in the middle) and stop reading do not keep the others from getting
    batch after batch, 8 MB in all: well past the kernel's buffers and
    --max-client-buffer, so the slow ones end up held by sseserver, then dropped.
    """
    server = start_server()
    slow = [slow_subscriber(server.port, "/sse")]
    fast = [Stream(server.port, "/sse")]
    slow.append(slow_subscriber(server.port, "/sse/room"))
    fast.append(Stream(server.port, "/sse/room"))
    payload = b"y" * 4000
    sent = []
    for batch in range(8):
        lines = [b"room=%d.%d:%s" % (batch, i, payload) for i in range(250)]
        marker = b"batch %d" % batch
        sent += [line[5:] for line in lines] + [marker]
        server.control(b"\n".join(lines) + b"\n*=" + marker + b"\n")
        for stream in fast:
            # each batch arrives before the next one is published
            read_big(stream, marker)
    server.control(b"*=END\n")
    for stream in fast:
        assert data_values(read_big(stream)) == sent + [END]
    assert_alive(server)
    for stream in slow:
        stream.close()


def test_sse_server_sigpipe_does_not_kill_the_server(start_server):
    """
    SSE-Server: SIGPIPE killed it when a peer vanished during a write.  Subscribers
    with unsent data RST-close while a 2 MB batch is being written (and a control
    client RST-closes with replies pending); the process lives on, the remaining
    subscriber gets every event, and the client count is exact.
    """
    server = start_server()
    keep = Stream(server.port, "/sse")
    victims = [slow_subscriber(server.port, "/sse") for _ in range(5)]
    victims += [Stream(server.port, "/sse") for _ in range(5)]
    payload = b"z" * 4000
    lines = [b"*=%d:%s" % (i, payload) for i in range(500)]
    publisher = threading.Thread(
        target=server.control, args=(b"\n".join(lines) + b"\n",), daemon=True
    )
    publisher.start()
    read_big(keep, lines[20][2:])  # the batch is under way
    for victim in victims:
        victim.reset()

    control = nodelay_socket(server.control_port, rcvbuf=4096)
    control.sendall(b"tcpstatus\n" * 3000)
    reset(control)

    publisher.join(TIMEOUT)
    server.control(b"*=END\n")
    assert data_values(read_big(keep)) == [line[2:] for line in lines] + [END]
    assert_alive(server)
    assert wait_for_count(server, 1) == {"numberofclients": 1}
    assert not [l for l in server.lines if "Traceback" in l or "Unhandled" in l]


def test_sse_server_several_control_lines_in_one_read(start_server):
    """
    SSE-Server: only one control line was handled per read; the rest were lost.
    Lines and commands sent in one small write are all handled, in order.
    """
    server = start_server()
    room = Stream(server.port, "/sse/room")
    with ControlClient(server.control_port) as client:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.send(b"room=1\nroom=2\nroom=3")
        client.send(
            b"\nroom/t=4\ntcpnumberofclients\ntcpsubscribedclients:room\n"
            b"tcpnumberofclients\nroom=5\n"
        )
        assert client.reply() == {"numberofclients": 1}
        assert client.reply() == {"subscribedclients": 1, "subscribedfor": "room"}
        assert client.reply() == {"numberofclients": 1}
    server.control(b"room=6\r\nroom=7\r\n*=END")
    expect(
        room,
        [
            (b"1", None),
            (b"2", None),
            (b"3", None),
            (b"4", b"t"),
            (b"5", None),
            (b"6", None),
            (b"7", None),
        ],
    )


def test_sse_server_percent_0a_in_a_query_injects_no_fields(start_server):
    """
    SSE-Server: C{%0A} in a publish query injected SSE fields.  In data it becomes
    data lines; in an event type, a channel or a client id it is a 400.
    """
    server = start_server("--http-publish")
    room = Stream(server.port, "/sse/room")
    response = Stream(
        server.port,
        "/sse/room?message=one%0Aevent:%20evil%0Aid:%201;t=two%0A%0Aid:%202",
        wait_open=False,
    )
    assert response.status == 200, response.head
    for bad in (
        "/sse/room?evil%0Aid:%201=x",
        "/sse/room%0Aid:%201?message=x",
        "/sse/room%0A?message=x",
        "/sse?subscribe=room%0Aid:%201",
        "/sse?subscribe=room&id=u%0A1",
        "/sse/room%0D",
    ):
        status = fetch_status(server.port, bad)
        assert status == 400, bad
    server.control(b"*=END\n")
    expect(
        room,
        [(b"one\nevent: evil\nid: 1", None), (b"two\n\nid: 2", b"t")],
    )
    assert server.command(b"tcpstatus")["sseconncli"] == 1


@pytest.fixture
def tls_files(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return key_path, cert_path, context


def test_sse_server_stalled_tls_handshake_does_not_freeze_delivery(
    start_server, tls_files
):
    """
    SSE-Server: a TLS client that never finished its handshake froze delivery.
    Connections to the ssl: port that never handshake, stop half-way through the
    ClientHello, or send garbage do not stop a TLS subscriber and a plain one.
    """
    key, cert, context = tls_files
    server = start_server(
        "--port",
        f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
        "--port",
        "tcp:0:interface=127.0.0.1",
        sse=2,
    )
    tls_port, plain_port = server.sse_ports
    silent = nodelay_socket(tls_port)
    # half of a real ClientHello
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    partial = nodelay_socket(tls_port)
    partial.sendall(hello[: len(hello) // 2])
    garbage = nodelay_socket(tls_port)
    garbage.sendall(request_bytes("/sse") + bytes(range(256)) * 4)

    secure = stream_on(
        context.wrap_socket(
            socket.create_connection(("127.0.0.1", tls_port), TIMEOUT),
            server_hostname="127.0.0.1",
        ),
        [request_bytes("/sse/room")],
    )
    plain = Stream(plain_port, "/sse/room")
    server.control(b"room=while stalled\n*=END\n")
    expect(secure, [(b"while stalled", None)])
    expect(plain, [(b"while stalled", None)])

    # the garbage connection fails alone
    garbage.settimeout(TIMEOUT)
    try:
        while garbage.recv(65536):
            pass
    except ConnectionResetError:
        pass
    # the stalled ones are still stalled; delivery goes on
    server.control(b"room=still\n*=END2\n")
    expect(secure, [(b"while stalled", None), (END, None), (b"still", None)], b"END2")
    expect(plain, [(b"while stalled", None), (END, None), (b"still", None)], b"END2")
    silent.close()
    partial.close()
    assert_alive(server)
    assert server.command(b"tcpstatus")["sseconncli"] == 2


def test_sse_server_prefix_matches_at_a_segment_boundary_only(start_server):
    """
    SSE-Server: C{/ssefoo} matched the prefix C{/sse}.  It is a 404 (no subscription,
    no publish); the prefix itself and C{/sse/...} work.
    """
    server = start_server("--http-publish")
    good = [Stream(server.port, t) for t in ("/sse", "/sse/", "/sse/foo")]
    for target in (
        "/ssefoo",
        "/ssefoo/",
        "/ssefoo/bar",
        "/sse.foo",
        "/ssefoo?subscribe=*",
        "/ssefoo/foo?message=published",
        "/sse-foo?message=published",
    ):
        assert fetch_status(server.port, target) == 404, target
    assert server.command(b"tcpstatus")["sseconncli"] == len(good)
    server.control(b"foo=x\n*=END\n")
    for stream in good:
        expect(stream, [(b"x", None)])

    other = start_server("--prefix", "/events")
    events = Stream(other.port, "/events")
    for target in ("/eventsfoo", "/eventss/x", "/events.json", "/sse"):
        assert fetch_status(other.port, target) == 404, target
    assert other.command(b"tcpstatus")["sseconncli"] == 1
    other.control(b"a=y\n*=END\n")
    expect(events, [(b"y", None)])
