"""
The subscription registry shared by every input: subscribers by channel,
all-channel subscribers, client ids, and the counts the commands report.
"""

from __future__ import annotations

import time
from itertools import chain
from typing import Callable, Iterable, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from sseserver.event import FINAL_CHUNK, HEARTBEAT, HEARTBEAT_CHUNK, Event
from sseserver.fastwrite import DirectWriter, Lane
from sseserver.flow import NO_CONGESTION
from sseserver.grammar import Target

#: Default for --max-client-buffer: unsent bytes allowed per subscriber.
MAX_CLIENT_BUFFER = 1048576

log = Logger(namespace="sseserver.registry")


@implementer(IPushProducer)
class Subscriber(DirectWriter):
    """
    One open SSE response, kept small: its channels, client id and stats, and its
    transport.  Frames go straight to the transport, already chunked when the
    response is (the encoding is shared by all subscribers; see
    L{sseserver.event.Event.chunk}), instead of through C{Request.write}, which
    would re-frame every event for every subscriber; and straight to the socket
    when Twisted holds nothing unsent for it (L{DirectWriter}).  A chunked
    subscriber of one channel over plain TCP has that channel's L{Lane}: while
    it writes directly, the channel's events reach it through the lane, which
    counts them for it.

    It is also the response's push producer: the transport pauses it when its
    buffer is full (the peer reads slower than events arrive).  Events keep being
    buffered while paused, up to C{limit} more bytes; past that the subscriber is
    dropped, so that memory stays bounded and nobody else waits for it.
    """

    # A delivery outside a lane reads the first three (after DirectWriter's):
    # next to each other they share a cache line.
    __slots__ = (
        "chunked",
        "counted",
        "written",
        "paused",
        "lane_start",
        "number",
        "channels",
        "all_channels",
        "client_id",
        "peer",
        "agent",
        "ssl",
        "connected_at",
        "handshaked_at",
        "errors",
        "backlog",
        "limit",
        "flow",
    )

    def __init__(
        self,
        number: int,
        channels: tuple,
        all_channels: bool,
        client_id: Optional[str],
        transport,
        chunked: bool,
        peer: str = "",
        agent: str = "",
        ssl: bool = False,
        connected_at: float = 0.0,
        handshaked_at: float = 0.0,
        max_buffer: int = MAX_CLIENT_BUFFER,
        flow=NO_CONGESTION,
    ):
        DirectWriter.__init__(self, transport)
        self.number = number
        self.channels = channels
        self.all_channels = all_channels
        self.client_id = client_id
        self.chunked = chunked
        self.peer = peer
        self.agent = agent
        self.ssl = ssl
        self.connected_at = connected_at
        self.handshaked_at = handshaked_at
        self.counted = 0  # events sent, but those a lane sent
        self.lane_start = 0
        self.errors = 0
        self.written = True  # the stream's opening line was just written
        self.paused = False
        self.backlog = 0
        self.flow = flow
        # The transport pauses us once it holds 64 KiB; count what comes on top.
        self.limit = max(0, max_buffer - getattr(transport, "bufferSize", 0))

    def send(self, event: Event) -> None:
        self.counted += 1
        self.written = True
        self.write(event.chunk if self.chunked else event.wire)

    @property
    def messages(self) -> int:
        """Events sent to this subscriber, through its lane or not."""
        if self.lane is not None and self.direct:
            return self.counted + self.lane.sent - self.lane_start
        return self.counted

    def lane_entered(self, sent: int) -> None:
        self.lane_start = sent

    def lane_left(self, sent: int) -> None:
        self.counted += sent - self.lane_start

    def queue(self, frame: bytes) -> None:
        """Through Twisted's buffer; while paused, counted against the limit."""
        self.transport.write(frame)
        if self.paused:
            self._held(len(frame))

    def heartbeat(self) -> None:
        """
        Send a comment unless something was written since the last call (its
        lane's L{Lane.written} is reset by the registry once all had theirs).
        """
        lane_wrote = self.lane is not None and self.direct and self.lane.written
        if not (self.written or lane_wrote):
            self.write(HEARTBEAT_CHUNK if self.chunked else HEARTBEAT)
        self.written = False

    def finish(self) -> None:
        """
        Write the final chunk (HTTP/1.1) and nothing after it.  No longer the
        transport's producer: a paused producer would keep a closing transport
        waiting for it instead of closing once the buffer is sent.
        """
        self._set_paused(False)
        self.transport.unregisterProducer()
        if self.chunked:
            self.write(FINAL_CHUNK)
        self.stop_writing()

    def end(self) -> None:
        """End the stream cleanly: the final chunk, then close."""
        self.finish()
        self.transport.loseConnection()

    def _held(self, size: int) -> None:
        self.backlog += size
        if self.backlog > self.limit:
            self.drop()

    def drop(self) -> None:
        """Too slow: stop writing, free the buffer, close the connection."""
        self.stop_writing()
        self._set_paused(False)  # nothing more is held for it
        self.errors += 1
        log.warn(
            "subscriber <{number}> {peer} dropped: more unsent data than"
            " --max-client-buffer allows",
            number=self.number,
            peer=self.peer,
        )
        self.transport.abortConnection()

    # IPushProducer, driven by the transport through the HTTP channel

    def pauseProducing(self) -> None:
        self._set_paused(True)

    def resumeProducing(self) -> None:
        """Twisted has room again, or has sent all it held (see L{promote})."""
        self._set_paused(False)
        self.promote()

    def stopProducing(self) -> None:
        self.stop_writing()
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        """Track the transport's state, and tell the input flow control."""
        if paused == self.paused:
            return
        self.paused = paused
        self.backlog = 0
        if paused:
            self.flow.subscriber_paused()
        else:
            self.flow.subscriber_resumed()


