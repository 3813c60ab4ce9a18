"""
Limits and failure behaviour (SPEC §8) against the real server: request sizes,
bytes from subscribers, unread control replies, slow subscribers, churn, file
descriptor exhaustion and random input.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import socket
import struct
import subprocess
import threading
import time

import httpx
from conftest import END, TIMEOUT, ControlClient, Stream, assert_events, expect


def raw_subscriber(port: int, target: str, rcvbuf: int | None = None) -> socket.socket:
    """A subscriber that reads its response head and opening, then nothing."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b":ok\n\n" not in data:
        data += sock.recv(4096)
    return sock


def closed_by_server(stream: Stream) -> None:
    """The server ended the connection, with a FIN or a reset."""
    try:
        stream.read_to_end()
    except ConnectionResetError:
        pass


def peer_text(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


# --- request sizes ---------------------------------------------------------------------


def test_request_line_over_16_kib_is_414(start_server):
    server = start_server()
    target = "/sse/" + "a" * 17000
    stream = Stream(server.port, target, wait_open=False)
    assert stream.status_line == "HTTP/1.1 414 URI Too Long"
    assert stream.read_to_end() == b""
    server.wait_for_log(r"request line too long$")


def test_header_over_16_kib_is_431(start_server):
    server = start_server()
    stream = Stream(
        server.port, "/sse/a", headers={"X-Big": "b" * 17000}, wait_open=False
    )
    assert stream.status_line == "HTTP/1.1 431 Request Header Fields Too Large"
    assert stream.read_to_end() == b""
    server.wait_for_log(r"header too long$")


def test_request_of_nearly_16_kib_is_served(start_server):
    server = start_server()
    stream = Stream(server.port, "/sse/big", headers={"X-Big": "b" * 15000})
    assert stream.status == 200
    server.control(b"big=fine\nbig=" + END + b"\n")
    expect(stream, [(b"fine", None)])


# --- bytes from a subscriber -----------------------------------------------------------


def test_bytes_on_an_open_stream_are_discarded_then_capped(start_server):
    server = start_server()
    stream = Stream(server.port, "/sse/room")
    stream.sock.sendall(b"GET /sse/other HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 30000)
    server.control(b"room=still here\nother=not for me\nroom=" + END + b"\n")
    expect(stream, [(b"still here", None)])
    stream.sock.sendall(b"y" * 40000)
    closed_by_server(stream)
    server.wait_for_log(r": sent more than 64 KiB on an open stream$")
    assert server.command(b"tcpnumberofclients") == {"numberofclients": 0}


# --- unread control replies ------------------------------------------------------------


def test_control_client_that_never_reads_replies_is_disconnected(start_server):
    server = start_server()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.control_port))
    sock.settimeout(TIMEOUT)
    batch = b"tcpstatus\n" * 1000
    try:
        for _ in range(200):  # ~40 MB of replies if nobody stopped it
            sock.sendall(batch)
    except (BrokenPipeError, ConnectionResetError):
        pass
    server.wait_for_log(r": more than 64 KiB of replies unread; disconnected$")
    sock.close()
    assert server.command(b"tcpnumberofclients") == {"numberofclients": 0}


# --- slow subscribers ------------------------------------------------------------------


def test_slow_subscriber_is_dropped_at_the_cap_and_others_get_everything(start_server):
    """
    The publisher waits for the reading subscriber after each batch, so it is
    never behind; the one that never reads piles up data until it is dropped.
    """
    server = start_server()
    slow = raw_subscriber(server.port, "/sse/room", rcvbuf=4096)
    fast = Stream(server.port, "/sse/room")
    payload = b"p" * 1024
    with ControlClient(server.control_port) as client:
        for batch in range(20):
            numbers = range(batch * 500, (batch + 1) * 500)
            client.send(b"".join(b"room=%d %s\n" % (n, payload) for n in numbers))
            last = b"data: %d %s\n\n" % (numbers[-1], payload)
            fast.read_until(lambda body: body.endswith(last))
    expected = [(b"%d %s" % (n, payload), None) for n in range(10000)]
    assert_events(fast.data_events(), expected)
    server.wait_for_log(
        rf"subscriber <\d+> {re.escape(peer_text(slow))} dropped: more unsent data"
        r" than --max-client-buffer allows$"
    )
    assert server.command(b"tcpnumberofclients") == {"numberofclients": 1}
    slow.close()


