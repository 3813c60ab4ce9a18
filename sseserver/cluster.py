"""
Many sseserver processes as one server, through one Redis stream (SPEC §11).

Every event a node accepts is appended to the stream (C{XADD}, approximate
C{MAXLEN} of --history); Redis gives it its id.  Every node reads the stream
(C{XREAD BLOCK}) and delivers what it reads to its own subscribers, its own
events included, so that all nodes deliver alike, in one order.  Each node keeps
the tail of the stream as its history, loaded from the stream when it starts, so
C{Last-Event-ID} replay works on any node and across restarts.

While Redis is unreachable a node keeps its subscribers, refuses publishes with
"redis unavailable" (never drops one silently), logs the outage once, reconnects
with backoff and resumes reading after the last id it delivered.  Each node
also keeps its figures in Redis, with a short expiry, for the cluster totals of
C{tcpstatus} and C{/status}.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections import deque
from typing import Callable, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sseserver.clusterwire import (
    NODE_KEY_PREFIX,
    NODES_KEY,
    STREAM_KEY,
    cluster_totals,
    entry_fields,
    node_figures,
    parse_entry,
)
from sseserver.event import Event
from sseserver.grammar import ProtocolError
from sseserver.history import BEGINNING, History, parse_id
from sseserver.hub import Hub
from sseserver.pump import DELIVERIES_PER_TURN
from sseserver.redislink import COMMAND_TIMEOUT, RedisLink
from sseserver.resp import RedisAddress, RedisError

#: Entries asked for by one XREAD, and how long it blocks (ms).
READ_COUNT = 100
BLOCK_MS = 1000
#: Stream length kept with --history 0: the tail a node resumes from after an
#: outage still has to be there.
MIN_STREAM = 1000
#: Publishes waiting for Redis (its answer, or a json/POST read-back) before
#: the inputs wait.
MAX_IN_FLIGHT = 2000
#: This node's events in the stream and not read back yet, as a share of the
#: stream's length, before the inputs wait: a burst must not outrun the node's
#: own reading, or MAXLEN would trim events before it delivers them.
UNREAD_SHARE = 2
#: Seconds between two reports of this node's figures; they expire after three.
FIGURES_INTERVAL = 1.0
#: A last id this far (ms) past the clock is no node's (see Cluster.joined).
AHEAD_LIMIT_MS = 60_000


class Unavailable(ProtocolError):
    """A publish refused because Redis cannot take it (HTTP 503)."""

    status = 503

    def __init__(self, reason: str = "redis unavailable"):
        super().__init__(reason)


class Cluster(Service):
    """The Redis side of a node: appending, reading back, figures, the gate."""

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        hub: Hub,
        reactor,
        flow,
        history: int,
        figures: Callable[[], tuple],
        node: Optional[str] = None,
    ):
        self.address = address
        self.hub = hub
        self.reactor = reactor
        self.flow = flow
        self.maxlen = max(history, MIN_STREAM)
        self.history_size = history
        #: () -> (sseconncli, allconncli, {channel: subscribers}) of this node.
        self.figures = figures
        self.node = (
            node or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self.writer = RedisLink(address, reactor, self._writer_up, self._writer_down)
        # XREAD blocks for BLOCK_MS: allow for it before calling the link stuck.
        self.reader = RedisLink(
            address,
            reactor,
            self._reader_up,
            self._reader_down,
            timeout=COMMAND_TIMEOUT + BLOCK_MS / 1000,
        )
        #: Id of the last entry read (and delivered); None before the first read.
        self.last_id: Optional[str] = None
        self.last_key = BEGINNING
        #: The tail of the stream is loaded and reading has begun.
        self.ready = False
        self.in_flight = 0
        self.refused = 0
        self.refused_total = 0
        #: Figures of the other nodes, summed: refreshed every FIGURES_INTERVAL.
        self.others = cluster_totals([])
        self._holding_inputs = False
        self._queue: deque = deque()  # (id, fields) read and not yet delivered
        self._reading = False
        self._delivering = None
        self._paused = False
        self._recheck = False  # look at the stream before reading on
        self._restarted = False  # reading a new stream from its start
        self._delivered: dict = {}  # own event id -> deliveries here, the last few
        self._waiters: deque = deque()  # (key of the last id, ids, Deferred)
        self._unread_own: deque = deque()  # keys of own events not read back yet
        self._early: dict = {}  # subscriber -> last ids, joined before ready
        self._down_since: Optional[float] = None
        self._figures_loop = LoopingCall(self._report_figures)
        self._figures_loop.clock = reactor

    # the service

    def startService(self) -> None:
        super().startService()
        self.hub.gate = self
        self.flow.add_reader(self)
        self.writer.start()
        self.reader.start()
        self._figures_loop.start(FIGURES_INTERVAL, now=False)

    def stopService(self):
        super().stopService()
        if self._figures_loop.running:
            self._figures_loop.stop()
        self.flow.remove_reader(self)
        goodbye = defer.succeed(None)
        protocol = self.writer.protocol
        if protocol is not None:
            # This node's figures leave the totals now, not when they expire.
            goodbye = defer.gatherResults(
                [
                    protocol.execute("DEL", NODE_KEY_PREFIX + self.node),
                    protocol.execute("SREM", NODES_KEY, self.node),
                ],
                consumeErrors=True,
            )
            goodbye.addTimeout(1.0, self.reactor)
            goodbye.addErrback(lambda failure: None)
        goodbye.addCallback(
            lambda _: defer.gatherResults([self.writer.stop(), self.reader.stop()])
        )
        return goodbye

    # publishing

    @property
    def available(self) -> bool:
        return self.writer.protocol is not None

    def publish(self, messages: list, source: str, deliveries: bool = False):
        """
        Append C{messages} to the stream, all or none (one C{MULTI} when there
        are several).  Returns a Deferred of C{(ids, deliveries)}: with
        C{deliveries}, it waits until this node has read the events back and
        counts what it delivered of them, else that count is C{None}.  Raises
        L{Unavailable} at once while Redis is known to be down; the Deferred
        fails with it when Redis goes away before answering.
        """
        protocol = self.writer.protocol
        if protocol is None:
            self._refused(len(messages))
            raise Unavailable()
        appends = [self._xadd(message) for message in messages]
        if len(appends) == 1:
            done = protocol.execute(*appends[0])
            done.addCallback(lambda entry_id: [entry_id])
        else:
            queued = [protocol.execute("MULTI")]
            queued += [protocol.execute(*append) for append in appends]
            for reply in queued:
                reply.addErrback(lambda failure: None)  # EXEC tells the outcome
            done = protocol.execute("EXEC")
        self._sent(len(messages))
        done.addBoth(self._answered, len(messages))
        done.addCallback(self._accepted, source, deliveries)
        done.addErrback(self._not_accepted, len(messages))
        return done

    def _xadd(self, message) -> list:
        return [
            "XADD",
            STREAM_KEY,
            "MAXLEN",
            "~",
            self.maxlen,
            "*",
        ] + entry_fields(message, self.node)

    def _sent(self, count: int) -> None:
        self.in_flight += count
        self._check_backlog()

    def _answered(self, result, count: int):
        self.in_flight -= count
        if isinstance(result, Failure):
            self._check_backlog()  # else _accepted counts them as unread first
        return result

    def _check_backlog(self) -> None:
        """
        Hold the inputs while too many publishes wait: for Redis's answer, or
        (json, POST) for the read-back.  Memory stays bounded; the stream's
        reading goes on (it is what settles the read-backs).
        """
        unread = self._unread_own
        while unread and unread[0] <= self.last_key:
            unread.popleft()
        backlog = self.in_flight + len(self._waiters)
        limit = self.maxlen // UNREAD_SHARE
        if not self._holding_inputs and (
            backlog > MAX_IN_FLIGHT or len(unread) + self.in_flight > limit
        ):
            self._holding_inputs = True
            self.flow.hold(f"{backlog + len(unread)} publishes wait for redis")
        elif (
            self._holding_inputs
            and backlog <= MAX_IN_FLIGHT // 2
            and len(unread) + self.in_flight <= limit // 2
        ):
            self._holding_inputs = False
            self.flow.release("redis caught up")

    def _accepted(self, replies, source: str, deliveries: bool):
        if replies is None:  # EXEC of an aborted transaction
            raise Unavailable()
        ids = [entry_id.decode("ascii") for entry_id in replies]
        self.hub.count_accepted(source, len(ids))
        self._unread_own.extend(parse_id(entry_id) for entry_id in ids)
        self._check_backlog()
        if not deliveries:
            return ids, None
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append((parse_id(ids[-1]), ids, waiter))
        self._settle_waiters()
        self._check_backlog()
        return waiter

    def _not_accepted(self, failure, count: int):
        self._refused(count)
        self._check_backlog()
        if failure.check(RedisError):
            raise Unavailable(f"redis refused the event: {failure.getErrorMessage()}")
        if failure.check(Unavailable):
            return failure
        raise Unavailable()

    def _refused(self, count: int) -> None:
        self.refused += count  # in this outage, for the log
        self.refused_total += count

    def _settle_waiters(self, everyone: bool = False) -> None:
        """Answer the JSON publishes whose events this node has read back."""
        while self._waiters and (everyone or self._waiters[0][0] <= self.last_key):
            _, ids, waiter = self._waiters.popleft()
            missing = [entry_id for entry_id in ids if entry_id not in self._delivered]
            if missing:
                self.log.warn(
                    "cluster: events {ids} were accepted but never read back (lost"
                    " by a Redis restarted without persistence?)",
                    ids=" ".join(missing),
                )
            counts = [self._delivered.get(entry_id, 0) for entry_id in ids]
            waiter.callback((ids, sum(counts)))
        self._check_backlog()

    def _remember_delivered(self, entry_id: str, count: int) -> None:
        """
        The deliveries of this node's own events, for the replies that count them
        (the read-back may come before Redis's answer to the XADD): the last few.
        """
        delivered = self._delivered
        delivered[entry_id] = count
        if len(delivered) > 2 * MAX_IN_FLIGHT:
            del delivered[next(iter(delivered))]

    # the links

    def _writer_up(self, protocol) -> None:
        if self._down_since is not None:
            self.log.info(
                "redis at {address} is back after {seconds:.1f} s;"
                " {refused} events were refused meanwhile",
                address=self.address.display(),
                seconds=self.reactor.seconds() - self._down_since,
                refused=self.refused,
            )
            self._down_since = None
        else:
            self.log.info(
                "cluster node {node} connected to redis at {address}",
                node=self.node,
                address=self.address.display(),
            )
        self._report_figures()

    def _writer_down(self, reason) -> None:
        self._down_since = self.reactor.seconds()
        self.refused = 0
        self.log.error(
            "redis at {address} unavailable ({reason}): publishes are refused until"
            " it is back; subscribers stay connected",
            address=self.address.display(),
            reason=reason.getErrorMessage(),
        )

    def _reader_up(self, protocol) -> None:
        if self.last_id is None:
            self._load_tail(protocol)
        else:
            self._recheck = True
            self._read()

    def _reader_down(self, reason) -> None:
        self._reading = False

    # reading the stream

    def _load_tail(self, protocol) -> None:
        """The newest --history entries become the history; reading starts after."""
        count = max(self.history_size, 1)
        loaded = protocol.execute("XREVRANGE", STREAM_KEY, "+", "-", "COUNT", count)
        loaded.addCallbacks(self._tail_loaded, self._tail_failed)

    def _tail_loaded(self, entries) -> None:
        entries = list(reversed(entries or []))
        history = self.hub.history
        if history is not None:
            if len(entries) >= history.size and entries:
                # The stream may hold older entries: ids below ours may be gaps.
                history.horizon = parse_id(entries[0][0])
            for entry_id, fields in entries:
                try:
                    message, _ = parse_entry(fields)
                except ValueError:
                    continue
                history.append(
                    Event(
                        entry_id.decode("ascii"),
                        message.target,
                        message.type,
                        message.data,
                    )
                )
        self._advance(entries[-1][0].decode("ascii") if entries else "0-0")
        self.ready = True
        self.log.info(
            "cluster: {count} events loaded from the stream; reading after {id}",
            count=len(entries),
            id=self.last_id,
        )
        self._replay_early()
        self._read()

    def _tail_failed(self, failure) -> None:
        if failure.check(RedisError):  # not a lost connection: that one retries
            self.log.error(
                "cluster: cannot read the stream {key}: {error}",
                key=STREAM_KEY,
                error=failure.getErrorMessage(),
            )

    def _check_stream(self, protocol) -> defer.Deferred:
        """
        After an outage or a pause, before reading on: is the stream still the one
        this node was reading (L{_restart_stream}), and may its MAXLEN have
        dropped entries the node had not read (L{_trimmed})?
        """
        info = protocol.execute("XINFO", "STREAM", STREAM_KEY)
        return info.addCallbacks(self._stream_info, self._no_stream)

    def _stream_info(self, reply) -> None:
        fields = dict(zip(reply[::2], reply[1::2]))
        newest = fields.get(b"last-generated-id")
        if isinstance(newest, bytes) and parse_id(newest) < self.last_key:
            self._restart_stream(
                f"its newest id {newest.decode('ascii')} is older than this node's"
                f" last id {self.last_id}"
            )
        else:
            self._trimmed(fields)

    def _no_stream(self, failure) -> None:
        if failure.check(RedisError) and "no such key" in failure.getErrorMessage():
            if self.last_key > (0, 0):
                self._restart_stream("it is gone")

    def _restart_stream(self, why: str) -> None:
        """
        Redis lost the stream (restarted without its data, perhaps on a clock
        behind): its new entries may have ids below this node's last id, which
        XREAD would skip for ever.  Read the new stream from its start; what was
        waiting for the old one is answered now.
        """
        self.log.error(
            "cluster: the stream is not the one this node was reading ({why}):"
            " Redis lost it; reading the new one from its start",
            why=why,
        )
        self._advance("0-0")
        self._restarted = True
        self.hub.ahead.clear()
        self._unread_own.clear()
        self._settle_waiters(everyone=True)

    def _renew_history(self, first: tuple) -> None:
        """
        The first event of a new stream: the history keeps what it holds (it can
        still be replayed) unless the new ids are not newer, which it cannot
        order: then it starts over.
        """
        history = self.hub.history
        if history is not None and history.newest_key is not None:
            if first <= history.newest_key:
                self.hub.history = History(history.size)

    def _trimmed(self, fields: dict) -> None:
        """
        May the stream's MAXLEN have dropped entries this node had not read?  It
        may when the oldest entry left is newer than the node's last id and the
        stream has lost entries (Redis 7 counts those added; the length is what
        is left).  Its subscribers missed them: say so.
        """
        added, length = fields.get(b"entries-added"), fields.get(b"length")
        first = fields.get(b"first-entry")
        if not (isinstance(added, int) and isinstance(length, int) and first):
            return  # before Redis 7, or an empty stream
        oldest = parse_id(first[0])
        if added > length and oldest is not None and oldest > self.last_key:
            self.log.error(
                "cluster: the oldest entry left in the stream ({oldest}) is newer than"
                " this node's last id ({id}) and {gone} entries were trimmed: its"
                " subscribers may have missed some; a larger --history keeps a"
                " longer stream",
                oldest=first[0].decode("ascii"),
                id=self.last_id,
                gone=added - length,
            )

    def _advance(self, entry_id: str) -> None:
        self.last_id = entry_id
        self.last_key = parse_id(entry_id)

    def _read(self) -> None:
        protocol = self.reader.protocol
        if (
            protocol is None
            or self._reading
            or self._paused
            or self._queue
            or self.last_id is None
        ):
            return
        self._reading = True
        if self._recheck:  # after an outage or a pause: look first
            self._recheck = False
            checked = self._check_stream(protocol)
            checked.addCallback(lambda _: self._xread(protocol))
            return
        self._xread(protocol)

    def _xread(self, protocol) -> None:
        reading = protocol.execute(
            "XREAD",
            "COUNT",
            READ_COUNT,
            "BLOCK",
            BLOCK_MS,
            "STREAMS",
            STREAM_KEY,
            self.last_id,
        )
        reading.addCallbacks(self._got, self._read_failed)

    def _got(self, reply) -> None:
        self._reading = False
        if reply:
            for _, entries in reply:
                self._queue.extend(entries)
        self._deliver()

    def _read_failed(self, failure) -> None:
        self._reading = False  # the link reconnects and reading resumes then
        if failure.check(RedisError):
            self.log.error(
                "cluster: XREAD failed: {error}", error=failure.getErrorMessage()
            )
            self.reactor.callLater(1.0, self._read)

    def _deliver(self) -> None:
        """Deliver what was read, a bounded amount per reactor turn."""
        self._delivering = None
        hub = self.hub
        budget = hub.deliveries + DELIVERIES_PER_TURN
        queue = self._queue
        while queue:
            if self._paused:
                return  # resumeProducing goes on
            if hub.deliveries >= budget:
                self._delivering = self.reactor.callLater(0, self._deliver)
                return
            raw_id, fields = queue.popleft()
            entry_id = raw_id.decode("ascii")
            try:
                message, node = parse_entry(fields)
            except ValueError as error:
                self.log.warn(
                    "cluster: entry {id} skipped: {error}",
                    id=entry_id,
                    error=str(error),
                )
            else:
                event = Event(entry_id, message.target, message.type, message.data)
                if self._restarted:
                    self._restarted = False
                    self._renew_history(parse_id(entry_id))
                delivered = hub.deliver(event)
                if node == self.node:
                    self._remember_delivered(entry_id, delivered)
                else:
                    hub.accepted_by_input["redis"] += 1
            self._advance(entry_id)
        self._settle_waiters()
        self._read()

    # as a reader of the flow control: reading stops while subscribers back up

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._recheck = True  # the stream may have been trimmed meanwhile
        if self._queue and self._delivering is None:
            self._delivering = self.reactor.callLater(0, self._deliver)
        else:
            self._read()

    def stopProducing(self) -> None:
        pass

    # the gate of Hub.join

    def joined(self, subscriber, last_ids) -> bool:
        """
        A subscriber joined: whether its replay can run now.  Before the
        stream's tail is loaded it runs when the tail is (nothing is delivered
        before that, so nothing is missed in between).  A last id this node has
        not read yet (it comes from a node that is ahead) becomes the
        subscriber's floor in L{Hub.ahead}: it gets nothing twice.  An id more
        than AHEAD_LIMIT_MS in the future is no node's: it is not a floor.
        """
        if not self.ready:
            self._early[subscriber] = last_ids
            return False
        given = next((i for i in last_ids if i), None)
        key = parse_id(given)
        if (
            key is not None
            and key > self.last_key
            and key[0] <= self.reactor.seconds() * 1000 + AHEAD_LIMIT_MS
        ):
            self.hub.ahead[subscriber] = key
        return True

    def forget(self, subscriber) -> None:
        self._early.pop(subscriber, None)

    def _replay_early(self) -> None:
        """The replays put off until the stream's tail was loaded."""
        early, self._early = self._early, {}
        for subscriber, last_ids in early.items():
            if self.joined(subscriber, last_ids):
                self.hub.replay(subscriber, *last_ids)

    # the cluster's figures

    def _report_figures(self) -> None:
        protocol = self.writer.protocol
        if protocol is None:
            return
        sse, connections, channels = self.figures()
        key = NODE_KEY_PREFIX + self.node
        ttl = int(FIGURES_INTERVAL * 3000)
        figures = node_figures(sse, connections, channels)
        written = [
            protocol.execute("SET", key, figures, "PX", ttl),
            protocol.execute("SADD", NODES_KEY, self.node),
        ]
        members = protocol.execute("SMEMBERS", NODES_KEY)
        members.addCallback(self._read_figures, protocol)
        for reply in [*written, members]:
            reply.addErrback(lambda failure: None)  # an outage is logged once

    @defer.inlineCallbacks
    def _read_figures(self, members, protocol):
        others = [m.decode("utf-8") for m in members if m.decode("utf-8") != self.node]
        values = []
        if others:
            values = yield protocol.execute(
                "MGET", *[NODE_KEY_PREFIX + node for node in others]
            )
            gone = [node for node, value in zip(others, values) if value is None]
            if gone:
                protocol.execute("SREM", NODES_KEY, *gone)
        self.others = cluster_totals(values)

    def totals(self) -> dict:
        """This node's figures now plus the others' last reported."""
        sse, connections, _ = self.figures()
        return {
            "nodes": self.others["nodes"] + 1,
            "sseconncli": self.others["sseconncli"] + sse,
            "allconncli": self.others["allconncli"] + connections,
        }

    def channel_total(self, channel: str, here: int) -> int:
        return self.others["channels"].get(channel, 0) + here