class Registry:
    """
    Who is subscribed to what.  L{match} returns each subscriber at most once and
    touches only the subscribers it returns (plus, for C{prefix*} targets, the
    channel names); L{routes} returns the same as lanes and the others.
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.started_at = clock()
        self._by_channel: dict[str, set[Subscriber]] = {}
        self._lanes: dict[str, Lane] = {}
        self._all_channels: set[Subscriber] = set()
        self._everyone: set[Subscriber] = set()
        #: Open connections on the SSE port(s), subscribers or not (C{allconncli}).
        self.connections = 0
        #: Highest number of subscribers seen (C{maxconncli}).
        self.max_subscribers = 0
        #: Subscribers ever accepted ("Total client handshaked").
        self.handshaked = 0
        self._next_number = 0

    def next_number(self) -> int:
        """An internal connection number, as hasses shows in C{clientlist}."""
        self._next_number += 1
        return self._next_number

    def __len__(self) -> int:
        return len(self._everyone)

    def __iter__(self):
        return iter(sorted(self._everyone, key=lambda s: s.number))

    def add(self, subscriber: Subscriber) -> None:
        self._everyone.add(subscriber)
        if subscriber.all_channels:
            self._all_channels.add(subscriber)
        for channel in subscriber.channels:
            self._by_channel.setdefault(channel, set()).add(subscriber)
        if len(subscriber.channels) == 1 and subscriber.chunked:
            (channel,) = subscriber.channels
            lane = self._lanes.get(channel)
            if lane is None:
                lane = self._lanes[channel] = Lane()
            subscriber.join_lane(lane)
        self.handshaked += 1
        self.max_subscribers = max(self.max_subscribers, len(self._everyone))

    def remove(self, subscriber: Subscriber) -> bool:
        """Forget a subscriber; C{False} if it was already gone."""
        if subscriber not in self._everyone:
            return False
        self._everyone.discard(subscriber)
        self._all_channels.discard(subscriber)
        subscriber.leave_lane()
        for channel in subscriber.channels:
            members = self._by_channel.get(channel)
            if members is not None:
                members.discard(subscriber)
                if not members:
                    del self._by_channel[channel]
                    self._lanes.pop(channel, None)
        return True

    def count_channel(self, channel: str) -> int:
        """Subscribers holding exactly this channel (all-channel ones not counted)."""
        return len(self._by_channel.get(channel, ()))

    def channel_counts(self) -> dict:
        """Subscribers per channel (for the cluster's totals)."""
        return {channel: len(members) for channel, members in self._by_channel.items()}

    def subscription_counts(self) -> dict:
        """For the metrics: subscriber x channel pairs, all-channel subscribers,
        and channels held by anyone."""
        return {
            "channel": sum(len(members) for members in self._by_channel.values()),
            "all": len(self._all_channels),
            "channels": len(self._by_channel),
        }

    def match(self, target: Target) -> list:
        """The subscribers an event to C{target} reaches, each once (SPEC §4)."""
        if target.everyone:
            reached: Iterable[Subscriber] = self._everyone
        elif len(target.channels) == 1 and not target.prefixes:
            # All-channel subscribers hold no channel, so the two sets are disjoint.
            (channel,) = target.channels
            reached = chain(self._by_channel.get(channel, ()), self._all_channels)
        else:
            found: set[Subscriber] = set()
            for channel in self._channels_named(target):
                found.update(self._by_channel.get(channel, ()))
            reached = chain(found, self._all_channels)
        if target.exclude is not None:
            return [s for s in reached if s.client_id != target.exclude]
        return list(reached)

    def routes(self, target: Target) -> tuple[list, list]:
        """
        What L{match} returns for a target without an exclusion, split in two:
        the lanes (L{sseserver.fastwrite.Lane}) of the channels it names, and
        the other subscribers it reaches, each once.  Only C-level set
        operations see the lanes' members.
        """
        if target.everyone:
            lanes = [lane for lane in self._lanes.values() if lane.members]
            if not lanes:
                return [], list(self._everyone)
            if sum(map(len, lanes)) == len(self._everyone):
                return lanes, []
            others = self._everyone.difference(*(lane.members for lane in lanes))
            return lanes, list(others)
        lanes = []
        found: set[Subscriber] = set()
        for channel in self._channels_named(target):
            members = self._by_channel.get(channel)
            if not members:
                continue
            lane = self._lanes.get(channel)
            if lane is None or not lane.members:
                found.update(members)
                continue
            lanes.append(lane)
            if len(lane.members) < len(members):
                found.update(members.difference(lane.members))
        return lanes, list(chain(found, self._all_channels))

    def _channels_named(self, target: Target) -> Iterable[str]:
        if not target.prefixes:
            return set(target.channels)
        channels = set(target.channels)
        for prefix in target.prefixes:
            channels.update(c for c in self._by_channel if c.startswith(prefix))
        return channels

    def heartbeat(self) -> None:
        for subscriber in list(self._everyone):
            subscriber.heartbeat()
        for lane in self._lanes.values():
            lane.written = False
