"""
The hub: the one place an accepted event goes.  It gives the event its id, counts
it, and hands it to every subscriber the registry matches.
"""

from __future__ import annotations

import time
from typing import Callable

from twisted.logger import Logger

from sseserver.event import Event, IdGenerator
from sseserver.grammar import Message
from sseserver.registry import Registry
from sseserver.verbosity import Verbosity


class Hub:
    log = Logger()

    def __init__(
        self,
        registry: Registry,
        verbosity: Verbosity,
        clock: Callable[[], float] = time.time,
    ):
        self.registry = registry
        self.verbosity = verbosity
        self.ids = IdGenerator(clock)
        #: Events accepted (C{msgproccnt}).
        self.accepted = 0
        #: Deliveries, event x subscriber (C{msgsendcnt}).
        self.deliveries = 0

    def publish(self, message: Message) -> Event:
        """Deliver one message now; return the event with its id and encoding."""
        event = Event(self.ids.next(), message.target, message.type, message.data)
        reached = self.registry.match(message.target)
        for subscriber in reached:
            subscriber.send(event)
        self.accepted += 1
        self.deliveries += len(reached)
        if self.verbosity.debug:
            self.log.info(
                "event {id} type={type} to {target}: delivered to {count}",
                id=event.id,
                type=event.type,
                target=str(event.target),
                count=len(reached),
            )
        return event
