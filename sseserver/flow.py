"""
Input flow control: when publishing outruns what the subscribers' sockets take,
stop reading the inputs until the backlog drains, so that memory stays bounded
under a flood of publishes.

A subscriber counts as backed up while its transport holds more than 64 KiB
unsent (the transport has paused it, see L{sseserver.registry.Subscriber}).  A few
slow subscribers never stop the inputs (they are dropped at their own
--max-client-buffer instead; one slow reader must not stall everybody); only when
more than a share of all subscribers are backed up at once — the mark of a flood —
do the inputs pause, until at most half that many are left.
"""

from __future__ import annotations

from twisted.logger import Logger

#: Inputs pause when more than max(MIN_BACKED_UP, subscribers // SHARE) are
#: backed up.
MIN_BACKED_UP = 8
SHARE = 16

log = Logger(namespace="sseserver.flow")


class Congestion:
    def __init__(self, registry, verbosity=None):
        self.registry = registry
        self.verbosity = verbosity
        self.backed_up = 0
        self.throttled = False
        #: Push producers of published data: control transports, the FIFO.
        self.inputs: set = set()

    def limit(self) -> int:
        return max(MIN_BACKED_UP, len(self.registry) // SHARE)

    def subscriber_paused(self) -> None:
        self.backed_up += 1
        if not self.throttled and self.backed_up > self.limit():
            self.throttled = True
            if self.verbosity is not None and self.verbosity.debug:
                log.info("{n} subscribers backed up: inputs paused", n=self.backed_up)
            for producer in list(self.inputs):
                producer.pauseProducing()

    def subscriber_resumed(self) -> None:
        self.backed_up -= 1
        if self.throttled and self.backed_up <= self.limit() // 2:
            self.throttled = False
            if self.verbosity is not None and self.verbosity.debug:
                log.info("backlog drained: inputs resumed")
            for producer in list(self.inputs):
                producer.resumeProducing()

    def add_input(self, producer) -> None:
        self.inputs.add(producer)
        if self.throttled:
            producer.pauseProducing()

    def remove_input(self, producer) -> None:
        self.inputs.discard(producer)


class NoCongestion:
    """Flow control for parts used outside a server (tests): never throttled."""

    throttled = False

    def subscriber_paused(self) -> None:
        pass

    def subscriber_resumed(self) -> None:
        pass

    def add_input(self, producer) -> None:
        pass

    def remove_input(self, producer) -> None:
        pass


NO_CONGESTION = NoCongestion()
