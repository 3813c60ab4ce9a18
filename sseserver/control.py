"""
The control port (SPEC §5): lines in; JSON replies, one object per line, out.
"""

from __future__ import annotations

import json
from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
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
        self._waiting: deque = deque()  # replies held back behind a later one
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
        """
        Write replies in the order of the lines they answer.  In a cluster a
        publish's reply (an error, or nothing) is a Deferred: what follows it
        waits for it.
        """
        waiting = self._waiting
        if not waiting and not any(isinstance(r, Deferred) for r in replies):
            self.transport.write(b"".join(encode_reply(r) for r in replies))
            return
        for reply in replies:
            if isinstance(reply, Deferred):
                later = _Later()
                waiting.append(later)
                reply.addBoth(self._arrived, later)
            else:
                waiting.append(reply)
        self._flush()

    def _arrived(self, result, later: "_Later") -> None:
        if isinstance(result, Failure):
            self.log.failure("control reply failed", result)
            result = {"error": "internal error"}
        later.reply, later.done = result, True
        self._flush()

    def _flush(self) -> None:
        waiting = self._waiting
        ready = []
        while waiting:
            head = waiting[0]
            if isinstance(head, _Later):
                if not head.done:
                    break
                head = head.reply
            waiting.popleft()
            if head is not None:
                ready.append(encode_reply(head))
        if ready:
            self.transport.write(b"".join(ready))


class _Later:
    """The place in the reply order of a reply not known yet."""

    __slots__ = ("reply", "done")

    def __init__(self):
        self.reply = None
        self.done = False


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
