"""
Unit tests for L{sseserver.fastwrite}: frames go straight to the socket only
when Twisted holds nothing unsent, and always arrive whole and in order, whether
one writer sends them or a channel's lane.

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

from sseserver.event import Event
from sseserver.fastwrite import DirectWriter, Lane, holds_nothing, plain_socket
from sseserver.grammar import Target
from sseserver.hub import Hub
from sseserver.registry import Registry, Subscriber
from sseserver.verbosity import Verbosity


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


# Lanes: one channel's direct writers, sent to in one C-level loop.


def chunk_of(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = b"HTTP/1.1 200 OK\r\n\r\n5\r\n:ok\n\n\r\n"


class Channel:
    """
    Subscribers of channel C{c} on real loopback links, with a hub; each stream
    opened as web.py and stream.py do it: the response head written through
    Twisted, the subscriber made the transport's producer.
    """

    def __init__(self, count: int, max_buffer: int = 1 << 20):
        self.registry = Registry()
        self.hub = Hub(self.registry, Verbosity.named("quiet"), history=0)
        self.links = [Link() for _ in range(count)]
        self.subs = []
        for number, link in enumerate(self.links):
            link.transport.write(HEAD)
            sub = Subscriber(
                number, ("c",), False, None, link.transport, True, max_buffer=max_buffer
            )
            self.registry.add(sub)
            link.transport.registerProducer(sub, True)
            sub.promote()
            self.subs.append(sub)

    def open(self) -> None:
        """Let Twisted send the response heads."""
        for link in self.links:
            link.flush()
            assert link.readable_now() == HEAD

    @property
    def lane(self) -> Lane:
        return self.registry._lanes["c"]

    def publish(self, data: bytes) -> bytes:
        """Deliver an event to C{c}; return its chunk."""
        event = Event(
            "1-0", Target(channels=frozenset({"c"})), "message", data.decode()
        )
        self.hub.deliver(event)
        return event.chunk

    def close(self) -> None:
        for link in self.links:
            link.close()


@pytest.fixture
def channel():
    made = []

    def make(count: int, **options) -> Channel:
        made.append(Channel(count, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def fill(link: Link) -> bytes:
    """Fill the socket's buffers behind Twisted's back: what the peer will read."""
    filler = []
    while True:
        try:
            sent = link.transport.socket.send(b"." * 65536)
        except BlockingIOError:
            return b"".join(filler)
        filler.append(b"." * sent)


def test_lane_takes_writers_once_twisted_sent_their_heads(channel):
    ch = channel(3)
    assert len(ch.lane) == 0  # the response heads are still Twisted's to send
    assert all(link.transport.producerPaused for link in ch.links)
    ch.open()  # Twisted tells each producer it sent everything
    assert len(ch.lane) == 3
    first = ch.publish(b"one")
    second = ch.publish(b"two")
    assert ch.lane.sent == 2
    for link, sub in zip(ch.links, ch.subs):
        assert link.readable_now() == first + second
        assert sub.messages == 2
    assert ch.hub.deliveries == 6


def test_event_before_the_head_is_sent_goes_behind_it(channel):
    ch = channel(2)
    first = ch.publish(b"early")  # each subscriber on its own, through Twisted
    assert len(ch.lane) == 0
    assert ch.subs[0].messages == 1
    for link in ch.links:
        link.flush()
        assert link.readable_now() == HEAD + first
    assert len(ch.lane) == 2


def test_lane_member_with_a_full_socket_falls_behind_alone(channel):
    ch = channel(3)
    ch.open()
    slow_link, slow = ch.links[1], ch.subs[1]
    filler = fill(slow_link)

    frame = ch.publish(b"event")
    assert not slow.direct and slow not in ch.lane.members
    assert len(ch.lane) == 2
    for link in (ch.links[0], ch.links[2]):
        assert link.readable_now() == frame
    later = ch.publish(b"later")  # behind the first, through Twisted
    assert slow_link.receive(len(filler) + 2 * len(frame)) == filler + frame + later
    assert [sub.messages for sub in ch.subs] == [2, 2, 2]
    # Twisted has sent all it held, and said so: direct, in the lane again.
    assert slow.direct and slow in ch.lane.members

    again = ch.publish(b"again")
    assert slow_link.readable_now() == again
    assert slow.messages == 3


def test_lane_partial_sends_go_on_through_twisted(channel):
    ch = channel(2, max_buffer=64 << 20)  # room for the big frame in Twisted
    ch.open()
    big = b"x" * (32 << 20)  # more than the socket buffers hold
    frame = ch.publish(big)
    assert len(ch.lane) == 0
    tail = ch.publish(b"tail")
    for link, sub in zip(ch.links, ch.subs):
        assert link.receive(len(frame) + len(tail)) == frame + tail
        assert sub.messages == 2
        assert sub in ch.lane.members
        assert not sub.paused and not sub.errors


def test_lane_member_whose_peer_reset_is_left_to_twisted(channel):
    ch = channel(2)
    ch.open()
    gone = ch.links[0]
    gone.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    gone.peer.close()
    for _ in range(3):  # the first send may still succeed before the RST is seen
        ch.publish(b"x" * 100)
    assert ch.subs[0] not in ch.lane.members
    assert gone.transport.doWrite() is not None  # Twisted reports the loss
    assert ch.subs[1] in ch.lane.members


def test_stop_writing_and_removal_leave_the_lane(channel):
    ch = channel(2)
    ch.open()
    ch.publish(b"one")
    ch.subs[0].stop_writing()
    assert list(ch.lane.members) == [ch.subs[1]]
    lane = ch.lane
    ch.registry.remove(ch.subs[1])
    assert len(lane) == 0 and ch.subs[1].lane is None
    ch.registry.remove(ch.subs[0])
    assert ch.registry._lanes == {}
    assert [sub.messages for sub in ch.subs] == [1, 1]


def test_heartbeat_counts_lane_writes(channel):
    ch = channel(2)
    ch.open()
    ch.registry.heartbeat()  # both were written to (the opening line)
    ch.publish(b"through the lane")
    for link in ch.links:
        link.readable_now()
    ch.registry.heartbeat()
    assert [link.readable_now() for link in ch.links] == [b"", b""]
    ch.registry.heartbeat()
    assert [link.readable_now() for link in ch.links] == [b"3\r\n:\n\n\r\n"] * 2
