"""
Writing subscribers' frames straight to their sockets — the one place sseserver
bypasses a Twisted layer.

Why: C{transport.write} queues the bytes, registers the socket for writability
(an C{epoll_ctl}), sends on the next reactor turn, then unregisters it (another
C{epoll_ctl}): three system calls and a reactor dispatch per event per subscriber,
where one C{send} does whenever the socket has room, which is nearly always.  On
the fan-out path that is most of the server's CPU.

A L{DirectWriter} remembers whether Twisted holds nothing unsent for its
transport.  It learns that Twisted holds something when a C{send} takes only part
or fails, and then writes through C{transport.write} (ordering, flow control and
error handling stay Twisted's) until Twisted's buffer is empty again.  As the
transport's producer it asks to be told when that is: Twisted calls a paused
producer's C{resumeProducing} once it has sent everything, so the writer marks
itself paused (C{producerPaused}) whenever it leaves bytes to Twisted, the
response head included.  Closing goes through L{DirectWriter.stop_writing}: a
closing connection gets nothing more.

A L{Lane} holds the direct writers of one channel that hold only that channel:
an event to the channel goes to all of them in one loop that runs in C
(C{socket.send} mapped over their sockets), with no Python code and no Python
object touched per subscriber but the socket.  Between two kernel sends, every
object visited is a cache miss, so this is what is left of the interpreter's
share of a delivery (bench/RESULTS.md).  A member whose send takes only part or
fails leaves the lane and goes on as a single direct writer.
"""

from __future__ import annotations

import socket
from itertools import repeat
from typing import Optional

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.tcp import Connection

_SEND = socket.socket.send


def plain_socket(transport) -> Optional[socket.socket]:
    """
    The socket under a plain TCP transport, or C{None}.  The type is checked
    exactly: a TLS transport wraps a TCP connection and forwards attribute
    lookups to it, but its bytes must go through the TLS layer.
    """
    if isinstance(transport, Connection) and not ISSLTransport.providedBy(transport):
        return transport.socket
    return None


def holds_nothing(transport: Connection) -> bool:
    """Twisted has no unsent bytes for the transport, and it is open."""
    return not (
        transport.dataBuffer
        or transport._tempDataLen
        or transport.disconnecting
        or not transport.connected
    )


class DirectWriter:
    """
    Writes frames to a transport, straight to its socket when it can.  With a
    C{lane}, it is a member of that lane while it writes directly.
    """

    # The first two are read for every delivery: keep them first (see Subscriber).
    __slots__ = ("_direct", "_socket", "transport", "_stopped", "lane")

    def __init__(self, transport):
        self.transport = transport
        self._socket = plain_socket(transport)
        self._direct = False  # until Twisted has sent what was written before us
        self._stopped = False
        self.lane: Optional[Lane] = None

    @property
    def direct(self) -> bool:
        """Frames go straight to the socket (and to the lane's, if any)."""
        return self._direct

    def write(self, frame: bytes) -> None:
        if self._direct:
            try:
                sent = self._socket.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # Twisted's write meets the error and reports it
            if sent < len(frame):
                self.fell_behind(frame[sent:])
        elif self._stopped:
            return
        elif self.promote():
            self.write(frame)
        else:
            self.queue(frame)

    def promote(self) -> bool:
        """
        Write directly from now on if Twisted holds nothing unsent; if it holds
        something, ask it to call C{resumeProducing} once it has sent that.
        Return whether writes are direct.
        """
        if self._direct or self._stopped or self._socket is None:
            return self._direct
        if holds_nothing(self.transport):
            self._set_direct(True)
        else:
            self.transport.producerPaused = True
        return self._direct

    def fell_behind(self, rest: bytes) -> None:
        """
        A send took only part of a frame, or nothing: Twisted sends the rest, and
        everything after it until its buffer is empty again.
        """
        self._set_direct(False)
        self.queue(rest)
        if self._socket is not None:
            self.transport.producerPaused = True  # see promote()

    def queue(self, frame: bytes) -> None:
        """Hand bytes to Twisted, which sends them when the socket has room."""
        self.transport.write(frame)

    def stop_writing(self) -> None:
        """Write nothing more: the connection is closing or gone."""
        self._set_direct(False)
        self._stopped = True

    def join_lane(self, lane: Lane) -> None:
        """Take a channel's events through its lane while writing directly."""
        if self._socket is not None:
            self.lane = lane
            if self._direct:
                lane.admit(self)

    def leave_lane(self) -> None:
        if self.lane is not None and self._direct:
            self.lane.release(self)
        self.lane = None

    def _set_direct(self, direct: bool) -> None:
        if direct == self._direct:
            return
        self._direct = direct
        if self.lane is not None:
            if direct:
                self.lane.admit(self)
            else:
                self.lane.release(self)

    # told by the lane

    def lane_entered(self, sent: int) -> None:
        """Now a member; the lane has sent C{sent} frames so far."""

    def lane_left(self, sent: int) -> None:
        """No longer a member; the lane has sent C{sent} frames so far."""


class Lane:
    """The direct writers of one channel that hold only that channel."""

    __slots__ = ("members", "sent", "written")

    def __init__(self):
        self.members: dict = {}  # DirectWriter -> its socket, in joining order
        #: Frames sent to the whole lane: a member got those since it entered.
        self.sent = 0
        #: Whether a frame was sent since L{written} was last reset (heartbeats).
        self.written = False

    def __len__(self) -> int:
        return len(self.members)

    def admit(self, writer: DirectWriter) -> None:
        self.members[writer] = writer._socket
        writer.lane_entered(self.sent)

    def release(self, writer: DirectWriter) -> None:
        del self.members[writer]
        writer.lane_left(self.sent)

    def send(self, frame: bytes) -> int:
        """
        Send a frame to every member; return how many there were.  The members
        whose send takes only part of it, or fails, leave the lane and get the
        rest through Twisted.
        """
        members = self.members
        count = len(members)
        self.sent += 1
        self.written = True
        results: list = []
        sends = map(_SEND, members.values(), repeat(frame))
        while True:
            try:
                results.extend(sends)  # keeps what it got before an exception
                break
            except OSError:  # that member's send: nothing sent, Twisted retries
                results.append(0)
        size = len(frame)
        if results.count(size) != count:
            for writer, sent in zip(list(members), results):
                if sent < size:
                    writer.fell_behind(frame[sent:])
        return count