def test_subscriber_that_falls_behind_catches_up_in_order(start_server):
    """
    A subscriber that stops reading falls behind the others of its channel: its
    socket fills (the kernel takes about 4 MB), its events wait in the server's
    buffer (under a raised cap), and when it reads again it gets every event whole
    and in order, then goes on in step.  The per-subscriber counts stay exact.
    """
    server = start_server(
        "--admin", "tcp:0:interface=127.0.0.1", "--max-client-buffer", "16777216"
    )
    lagging = Stream(server.port, "/sse/room", rcvbuf=4096)
    steady = Stream(server.port, "/sse/room")
    payload = b"p" * 1024

    def publish(numbers) -> None:
        with ControlClient(server.control_port) as client:
            client.send(b"".join(b"room=%d %s\n" % (n, payload) for n in numbers))

    def last(n: int):
        return lambda body: body.endswith(b"data: %d %s\n\n" % (n, payload))

    publish(range(6000))  # 6 MB: more than the lagging socket holds
    steady.read_until(last(5999))
    lagging.read_until(last(5999))
    publish(range(6000, 6010))
    for stream in (steady, lagging):
        stream.read_until(last(6009))
        expected = [(b"%d %s" % (n, payload), None) for n in range(6010)]
        assert_events(stream.data_events(), expected)

    clients = httpx.get(
        f"http://127.0.0.1:{server.admin_port}/clients", timeout=TIMEOUT
    ).json()["clients"]
    assert [(c["channels"], c["messages"]) for c in clients] == [
        (["room"], 6010),
        (["room"], 6010),
    ]


def test_slow_consumer_at_scale_keeps_memory_bounded(start_server, sseload):
    """
    1,000 subscribers (the reference sseload) get 10,000 events of 1 KiB while one
    subscriber never reads: the others get everything, the slow one is dropped at
    the default 1 MiB cap, and the server's RSS stays under base + 64 MiB.
    """
    server = start_server("--port", "tcp:0:interface=127.0.0.1:backlog=1024")
    slow = raw_subscriber(server.port, "/sse/room", rcvbuf=4096)
    base = server.rss_kib()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], server.rss_kib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = subprocess.run(
            [
                sseload,
                "--port", str(server.port),
                "--path", "/sse/room",
                "--clients", "1000",
                "--control", str(server.control_port),
                "--line", "room={payload}",
                "--messages", "10000",
                "--payload-bytes", "1024",
                "--timeout", "240",
                "--quiet",
            ],
            capture_output=True,
            timeout=300,
        )  # fmt: skip
    finally:
        done.set()
        sampler.join()
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr.decode()
    assert report["stop_reason"] == "complete"
    assert report["clients_connected"] == 1000
    assert report["events_total"] == 10_000_000
    assert report["events_missing"] == 0
    server.wait_for_log(
        rf"subscriber <\d+> {re.escape(peer_text(slow))} dropped: more unsent data"
    )
    assert peak[0] - base < 64 * 1024, (base, peak[0])
    slow.close()


# --- churn -----------------------------------------------------------------------------


def connect_many(port: int, count: int, target: str) -> list:
    """Open C{count} subscribers at once; return them once each has its opening."""
    selector = selectors.DefaultSelector()
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    pending = {}
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        selector.register(sock, selectors.EVENT_WRITE)
        pending[sock] = b""
    opened = []
    deadline = time.monotonic() + 30
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} never opened"
        for key, mask in selector.select(1):
            sock = key.fileobj
            if mask & selectors.EVENT_WRITE:
                sock.send(request)
                selector.modify(sock, selectors.EVENT_READ)
                continue
            data = sock.recv(65536)
            assert data, "closed before its opening"
            pending[sock] += data
            if b":ok\n\n" in pending[sock]:
                selector.unregister(sock)
                del pending[sock]
                opened.append(sock)
    selector.close()
    return opened


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_churn_leaves_no_subscriber_fd_or_memory_behind(start_server):
    server = start_server("--port", "tcp:0:interface=127.0.0.1:backlog=1024")
    watcher = Stream(server.port, "/sse/churn")
    fds = server.fd_count()
    stop = threading.Event()
    published = [0]

    def publish() -> None:
        with ControlClient(server.control_port) as client:
            while not stop.is_set():
                client.send(b"churn=tick\n" * 20)
                published[0] += 20
                time.sleep(0.01)
            # on the same connection: lines of one publisher keep their order
            client.send(b"churn=" + END + b"\n")

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        connect_many(server.port, 1000, "/sse/churn")  # warm-up round
        rss = None
        for _ in range(20):
            for sock in connect_many(server.port, 1000, "/sse/churn"):
                reset(sock)
            if rss is None:
                rss = server.rss_kib()
    finally:
        stop.set()
        publisher.join()
    events = watcher.read_until(lambda body: b"data: END\n\n" in body)
    assert events.count(b"data: tick\n") == published[0]
    deadline = time.monotonic() + TIMEOUT
    while server.command(b"tcpnumberofclients") != {"numberofclients": 1}:
        assert time.monotonic() < deadline, server.command(b"tcpstatus")
        time.sleep(0.1)
    status = server.command(b"tcpstatus")
    assert (status["allconncli"], status["sseconncli"]) == (1, 1)
    watcher.close()
    while server.command(b"tcpnumberofclients") != {"numberofclients": 0}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert server.fd_count() == fds - 1  # the watcher's own connection is gone
    assert server.rss_kib() - rss < 16 * 1024, (rss, server.rss_kib())


