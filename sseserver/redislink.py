"""
One connection to Redis kept up for the cluster (L{sseserver.cluster}):
reconnecting with backoff, AUTH/SELECT/PING before use, one report when it goes
down and one when it is back, and a watchdog for a Redis that stops answering.
"""

from __future__ import annotations

from random import random
from typing import Callable, Optional

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, endpoints
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from sseserver.resp import RedisAddress, RedisProtocol

#: Seconds a command may go unanswered before the connection counts as dead.
COMMAND_TIMEOUT = 5.0


class RedisLink:
    """
    One connection to Redis, kept up: it reconnects with backoff, and tells its
    owner when it comes up (C{on_up(protocol)}) and goes down (C{on_down(reason)},
    once per outage).  A command unanswered for longer than C{timeout} seconds
    (a Redis that hangs) counts as the connection gone.
    """

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor,
        on_up: Callable,
        on_down: Callable,
        timeout: float = COMMAND_TIMEOUT,
    ):
        self.address = address
        self.reactor = reactor
        self.on_up = on_up
        self.on_down = on_down
        self.timeout = timeout
        self.protocol: Optional[RedisProtocol] = None
        self._policy = backoffPolicy(
            initialDelay=0.1, maxDelay=2.0, factor=1.5, jitter=lambda: random() / 4
        )
        self._attempt = 0
        self._down = False
        self._running = False
        self._retry = None
        self._connecting = None
        self._watchdog = LoopingCall(self._check_stuck)
        self._watchdog.clock = reactor

    def start(self) -> None:
        self._running = True
        self._watchdog.start(1.0, now=False)
        self._connect()

    def stop(self) -> defer.Deferred:
        self._running = False
        if self._watchdog.running:
            self._watchdog.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.protocol is not None:
            lost = self.protocol.lost
            self.protocol.transport.abortConnection()
            return lost
        return defer.succeed(None)

    def _connect(self) -> None:
        self._retry = None
        endpoint = endpoints.clientFromString(self.reactor, self.address.endpoint())
        factory = Factory.forProtocol(lambda: RedisProtocol(clock=self.reactor))
        factory.noisy = False
        self._connecting = endpoint.connect(factory)
        self._connecting.addCallback(self._setup)
        self._connecting.addCallbacks(self._connected, self._failed)

    def _setup(self, protocol: RedisProtocol) -> defer.Deferred:
        """AUTH and SELECT as the URL says, then PING: Redis really answers."""
        commands = [*self.address.setup_commands(), ("PING",)]
        replies = [protocol.execute(*command) for command in commands]
        ready = defer.gatherResults(replies, consumeErrors=True)
        ready.addTimeout(self.timeout, self.reactor)

        def failed(failure):
            protocol.transport.abortConnection()
            if failure.check(defer.FirstError):
                return failure.value.subFailure
            return failure

        return ready.addCallbacks(lambda _: protocol, failed)

    def _connected(self, protocol: RedisProtocol) -> None:
        self._connecting = None
        self._attempt = 0
        self._down = False
        self.protocol = protocol
        protocol.lost.addCallback(self._lost)
        self.on_up(protocol)

    def _lost(self, _) -> None:
        reason = self.protocol.lost_reason
        self.protocol = None
        self._went_down(reason)

    def _failed(self, failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError):
            return
        self._went_down(failure)

    def _went_down(self, reason) -> None:
        if not self._running:
            return  # stopped: the connection was closed on purpose
        if not self._down:
            self._down = True
            self.on_down(reason)
        self._attempt += 1
        delay = self._policy(self._attempt)
        self._retry = self.reactor.callLater(delay, self._connect)

    def _check_stuck(self) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        oldest = protocol.oldest_wait()
        if oldest is not None and self.reactor.seconds() - oldest > self.timeout:
            self.log.warn(
                "redis at {address}: no answer for {timeout} s; reconnecting",
                address=self.address.display(),
                timeout=self.timeout,
            )
            protocol.transport.abortConnection()
