"""
An open stream after its handshake.

Once the response head and the opening line are written, the HTTP machinery of
the connection (the L{HTTPChannel} with its parser state and the L{Request} with
its parsed headers) has nothing left to do: the stream only needs its subscriber.
L{Stream} takes the channel's place as the transport's protocol, so that a few
hundred bytes per connection remain instead of several kilobytes (SPEC §8, issue
4: memory per connection).  It discards what the peer sends, up to a cap, and
reports the end of the connection to the site.
"""

from __future__ import annotations

from twisted.internet.protocol import connectionDone

#: Bytes a peer may send on an open stream before it is disconnected.
MAX_IGNORED_BYTES = 65536


class Stream:
    __slots__ = ("subscriber", "site", "ignored")

    def __init__(self, subscriber, site):
        self.subscriber = subscriber
        self.site = site
        self.ignored = 0

    @property
    def transport(self):
        return self.subscriber.transport

    @property
    def number(self) -> int:
        return self.subscriber.number

    def dataReceived(self, data: bytes) -> None:
        """
        A new GET request re-initialises the stream when reinit is on (SPEC
        §2.8); anything else is discarded, up to a cap.
        """
        if data.startswith(b"GET ") and self.site.reinit(self, data):
            return
        self.ignored += len(data)
        if self.ignored > MAX_IGNORED_BYTES:
            self.site.log_rejected(self, "sent more than 64 KiB on an open stream")
            self.subscriber.stopProducing()  # nothing more for a closing connection
            self.transport.abortConnection()

    def connectionLost(self, reason=connectionDone) -> None:
        self.site.stream_closed(self)


def set_protocol(transport, protocol) -> None:
    """Make C{protocol} receive the transport's bytes (under TLS or not)."""
    if hasattr(transport, "wrappedProtocol"):  # TLSMemoryBIOProtocol
        transport.wrappedProtocol = protocol
    else:
        transport.protocol = protocol


def hand_over(channel, stream: Stream) -> None:
    """
    Make C{stream} the protocol of the channel's transport (the TCP connection,
    or the TLS layer over it) and its subscriber the transport's push producer.
    """
    transport = channel.transport
    channel.setTimeout(None)  # heartbeats and keepalives watch the stream now
    transport.unregisterProducer()
    transport.registerProducer(stream.subscriber, True)
    stream.subscriber.promote()  # direct writes once the response head is sent
    set_protocol(transport, stream)
    channel.requests = []  # let the request go
