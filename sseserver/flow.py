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
        self._backed = False  # too many subscribers backed up
        self._held = 0  # holds of other backlogs (the cluster's unanswered XADDs)
        #: Push producers of published data: control transports, the FIFO.
        self.inputs: set = set()
        #: Push producers of events to deliver (the cluster's reading of the
        #: stream): they wait for the subscribers only, not for other holds.
        self.readers: set = set()

    def limit(self) -> int:
        return max(MIN_BACKED_UP, len(self.registry) // SHARE)

    def subscriber_paused(self) -> None:
        self.backed_up += 1
        if not self._backed and self.backed_up > self.limit():
            self._backed = True
            for reader in list(self.readers):
                reader.pauseProducing()
            self._update(f"{self.backed_up} subscribers backed up")

    def subscriber_resumed(self) -> None:
        self.backed_up -= 1
        if self._backed and self.backed_up <= self.limit() // 2:
            self._backed = False
            for reader in list(self.readers):
                reader.resumeProducing()
            self._update("subscribers' backlog drained")

    def hold(self, reason: str) -> None:
        """Another backlog (not the subscribers') asks the inputs to wait."""
        self._held += 1
        self._update(reason)

    def release(self, reason: str) -> None:
        self._held -= 1
        self._update(reason)

    def _update(self, reason: str) -> None:
        throttled = self._backed or self._held > 0
        if throttled == self.throttled:
            return
        self.throttled = throttled
        if self.verbosity is not None and self.verbosity.debug:
            log.info(
                "{reason}: inputs {what}",
                reason=reason,
                what="paused" if throttled else "resumed",
            )
        for producer in list(self.inputs):
            if throttled:
                producer.pauseProducing()
            else:
                producer.resumeProducing()

    def add_input(self, producer) -> None:
        self.inputs.add(producer)
        if self.throttled:
            producer.pauseProducing()

    def remove_input(self, producer) -> None:
        self.inputs.discard(producer)

    def add_reader(self, producer) -> None:
        self.readers.add(producer)
        if self._backed:
            producer.pauseProducing()

    def remove_reader(self, producer) -> None:
        self.readers.discard(producer)


class NoCongestion:
    """Flow control for parts used outside a server (tests): never throttled."""

    throttled = False

    def subscriber_paused(self) -> None:
        pass

    def subscriber_resumed(self) -> None:
        pass

    def hold(self, reason: str) -> None:
        pass

    def release(self, reason: str) -> None:
        pass

    def add_input(self, producer) -> None:
        pass

    def remove_input(self, producer) -> None:
        pass

    add_reader = add_input
    remove_reader = remove_input


NO_CONGESTION = NoCongestion()
