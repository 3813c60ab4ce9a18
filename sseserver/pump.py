"""
Feeding received lines to the dispatcher a bounded amount at a time.

One 64 KiB read from a publisher can hold thousands of lines, each fanning out to
thousands of subscribers: handled in one go, that is seconds in which the reactor
accepts nobody, sends no heartbeat and hears no other publisher.  A pump handles
lines until they have made L{DELIVERIES_PER_TURN} deliveries, then stops reading
its input and lets the reactor turn before it goes on.  It also holds its input
while the input flow control (L{sseserver.flow}) says the subscribers are backed
up.  Lines already received are never dropped: a pump whose connection is gone
still handles what it holds.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

from sseserver.dispatch import Dispatcher

#: About 50-100 ms of fan-out work between two reactor turns.
DELIVERIES_PER_TURN = 20000


class LinePump:
    def __init__(
        self,
        dispatcher: Dispatcher,
        source: str,
        reactor,
        flow,
        source_input,
        reply: Optional[Callable[[list], object]] = None,
        sender: str = "",
    ):
        self.dispatcher = dispatcher
        self.source = source
        self.reactor = reactor
        self.flow = flow
        self.reply = reply
        self.sender = sender
        self._input = source_input  # pauseProducing/resumeProducing of the reads
        self._pending: deque = deque()
        self._holding = False
        self._call = None

    def push(self, lines: list) -> None:
        self._pending.extend(lines)
        if self._call is None:
            self._run()

    def finish(self, lines: list) -> None:
        """The input is gone; handle what it sent, reply to nobody."""
        self._input = None
        self.reply = None
        self.push(lines)

    def _run(self) -> None:
        self._call = None
        hub = self.dispatcher.hub
        budget = hub.deliveries + DELIVERIES_PER_TURN
        while self._pending:
            if self.flow.throttled:
                self._hold()  # the flow control resumes us
                return
            if hub.deliveries >= budget:
                self._hold()
                self._call = self.reactor.callLater(0, self._run)
                return
            replies = self.dispatcher.line(
                self._pending.popleft(), self.source, self.sender
            )
            if replies and self.reply is not None:
                self.reply(replies)
        self._release()

    def _hold(self) -> None:
        if not self._holding and self._input is not None:
            self._input.pauseProducing()
        self._holding = True

    def _release(self) -> None:
        if self._holding and not self.flow.throttled:
            self._holding = False
            if self._input is not None:
                self._input.resumeProducing()

    # driven by the input flow control

    def pauseProducing(self) -> None:
        self._hold()

    def resumeProducing(self) -> None:
        if self._call is None:
            self._call = self.reactor.callLater(0, self._run)

    def stopProducing(self) -> None:
        pass
