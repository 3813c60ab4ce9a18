"""
Unit tests of the hub's cluster side: a subscriber ahead of its node
(L{sseserver.hub.Hub.ahead}) and the gate told of every join.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport

from sseserver.event import Event
from sseserver.grammar import Target
from sseserver.hub import Hub
from sseserver.registry import Registry, Subscriber
from sseserver.verbosity import Verbosity

TO_A = Target(channels=frozenset({"a"}))


def subscriber(number: int) -> Subscriber:
    return Subscriber(number, ("a",), False, None, StringTransport(), False)


def received(sub: Subscriber) -> bytes:
    return sub.transport.value()


def test_a_subscriber_ahead_gets_nothing_up_to_its_id_then_everything():
    hub = Hub(Registry(), Verbosity(0), history=10)
    moved, other = subscriber(1), subscriber(2)
    hub.join(moved)
    hub.join(other)
    hub.ahead[moved] = (100, 5)
    for event_id in ("100-3", "100-5", "100-6", "101-0"):
        hub.deliver(Event(event_id, TO_A, "message", event_id))
    assert received(moved) == b"id: 100-6\ndata: 100-6\n\nid: 101-0\ndata: 101-0\n\n"
    assert received(other).count(b"id: ") == 4
    assert hub.ahead == {}  # passed: no more filtering
    assert hub.deliveries == 6


def test_a_subscriber_gone_while_ahead_is_forgotten():
    hub = Hub(Registry(), Verbosity(0))
    sub = subscriber(1)
    hub.join(sub)
    hub.ahead[sub] = (100, 5)
    hub.registry.remove(sub)
    hub.disconnected(sub)
    assert hub.ahead == {}


class Gate:
    def __init__(self, replay_now: bool):
        self.replay_now = replay_now
        self.joined_with: list = []
        self.forgotten: list = []

    def joined(self, subscriber, last_ids) -> bool:
        self.joined_with.append((subscriber, last_ids))
        return self.replay_now

    def forget(self, subscriber) -> None:
        self.forgotten.append(subscriber)


def test_the_gate_can_put_a_replay_off():
    hub = Hub(Registry(), Verbosity(0), history=10)
    hub.deliver(Event("100-1", TO_A, "message", "missed"))
    hub.gate = Gate(replay_now=False)
    sub = subscriber(1)
    hub.join(sub, b"100-0")
    assert sub in set(hub.registry) and received(sub) == b""
    assert hub.gate.joined_with == [(sub, (b"100-0",))]
    hub.replay(sub, b"100-0")  # what the gate does once it may
    assert received(sub) == b"id: 100-1\ndata: missed\n\n"
    hub.registry.remove(sub)
    hub.disconnected(sub)
    assert hub.gate.forgotten == [sub]
