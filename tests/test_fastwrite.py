"""
Unit tests for L{sseserver.fastwrite}: frames go straight to the socket only
when Twisted holds nothing unsent, and always arrive whole and in order.

The transport is Twisted's real C{tcp.Connection} on a real loopback TCP
connection; its reactor is a L{MemoryReactor}, so the test decides when Twisted
gets to send what it buffered (C{doWrite}, as the reactor would when the socket is
writable).  Bytes that are readable at the peer before any C{doWrite} went
straight to the socket.
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from sseserver.fastwrite import DirectWriter, holds_nothing, plain_socket


class Lost(Protocol):
    def __init__(self):
        self.reasons = []

    def connectionLost(self, reason=None):
        self.reasons.append(reason)


class Link:
    """A Twisted TCP transport and the raw socket at the other end."""

    def __init__(self):
        listener = socket.create_server(("127.0.0.1", 0))
        self.peer = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        listener.close()
        self.reactor = MemoryReactor()
        self.protocol = Lost()
        self.transport = tcp.Connection(server, self.protocol, self.reactor)
        self.transport.connected = 1
        self.writer = DirectWriter(self.transport)

    def flush(self) -> None:
        """What the reactor does when the socket is writable."""
        if self.transport in self.reactor.getWriters():
            assert self.transport.doWrite() is None

    def readable_now(self) -> bytes:
        """What the peer can read without Twisted having run."""
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def receive(self, size: int) -> bytes:
        """Exactly C{size} bytes, letting Twisted send as the peer reads."""
        data = b""
        while len(data) < size:
            data += self.readable_now()
            self.flush()
        assert len(data) == size
        return data

    def close(self) -> None:
        self.peer.close()
        self.transport.socket.close()


@pytest.fixture
def link():
    pair = Link()
    yield pair
    pair.close()


def test_plain_tcp_has_its_socket_other_transports_none(link):
    assert plain_socket(link.transport) is link.transport.socket
    assert plain_socket(StringTransport()) is None


def test_without_a_socket_every_write_goes_through_the_transport():
    transport = StringTransport()
    writer = DirectWriter(transport)
    writer.write(b"one ")
    writer.write(b"two")
    assert transport.value() == b"one two"


def test_waits_for_what_twisted_holds_then_writes_directly(link):
    link.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")  # the response head
    link.writer.write(b"first")
    assert link.readable_now() == b""  # behind the head, in Twisted's buffer
    link.flush()
    assert link.readable_now() == b"HTTP/1.1 200 OK\r\n\r\nfirst"
    assert holds_nothing(link.transport)

    link.writer.write(b"second")
    assert link.readable_now() == b"second"  # no reactor turn needed
    assert link.reactor.getWriters() == []


def test_partial_send_queues_the_rest_and_later_frames_behind_it(link):
    big = bytes(range(256)) * 131072  # 32 MiB: more than both socket buffers hold
    link.writer.write(b"A")
    link.writer.write(big)
    assert not holds_nothing(link.transport)  # the rest is Twisted's
    link.writer.write(b"Z")
    assert link.transport in link.reactor.getWriters()

    assert link.receive(1 + len(big) + 1) == b"A" + big + b"Z"
    assert holds_nothing(link.transport)
    link.writer.write(b"direct again")
    assert link.readable_now() == b"direct again"


def test_stop_writing_writes_nothing_more(link):
    link.flush()
    link.writer.write(b"last")
    link.writer.stop_writing()
    link.writer.write(b"never")
    link.flush()
    assert link.readable_now() == b"last"
    assert link.reactor.getWriters() == []


def test_closing_transport_gets_nothing_directly(link):
    link.flush()
    link.transport.loseConnection()
    link.writer.write(b"late")
    assert link.readable_now() == b""


def test_send_error_is_left_to_twisted(link):
    link.flush()
    link.writer.write(b"before")
    assert link.readable_now() == b"before"
    link.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    link.peer.close()  # a reset
    for _ in range(3):  # the first send may still succeed before the RST is seen
        link.writer.write(b"x" * 100)
    assert not holds_nothing(link.transport)
    assert link.transport.doWrite() is not None  # Twisted reports the loss
