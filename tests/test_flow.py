"""Unit tests for the input flow control (L{sseserver.flow})."""

from __future__ import annotations

from sseserver.event import Event
from sseserver.flow import MIN_BACKED_UP, Congestion
from sseserver.grammar import Target
from sseserver.registry import Subscriber


class Input:
    """An input producer that records what it was told."""

    def __init__(self):
        self.calls = []

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        self.calls.append("resume")


class Transport:
    bufferSize = 65536

    def __init__(self):
        self.write = lambda data: None
        self.aborted = 0

    def abortConnection(self):
        self.aborted += 1


def subscribers(flow: Congestion, count: int) -> list:
    subs = [
        Subscriber(n, ("c",), False, None, Transport(), True, flow=flow)
        for n in range(count)
    ]
    for sub in subs:
        flow.registry.add(sub)
    return subs


class Registry(list):
    add = list.append


def test_a_few_slow_subscribers_never_pause_the_inputs():
    flow = Congestion(Registry())
    source = Input()
    flow.add_input(source)
    subs = subscribers(flow, 1000)
    for sub in subs[: flow.limit()]:
        sub.pauseProducing()
    assert flow.limit() == 1000 // 16
    assert (flow.backed_up, flow.throttled, source.calls) == (62, False, [])


def test_a_flood_pauses_the_inputs_until_half_have_drained():
    flow = Congestion(Registry())
    source = Input()
    flow.add_input(source)
    subs = subscribers(flow, 160)  # limit: 10
    for sub in subs[:11]:
        sub.pauseProducing()
    assert (flow.throttled, source.calls) == (True, ["pause"])
    late = Input()
    flow.add_input(late)
    assert late.calls == ["pause"]
    for sub in subs[:5]:
        sub.resumeProducing()
    assert source.calls == ["pause"]
    subs[5].resumeProducing()
    assert (flow.backed_up, flow.throttled) == (5, False)
    assert source.calls == late.calls == ["pause", "resume"]


def test_dropped_and_lost_subscribers_leave_the_count():
    flow = Congestion(Registry())
    subs = subscribers(flow, 10)
    for sub in subs[:3]:
        sub.pauseProducing()
        sub.pauseProducing()  # the transport may say it twice
    assert flow.backed_up == 3
    subs[0].drop()
    subs[1].stopProducing()
    subs[2].resumeProducing()
    subs[2].resumeProducing()
    assert flow.backed_up == 0
    assert subs[0].transport.aborted == 1


def test_minimum_limit_for_small_servers():
    flow = Congestion(Registry())
    subscribers(flow, 3)
    assert flow.limit() == MIN_BACKED_UP


def test_send_while_backed_up_counts_toward_the_drop():
    flow = Congestion(Registry())
    (sub,) = subscribers(flow, 1)
    sub.limit = 100
    sub.pauseProducing()
    sub.send(Event("1-0", Target(), "message", "x" * 200))
    assert sub.transport.aborted == 1
    assert flow.backed_up == 0


def test_another_backlog_holds_the_inputs_until_it_releases():
    flow = Congestion(Registry())
    source = Input()
    flow.add_input(source)
    flow.hold("redis has not answered")
    assert flow.throttled and source.calls == ["pause"]
    flow.release("redis caught up")
    assert not flow.throttled and source.calls == ["pause", "resume"]


def test_a_hold_and_backed_up_subscribers_both_must_end():
    flow = Congestion(Registry())
    source = Input()
    flow.add_input(source)
    subs = subscribers(flow, 10)
    for _ in range(MIN_BACKED_UP + 1):
        flow.subscriber_paused()
    flow.hold("redis has not answered")
    assert source.calls == ["pause"]
    for _ in range(MIN_BACKED_UP + 1):
        flow.subscriber_resumed()
    assert flow.throttled and source.calls == ["pause"]  # still held
    flow.release("redis caught up")
    assert not flow.throttled and source.calls == ["pause", "resume"]
    assert len(subs) == 10


def test_a_reader_waits_for_the_subscribers_only():
    flow = Congestion(Registry())
    source, reader = Input(), Input()
    flow.add_input(source)
    flow.add_reader(reader)
    flow.hold("redis has not answered")  # reading the stream settles that
    assert source.calls == ["pause"] and reader.calls == []
    subscribers(flow, 10)
    for _ in range(MIN_BACKED_UP + 1):
        flow.subscriber_paused()
    assert reader.calls == ["pause"]
    for _ in range(MIN_BACKED_UP + 1):
        flow.subscriber_resumed()
    assert reader.calls == ["pause", "resume"]
    assert source.calls == ["pause"]  # still held
