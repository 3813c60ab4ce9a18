"""
The control port (SPEC §5): lines in; JSON replies, one object per line, out.
"""

from __future__ import annotations

import json

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from sseserver.commands import CONTROL
from sseserver.dispatch import Dispatcher
from sseserver.flow import Congestion
from sseserver.framing import LineSplitter
from sseserver.pump import LinePump
from sseserver.verbosity import Verbosity


def encode_reply(reply: dict) -> bytes:
    return json.dumps(reply).encode("ascii") + b"\n"


@implementer(IPushProducer)
class ControlProtocol(Protocol):
    """
    One control connection.  It is the push producer of its own replies: when
    more than 64 KiB of them pile up unread, the transport pauses it and the
    client is disconnected (SPEC §5.4).
    """

    log = Logger()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self._lines = LineSplitter()
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        factory = self.factory
        self._pump = LinePump(
            factory.dispatcher,
            CONTROL,
            factory.reactor,
            factory.flow,
            self.transport,
            reply=self._reply,
            sender=self.peer,
        )
        factory.flow.add_input(self._pump)
        if factory.verbosity.normal:
            self.log.info("control connection from {peer}", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        self._pump.push(self._lines.feed(data))

    def connectionLost(self, reason) -> None:
        self.factory.flow.remove_input(self._pump)
        # A last line without a newline counts when the writer closes (SPEC §5.1).
        self._pump.finish(self._lines.close())
        if self.factory.verbosity.normal:
            self.log.info("control connection from {peer} closed", peer=self.peer)

    def pauseProducing(self) -> None:
        self.log.warn(
            "control connection from {peer}: more than 64 KiB of replies unread;"
            " disconnected",
            peer=self.peer,
        )
        self.transport.abortConnection()

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def _reply(self, replies: list) -> None:
        self.transport.write(b"".join(encode_reply(r) for r in replies))


class ControlFactory(Factory):
    protocol = ControlProtocol
    noisy = False

    def __init__(
        self, dispatcher: Dispatcher, verbosity: Verbosity, flow: Congestion, reactor
    ):
        self.dispatcher = dispatcher
        self.verbosity = verbosity
        self.flow = flow
        self.reactor = reactor
