"""
Reinit (SPEC §2.8, hasses -ra) against the real server: a new GET on an open
stream ends it cleanly and is served on the same connection.
"""

from __future__ import annotations

import re
import socket

from conftest import END, TIMEOUT, ControlClient

FINAL = b"0\r\n\r\n"


class RawStream:
    """One connection; everything it receives, raw."""

    def __init__(self, port: int, target: str):
        self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.raw = b""
        self.request(target)

    def request(self, target: str) -> None:
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    def read_until(self, needle: bytes, count: int = 1) -> bytes:
        """Read until C{needle} was received C{count} times in all."""
        while self.raw.count(needle) < count:
            data = self.sock.recv(65536)
            assert data, f"closed; got {self.raw!r}"
            self.raw += data
        return self.raw

    def close(self) -> None:
        self.sock.close()


def responses(raw: bytes) -> list:
    """The response heads in the raw bytes, by status line."""
    return re.findall(rb"HTTP/1\.1 (\d+) [^\r]*\r\n", raw)


def test_new_get_on_an_open_stream_reinitialises_it(start_server):
    server = start_server("--reinit")
    stream = RawStream(server.port, "/sse/room")
    stream.read_until(b":ok\n\n")
    stream.request("/sse/other")
    raw = stream.read_until(b"5\r\n:ok\n\n\r\n", count=2)
    first, second = raw.split(FINAL, 1)
    assert first.endswith(b"5\r\n:ok\n\n\r\n")
    assert responses(first) == [b"200"] and responses(second) == [b"200"]
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    server.control(b"room=old\nother=new\nother=" + END + b"\n")
    raw = stream.read_until(b"data: END\n\n")
    after = raw.split(FINAL, 1)[1]
    assert b"data: old" not in after
    assert re.search(rb"id: \d+-\d+\ndata: new\n\n", after)
    status = server.command(b"tcpstatus")
    assert (status["reinitcnt"], status["allconncli"], status["sseconncli"]) == (
        1,
        1,
        1,
    )
    server.wait_for_log(r"subscriber <\d+> 127\.0\.0\.1:\d+ reinitialised its stream$")
    stream.close()


def test_reinit_keeps_the_client_id(start_server):
    server = start_server("--reinit", "--dialect", "hasses")
    stream = RawStream(server.port, "/sse?subscribe=room&id=u17")
    stream.read_until(b":ok\n\n")
    stream.request("/sse?subscribe=room2")
    stream.read_until(b"5\r\n:ok\n\n\r\n", count=2)
    server.control(b"room2-u17=not for u17\nroom2=" + END + b"\n")
    raw = stream.read_until(b"data: END\n\n")
    assert b"not for u17" not in raw
    stream.close()


def test_without_reinit_a_new_request_is_discarded(start_server):
    server = start_server()
    stream = RawStream(server.port, "/sse/room")
    stream.read_until(b":ok\n\n")
    stream.request("/sse/other")
    server.control(b"other=no\nroom=still\nroom=" + END + b"\n")
    raw = stream.read_until(b"data: END\n\n")
    assert FINAL not in raw and responses(raw) == [b"200"]
    assert b"data: still" in raw and b"data: no" not in raw
    assert server.command(b"tcpstatus")["reinitcnt"] == 0
    stream.close()


def test_reinit_can_be_switched_at_run_time(start_server):
    server = start_server()
    with ControlClient(server.control_port) as control:
        control.send(b"reinit_enable\ntcpstatus\n")
        assert control.reply()["reinitcnt"] == 0
    stream = RawStream(server.port, "/sse/room")
    stream.read_until(b":ok\n\n")
    stream.request("/sse/other")
    stream.read_until(b"5\r\n:ok\n\n\r\n", count=2)
    server.control(b"reinit_disable\nother=" + END + b"\n")
    raw = stream.read_until(b"data: END\n\n")
    assert responses(raw) == [b"200", b"200"]
    stream.request("/sse/third")  # off again: discarded
    server.control(b"other=" + END + b"2\n")
    raw = stream.read_until(b"data: END2\n\n")
    assert responses(raw) == [b"200", b"200"]
    assert server.command(b"tcpstatus")["reinitcnt"] == 1
    stream.close()
