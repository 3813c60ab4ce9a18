"""
TLS through endpoint strings (SPEC §1, §6 C{mode}), end to end: the real
C{twistd -n sseserver} with C{ssl:} listeners on certificates made here by
C{trustme}, and clients that verify them with Python's C{ssl}.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from unittest import mock

import pytest
import trustme  # noqa: E402
from conftest import END, TIMEOUT, ControlClient, Stream, event_re, expect

PLAIN = "tcp:0:interface=127.0.0.1"
CLOCK = r"\d\d:\d\d:\d\d"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls(ca, tmp_path):
    """(endpoint string for an ssl: listener, client context trusting its CA)."""
    cert = ca.issue_cert("127.0.0.1")
    key_path, cert_path = tmp_path / "server.key", tmp_path / "server.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    # the leaf and its chain, as a real deployment would have them
    with open(cert_path, "wb") as out:
        out.writelines(pem.bytes() for pem in cert.cert_chain_pems)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    return endpoint, context


def tls_socket(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.settimeout(TIMEOUT)
    return sock


def tls_stream(port: int, context: ssl.SSLContext, target: str = "/sse") -> Stream:
    """A L{Stream} over a verified TLS connection."""
    sock = tls_socket(port, context)
    assert sock.version() in ("TLSv1.2", "TLSv1.3")
    with mock.patch.object(socket, "create_connection", lambda *a, **k: sock):
        return Stream(0, target)


class TLSControl(ControlClient):
    """A control-port client over verified TLS."""

    def __init__(self, port: int, context: ssl.SSLContext):
        self.sock = tls_socket(port, context)
        self.buffer = b""


def body_re(*events: tuple) -> bytes:
    """A whole de-chunked stream body: ':ok' then exactly these events."""
    return b":ok\n\n" + b"".join(event_re(d, t) + b"\n" for d, t in events)


EVENTS = [
    (b"hello", None),
    ("d\u00e9j\u00e0 vu \u2603".encode("utf-8"), None),
    (b"two\nlines", b"update"),
    (b"a = b = c", None),
    (b"", b"empty"),
]


def publish_lines() -> bytes:
    """Control lines giving EVENTS (a CR inside the data starts a new line)."""
    return (
        b"color = hello\n"
        + "color = d\u00e9j\u00e0 vu \u2603\n".encode("utf-8")
        + b"color/update = two\rlines\n"
        + b"color = a = b = c\n"
        + b"color/empty =\n"
    )


def test_tls_subscriber_receives_events_byte_exact(start_server, tls):
    endpoint, context = tls
    server = start_server("--port", endpoint, "--heartbeat", "0")
    stream = tls_stream(server.port, context, "/sse/color")
    assert stream.status_line == "HTTP/1.1 200 OK"
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert stream.headers["cache-control"] == "no-cache"
    server.control(publish_lines() + b"other = not for color\ncolor = " + END + b"\n")
    expect(stream, EVENTS)
    assert re.fullmatch(body_re(*EVENTS, (END, None)), bytes(stream.body))
    # The raw bytes are valid chunked framing, nothing else.
    assert stream.raw.startswith(b"5\r\n:ok\n\n\r\n")
    stream.close()


def test_plain_and_tls_ports_share_one_registry(start_server, tls):
    """Several --port at once, plain and TLS: one set of subscribers, one
    encoding of each event, the same bytes on every port."""
    endpoint, context = tls
    server = start_server(
        "--port",
        PLAIN,
        "--port",
        endpoint,
        "--port",
        PLAIN,
        "--port",
        endpoint,
        "--heartbeat",
        "0",
        sse=4,
    )
    plain1, tls1, plain2, tls2 = server.sse_ports
    streams = [
        Stream(plain1, "/sse/color"),
        tls_stream(tls1, context, "/sse/color"),
        Stream(plain2, "/sse?subscribe=color-other"),
        tls_stream(tls2, context, "/sse"),
    ]
    assert server.command(b"tcpnumberofclients") == {"numberofclients": 4}
    assert server.command(b"tcpsubscribedclients:color") == {
        "subscribedclients": 3,
        "subscribedfor": "color",
    }
    server.control(publish_lines() + b"* = " + END + b"\n")
    for stream in streams:
        expect(stream, EVENTS)
    bodies = {bytes(s.body) for s in streams}
    assert len(bodies) == 1, bodies
    assert re.fullmatch(body_re(*EVENTS, (END, None)), bodies.pop())
    status = server.command(b"tcpstatus")
    assert status["mode"] == "mixed"
    assert status["sseconncli"] == 4
    assert status["msgproccnt"] == len(EVENTS) + 1
    assert status["msgsendcnt"] == 4 * (len(EVENTS) + 1)
    for stream in streams:
        stream.close()


def test_tls_control_port_publishes_and_replies(start_server, tls):
    endpoint, context = tls
    server = start_server("--control", endpoint, "--heartbeat", "0")
    stream = Stream(server.port, "/sse/color")
    with TLSControl(server.control_port, context) as client:
        client.send(publish_lines())
        client.send(b"tcpnumberofclients\n")
        assert client.raw_reply() == b'{"numberofclients": 1}\n'
        client.send(b"tcpsubscribedclients:color\n")
        assert client.reply() == {"subscribedclients": 1, "subscribedfor": "color"}
        client.send(b"color/bad\x01type = x\n")
        assert set(client.reply()) == {"error"}
        client.send(b"tcpstatus\n")
        status = client.reply()
        # The control listener is TLS, the SSE one is not: mode follows --port.
        assert status["mode"] == "unencrypted (http)"
        assert status["msgproccnt"] == len(EVENTS)
        assert status["allconncli"] == status["sseconncli"] == 1
        assert re.fullmatch(CLOCK, status["runningtime"])
        client.send(b"color = " + END + b"\n")
        expect(stream, EVENTS)
    stream.close()


def test_plain_client_on_the_tls_control_port_publishes_nothing(start_server, tls):
    endpoint, _ = tls
    server = start_server("--control", endpoint)
    stream = Stream(server.port, "/sse/color")
    with socket.create_connection(("127.0.0.1", server.control_port), TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(b"color = in clear text\n")
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
    # the control port is TLS: look through a TLS client
    with TLSControl(server.control_port, tls[1]) as client:
        client.send(b"tcpstatus\n")
        assert client.reply()["msgproccnt"] == 0
        client.send(b"color = " + END + b"\n")
    expect(stream, [])
    stream.close()


@pytest.mark.parametrize(
    "ports, control, mode",
    [
        (["plain"], "plain", "unencrypted (http)"),
        (["plain", "plain"], "tls", "unencrypted (http)"),
        (["tls"], "plain", "SSL encrypted (https)"),
        (["tls", "tls"], "tls", "SSL encrypted (https)"),
        (["plain", "tls"], "plain", "mixed"),
        (["tls", "plain"], "tls", "mixed"),
    ],
)
def test_mode_follows_the_sse_listeners_only(start_server, tls, ports, control, mode):
    endpoint, context = tls
    kinds = {"plain": PLAIN, "tls": endpoint}
    args = []
    for kind in ports:
        args += ["--port", kinds[kind]]
    server = start_server(*args, "--control", kinds[control], sse=len(ports))
    if control == "tls":
        with TLSControl(server.control_port, context) as client:
            client.send(b"tcpstatus\nstatus\n")
            status = client.reply()
    else:
        status = server.command(b"tcpstatus\nstatus")
    assert status["mode"] == mode
    server.wait_for_log(rf"\] Mode: {re.escape(mode)}$")


def clientlist(server) -> list:
    mark = server.mark()
    server.control(b"clientlist\n")
    server.wait_for_log(r"\] ---------------- end ----------------$", start=mark)
    texts = [line.split("] ", 1)[1] for line in server.lines[mark:] if "] " in line]
    start = texts.index("------- requested client list -------")
    end = texts.index("---------------- end ----------------")
    return texts[start : end + 1]


def test_clientlist_shows_ssl_per_subscriber(start_server, tls):
    endpoint, context = tls
    server = start_server("--port", PLAIN, "--port", endpoint, sse=2)
    plain_port, tls_port = server.sse_ports
    plain = Stream(plain_port, "/sse?subscribe=plain&id=p1")
    secure = tls_stream(tls_port, context, "/sse?subscribe=secure&id=s1")
    lines = clientlist(server)
    assert lines[0:2] == ["------- requested client list -------", "List of clients:"]
    assert len(lines) == 2 + 2 * 4 + 1
    entries = [lines[i : i + 4] for i in range(2, 10, 4)]
    by_port = {}
    for entry in entries:
        match = re.fullmatch(
            r"#\d - <\d+> info: 127\.0\.0\.1:(\d+) S:SSE Err: 0 Messages: 0"
            r" Reinit: \d+ SSL:(Yes|No)",
            entry[0],
        )
        assert match, entry
        by_port[int(match[1])] = (match[2], entry[1:])
    ssl_flag, rest = by_port[secure.sock.getsockname()[1]]
    assert ssl_flag == "Yes"
    assert re.fullmatch(
        rf"  Connection time: {CLOCK}  Handshaked time: {CLOCK} UniqId:s1", rest[0]
    )
    assert rest[2] == "  Subscribes: secure"
    ssl_flag, rest = by_port[plain.sock.getsockname()[1]]
    assert ssl_flag == "No"
    assert rest[0].endswith(" UniqId:p1")
    assert rest[2] == "  Subscribes: plain"
    plain.close()
    secure.close()


def test_stalled_tls_handshakes_do_not_delay_delivery(start_server, tls):
    """
    Many connections to the TLS port that never send a ClientHello, or stop
    in the middle of one: new TLS clients still handshake at once, and events
    reach TLS and plain subscribers within a second.
    """
    endpoint, context = tls
    server = start_server(
        "--port", endpoint, "--port", PLAIN, "--heartbeat", "0", sse=2
    )
    tls_port, plain_port = server.sse_ports
    stalled = []
    for _ in range(50):
        stalled.append(socket.create_connection(("127.0.0.1", tls_port), TIMEOUT))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    half = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        half.do_handshake()
    hello = outgoing.read()
    for cut in (1, 5, len(hello) // 2, len(hello) - 1):
        sock = socket.create_connection(("127.0.0.1", tls_port), TIMEOUT)
        sock.sendall(hello[:cut])
        stalled.append(sock)

    started = time.monotonic()
    secure = tls_stream(tls_port, context, "/sse/color")
    assert time.monotonic() - started < 2.0
    plain = Stream(plain_port, "/sse/color")
    for round_ in range(3):
        marker = b"END%d" % round_
        sent = time.monotonic()
        server.control(b"color = round %d\ncolor = %s\n" % (round_, marker))
        for stream in (secure, plain):
            needle = b"\ndata: " + marker + b"\n\n"
            stream.read_until(lambda body, n=needle: n in body, timeout=TIMEOUT)
            assert time.monotonic() - sent < 1.0, round_
    expected = []
    for round_ in range(3):
        expected += [(b"round %d" % round_, None), (b"END%d" % round_, None)]
    assert secure.body == plain.body
    assert re.fullmatch(body_re(*expected), bytes(secure.body))
    # The stalled connections are still there, holding only themselves.
    assert server.command(b"tcpstatus")["sseconncli"] == 2
    for sock in stalled:
        sock.close()
    secure.close()
    plain.close()


def test_unreadable_certificate_is_a_startup_error(start_server, tmp_path):
    from conftest import Server

    missing = tmp_path / "missing.pem"
    server = Server(
        ["--port", f"ssl:0:privateKey={missing}:certKey={missing}"], tmp_path
    )
    assert server.process.wait(TIMEOUT) != 0
    server.wait_for_log(r"--port: bad endpoint 'ssl:0:privateKey=")
