"""
Writing a subscriber's frames straight to its socket — the one place sseserver
bypasses a Twisted layer.

Why: C{transport.write} queues the bytes, registers the socket for writability
(an C{epoll_ctl}), sends on the next reactor turn, then unregisters it (another
C{epoll_ctl}): three system calls and a reactor dispatch per event per subscriber,
where one C{send} does whenever the socket has room, which is nearly always.  On
the fan-out path that is most of the server's CPU.

When Twisted already holds unsent data for the transport, or the connection is
closing, or C{send} takes only part or fails, the bytes go through
C{transport.write} as usual: ordering, flow control (the producer pause at 64 KiB)
and error handling stay Twisted's.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.tcp import Connection


def socket_writer(transport) -> Callable[[bytes], object]:
    """
    C{transport.write}, or its faster equivalent for a plain TCP transport.  The
    type is checked exactly: a TLS transport wraps a TCP connection and forwards
    attribute lookups to it, but its bytes must go through the TLS layer.
    """
    if isinstance(transport, Connection) and not ISSLTransport.providedBy(transport):
        return DirectWrite(transport, transport.socket.send)
    return transport.write


class DirectWrite:
    __slots__ = ("transport", "send")

    def __init__(self, transport, send: Callable[[bytes], int]):
        self.transport = transport
        self.send = send

    def __call__(self, data: bytes) -> None:
        transport = self.transport
        if (
            transport.dataBuffer
            or transport._tempDataLen
            or transport.disconnecting
            or not transport.connected
        ):
            transport.write(data)
            return
        try:
            sent = self.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            transport.write(data)  # Twisted's next write attempt reports the error
            return
        if sent < len(data):
            transport.write(data[sent:])