# --- file descriptors ------------------------------------------------------------------


def test_fd_exhaustion_keeps_streams_flowing_and_recovers(start_server):
    server = start_server(fd_limit=64)
    early = Stream(server.port, "/sse/room")
    control = ControlClient(server.control_port)  # opened while there are fds
    held = []
    for _ in range(80):  # more than the server has descriptors for
        sock = socket.create_connection(("127.0.0.1", server.port), TIMEOUT)
        sock.sendall(b"GET /sse/crowd HTTP/1.1\r\nHost: x\r\n\r\n")
        held.append(sock)
    server.wait_for_log(r"\] SSE: out of file descriptors; refusing new connections$")
    cpu = server.cpu_seconds()
    control.send(b"room=flowing\nroom=" + END + b"\n")
    expect(early, [(b"flowing", None)])
    time.sleep(2)
    assert server.cpu_seconds() - cpu < 1.0, "the accept loop spins"
    for sock in held:
        sock.close()
    later = None
    deadline = time.monotonic() + TIMEOUT
    while later is None:
        try:
            later = Stream(server.port, "/sse/room")
        except (AssertionError, OSError):
            assert time.monotonic() < deadline, "never accepted again"
            time.sleep(0.2)
    control.send(b"room=again\nroom=" + END + b"\n")
    expect(later, [(b"again", None)])
    control.close()
    server.wait_for_log(r"\] SSE: accepting again; \d+ connections were refused$")
    incidents = [line for line in server.lines if "out of file descriptors" in line]
    assert len(incidents) == 1, incidents


# --- random input ----------------------------------------------------------------------


FRAGMENTS = [
    b"GET /sse/room HTTP/1.1\r\n",
    b"Host: x\r\n",
    b"\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 99999999999\r\n",
    b"POST /sse HTTP/1.0\r\n",
    b"tcpstatus\n",
    b"clientlist\n",
    b"room=x\n",
    b"\xff\xfe\x00",
    b"a" * 70000,
]


def noise(rng: random.Random) -> bytes:
    """Random bytes mixed with fragments of valid input."""
    parts = []
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.5:
            parts.append(rng.randbytes(rng.randint(1, 2048)))
        else:
            fragment = bytearray(rng.choice(FRAGMENTS))
            if fragment and rng.random() < 0.5:
                fragment[rng.randrange(len(fragment))] = rng.randrange(256)
            parts.append(bytes(fragment))
    return b"".join(parts)


def test_random_bytes_on_every_input_do_not_disturb_a_subscriber(
    start_server, tmp_path
):
    fifo = tmp_path / "fuzz.fifo"
    server = start_server("--fifo", str(fifo))
    server.wait_for_log(r"FIFO reading ")
    watcher = Stream(server.port, "/sse/watch")
    rng = random.Random(20261122)
    stop = threading.Event()

    def fuzz(port: int | None) -> None:
        local = random.Random(rng.random())
        while not stop.is_set():
            try:
                if port is None:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    try:
                        os.write(fd, noise(local)[:4096])
                    finally:
                        os.close(fd)
                    continue
                with socket.create_connection(("127.0.0.1", port), TIMEOUT) as sock:
                    sock.settimeout(0.2)
                    sock.sendall(noise(local))
                    if local.random() < 0.5:
                        sock.recv(4096)
                    if local.random() < 0.3:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
            except OSError:
                pass  # refused, reset, timed out, FIFO full: all fine for noise

    fuzzers = [
        threading.Thread(target=fuzz, args=(port,))
        for port in (server.port, server.control_port, None)
    ]
    for thread in fuzzers:
        thread.start()
    sent = 0
    try:
        with ControlClient(server.control_port) as client:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                client.send(b"".join(b"watch=W%d\n" % (sent + n) for n in range(10)))
                sent += 10
                time.sleep(0.005)
    finally:
        stop.set()
        for thread in fuzzers:
            thread.join()
    server.control(b"watch=" + END + b"\n")
    watcher.read_until(lambda body: b"data: END\n\n" in body)
    mine = re.findall(rb"data: (W\d+)\n", watcher.body)
    assert mine == [b"W%d" % n for n in range(sent)]
    assert server.process.poll() is None
    assert server.command(b"tcpstatus")["sseconncli"] >= 1
