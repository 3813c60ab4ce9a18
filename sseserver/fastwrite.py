"""
Writing a subscriber's frames straight to its socket — the one place sseserver
bypasses a Twisted layer.

Why: C{transport.write} queues the bytes, registers the socket for writability
(an C{epoll_ctl}), sends on the next reactor turn, then unregisters it (another
C{epoll_ctl}): three system calls and a reactor dispatch per event per subscriber,
where one C{send} does whenever the socket has room, which is nearly always.  On
the fan-out path that is most of the server's CPU.

A L{DirectWriter} remembers whether Twisted holds nothing unsent for the
transport, so that the fan-out loop touches only the writer and its socket: an
event to thousands of subscribers is thousands of objects visited, and every
object more is a cache miss more per delivery.  It learns that Twisted holds
something when a C{send} takes only part or fails, and then writes through
C{transport.write} (ordering, flow control and error handling stay Twisted's)
until Twisted's buffer is empty again.  Closing goes through L{stop_writing}:
a connection that is closing gets nothing more.
"""

from __future__ import annotations

import socket
from typing import Optional

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.tcp import Connection


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
    """Writes frames to a transport, straight to its socket when it can."""

    # The first two are read for every delivery: keep them first (see Subscriber).
    __slots__ = ("_direct", "_socket", "transport", "_stopped")

    def __init__(self, transport):
        self.transport = transport
        self._socket = plain_socket(transport)
        self._direct = False  # until Twisted has sent what was written before us
        self._stopped = False

    def write(self, frame: bytes) -> None:
        if self._direct:
            try:
                sent = self._socket.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # Twisted's write below meets the error and reports it
            if sent == len(frame):
                return
            self._direct = False
            self.queue(frame[sent:])
        elif self._stopped:
            return
        elif self._socket is not None and holds_nothing(self.transport):
            self._direct = True
            self.write(frame)
        else:
            self.queue(frame)

    def queue(self, frame: bytes) -> None:
        """Hand bytes to Twisted, which sends them when the socket has room."""
        self.transport.write(frame)

    def stop_writing(self) -> None:
        """Write nothing more: the connection is closing or gone."""
        self._direct = False
        self._stopped = True
