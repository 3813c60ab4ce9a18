"""
The hub: the one place an accepted event goes.  It gives the event its id, counts
it, hands it to every subscriber the registry matches, and keeps it in the history
for C{Last-Event-ID} replay (SPEC §2.7).  In a cluster (L{sseserver.cluster}) the
ids come from the Redis stream, and every event read back from it comes to
L{Hub.deliver}.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from twisted.logger import Logger

from sseserver.event import Event, IdGenerator, gap_event
from sseserver.grammar import Message
from sseserver.history import History, parse_id
from sseserver.registry import Registry
from sseserver.verbosity import Verbosity

#: Default for --history: events kept for replay.
HISTORY = 1000
#: The inputs events come from, as the metrics label them.
INPUTS = ("control", "fifo", "http", "redis")
#: Why a subscriber went away, as the metrics label it.
DISCONNECT_REASONS = ("client", "slow", "server")


class Hub:
    log = Logger()

    def __init__(
        self,
        registry: Registry,
        verbosity: Verbosity,
        clock: Callable[[], float] = time.time,
        history: int = HISTORY,
    ):
        self.registry = registry
        self.verbosity = verbosity
        self.ids = IdGenerator(clock)
        # The horizon starts below every id (SPEC §2.7: a gap is an id below the
        # newest evicted event); History(horizon=...) could instead count ids
        # from before this process started as gaps.
        self.history: Optional[History] = History(history) if history else None
        #: Events accepted (C{msgproccnt}), and by input.
        self.accepted = 0
        self.accepted_by_input = dict.fromkeys(INPUTS, 0)
        #: Deliveries, event x subscriber (C{msgsendcnt}), replays included.
        self.deliveries = 0
        #: Bytes of the events delivered (SSE fields, without HTTP chunk framing).
        self.bytes_sent = 0
        #: Subscribers gone, by reason.
        self.disconnects = dict.fromkeys(DISCONNECT_REASONS, 0)
        self.replay_requests = 0
        self.replay_gaps = 0
        #: Replays too big for the subscriber's buffer: sent in parts.
        self.replays_cut = 0
        #: The server is stopping: every stream is ended by it.
        self.stopping = False
        self._ended: set = set()  # streams the server ended, until they close
        #: In a cluster (L{sseserver.cluster.Cluster}): told of every join.
        self.gate = None
        #: Subscribers whose last id this node has not read yet (they came from
        #: a node that is ahead): each gets no event up to that id.
        self.ahead: dict = {}

    def publish(self, message: Message, source: str = "control") -> Event:
        """Deliver one message now; return the event with its id and encoding."""
        event = Event(self.ids.next(), message.target, message.type, message.data)
        self.count_accepted(source)
        self.deliver(event)
        return event

    def deliver(self, event: Event) -> int:
        """
        Hand an event with its id to every subscriber it reaches and keep it for
        replay; return the deliveries made.  In a cluster, every event read back
        from the stream comes here.
        """
        target = event.target
        if target.exclude is None and not self.ahead:
            # The lanes first: one of the others may join its lane as it is
            # sent this event, and must not get it from the lane too.
            lanes, reached = self.registry.routes(target)
            count = sum([lane.send(event.chunk) for lane in lanes])
        else:
            reached = self.registry.match(target)
            if self.ahead:
                reached = self._behind(reached, event)
            count = 0
        for subscriber in reached:
            subscriber.send(event)
        count += len(reached)
        if count:
            self.deliveries += count
            self.bytes_sent += len(event.wire) * count
        if self.history is not None:
            self.history.append(event)
        if self.verbosity.debug:
            self.log.info(
                "event {id} type={type} to {target}: delivered to {count}",
                id=event.id,
                type=event.type,
                target=str(event.target),
                count=count,
            )
        return count

    def count_accepted(self, source: str, count: int = 1) -> None:
        """Count events accepted from an input (in a cluster: added to the stream)."""
        self.accepted += count
        self.accepted_by_input[source] = self.accepted_by_input.get(source, 0) + count

    def join(self, subscriber, *last_ids) -> None:
        """
        A new subscriber: into the registry, then its replay (SPEC §2.7).  In a
        cluster the gate may put the replay off until the node has loaded the
        stream's tail, and may tell of a subscriber that is ahead (see L{ahead}).
        """
        self.registry.add(subscriber)
        if self.gate is None or self.gate.joined(subscriber, last_ids):
            self.replay(subscriber, *last_ids)

    def _behind(self, reached: list, event: Event) -> list:
        """
        Leave out the subscribers already past C{event} (their last id, from a
        node that is ahead of this one, is not older); forget those it passes.
        """
        key = parse_id(event.id)
        ahead = self.ahead
        past = set()
        for subscriber, floor in list(ahead.items()):
            if key <= floor:
                past.add(subscriber)
            else:
                del ahead[subscriber]
        return [s for s in reached if s not in past] if past else reached

    def replay(self, subscriber, *last_ids) -> int:
        """
        Send a new subscriber what it missed (SPEC §2.7), before any live event:
        called right after it joined the registry, in the same reactor turn, so
        that nothing is published in between.  The first of C{last_ids} that was
        given (C{Last-Event-ID} header, then the C{lastEventId} parameter)
        counts; a malformed one is ignored.

        A replay is written at once, as live events are.  When the subscriber
        cannot take it all (its transport holds more than half of what
        --max-client-buffer allows), the stream ends cleanly after the part
        written: the client reconnects with the last id it got and the replay
        goes on from there (an EventSource does this by itself), instead of the
        subscriber being dropped as a slow reader with nothing gained.  Returns
        the number of events replayed.
        """
        history = self.history
        if history is None:
            return 0
        given = next((i for i in last_ids if i), None)
        key = parse_id(given)
        if key is None:
            return 0
        self.replay_requests += 1
        sent = 0
        if history.is_gap(key):
            self.replay_gaps += 1
            gap = gap_event(history.oldest_id)
            subscriber.send(gap)
            sent += len(gap.wire)
        events = history.after(key, subscriber)
        budget = subscriber.limit // 2
        count = 0
        for event in events:
            subscriber.send(event)
            sent += len(event.wire)
            count += 1
            if subscriber.errors or (subscriber.paused and subscriber.backlog > budget):
                break
        self.deliveries += count
        self.bytes_sent += sent
        cut = count < len(events) and not subscriber.errors
        if cut:
            self.replays_cut += 1
            self._ended.add(subscriber)
            # A transport with a producer does not close when its buffer drains
            # (it resumes the producer instead): let go of it first, and of the
            # pause, which the input flow control counts.
            subscriber.resumeProducing()
            subscriber.transport.unregisterProducer()
            subscriber.end()
        if self.verbosity.debug or (cut and self.verbosity.normal):
            self.log.info(
                "subscriber <{number}>: replayed {count} of {total} events after"
                " {id}{cut}",
                number=subscriber.number,
                count=count,
                total=len(events),
                id=given,
                cut="; stream ended, to go on when it reconnects" if cut else "",
            )
        return count

    def disconnected(self, subscriber) -> None:
        """
        Count a subscriber gone: dropped as a slow reader, its stream ended by
        the server (a replay in parts, a stop), or closed by its peer.
        """
        if subscriber.errors:
            reason = "slow"
        elif self.stopping or subscriber in self._ended:
            reason = "server"
        else:
            reason = "client"
        self._ended.discard(subscriber)
        self.disconnects[reason] += 1
        self.ahead.pop(subscriber, None)
        if self.gate is not None:
            self.gate.forget(subscriber)
