"""
Unit tests for L{sseserver.registry}: matching targets to subscribers (SPEC §4,
§2.4 "at most once"), removal, counts (SPEC §6) and heartbeats (SPEC §2.5).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sseserver.event import Event
from sseserver.grammar import HASSES, Target, parse_target
from sseserver.registry import Registry, Subscriber


class FakeTransport:
    """Collects writes; records aborts."""

    bufferSize = 65536

    def __init__(self, out: list):
        self.write = out.append
        self.aborted = 0

    def abortConnection(self) -> None:
        self.aborted += 1


class Harness:
    """A registry whose subscribers write into lists, by name."""

    def __init__(self):
        self.registry = Registry(clock=lambda: 1000.0)
        self.subs: dict[str, Subscriber] = {}
        self.out: dict[str, list] = {}

    def add(
        self,
        name: str,
        channels=(),
        all_channels=False,
        client_id=None,
        chunked=False,
    ) -> Subscriber:
        out: list = []
        sub = Subscriber(
            self.registry.next_number(),
            tuple(channels),
            all_channels,
            client_id,
            FakeTransport(out),
            chunked,
            peer="127.0.0.1:1",
        )
        self.subs[name] = sub
        self.out[name] = out
        self.registry.add(sub)
        return sub

    def match(self, target: Target) -> list:
        """Names of the matched subscribers, sorted; each at most once."""
        matched = self.registry.match(target)
        assert len(matched) == len(set(map(id, matched))), matched
        names = {id(s): n for n, s in self.subs.items()}
        return sorted(names[id(s)] for s in matched)

    def match_text(self, text: str, dialect: str = HASSES) -> list:
        return self.match(parse_target(text, dialect))


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.add("room1", ["room1"])
    harness.add("room2", ["room2"])
    harness.add("both", ["room1", "room2"], client_id="u17")
    harness.add("color", ["color"], client_id="u18")
    harness.add("room", ["room"])
    harness.add("Room1", ["Room1"])
    harness.add("all", all_channels=True)
    harness.add("all17", all_channels=True, client_id="u17")
    harness.add("none", [], client_id="u19")  # ?subscribe= : broadcasts only
    return harness


class TestMatch:
    def test_single_channel(self, h):
        assert h.match_text("room1") == ["all", "all17", "both", "room1"]
        assert h.match_text("color") == ["all", "all17", "color"]

    def test_case_sensitive_and_exact(self, h):
        assert h.match_text("Room1") == ["Room1", "all", "all17"]
        assert h.match_text("room12") == ["all", "all17"]
        assert h.match_text("roo") == ["all", "all17"]

    def test_unknown_channel_reaches_all_channel_subscribers(self, h):
        assert h.match_text("nobody") == ["all", "all17"]

    def test_two_channels_subscriber_once(self, h):
        target = Target(channels=frozenset({"room1", "room2"}))
        assert h.match(target) == ["all", "all17", "both", "room1", "room2"]

    def test_prefix(self, h):
        assert h.match_text("room*") == [
            "all",
            "all17",
            "both",
            "room",
            "room1",
            "room2",
        ]
        assert h.match_text("room1*") == ["all", "all17", "both", "room1"]
        assert h.match_text("c*") == ["all", "all17", "color"]
        assert h.match_text("x*") == ["all", "all17"]
        assert h.match_text("R*") == ["Room1", "all", "all17"]

    def test_prefix_and_channel_together(self, h):
        target = Target(channels=frozenset({"room1", "color"}), prefixes=("room",))
        assert h.match(target) == [
            "all",
            "all17",
            "both",
            "color",
            "room",
            "room1",
            "room2",
        ]

    def test_everyone(self, h):
        assert h.match_text("*") == sorted(h.subs)

    def test_empty_target_all_channel_only(self, h):
        assert h.match_text("", "sse-server") == ["all", "all17"]
        assert h.match(Target()) == ["all", "all17"]

    def test_no_channel_subscriber_only_gets_broadcasts(self, h):
        for target in ("room1", "room*", "", "nobody"):
            assert "none" not in h.match_text(target), target
        assert "none" in h.match_text("*")

    def test_exclusion_channel(self, h):
        assert h.match_text("room1-u17") == ["all", "room1"]
        assert h.match_text("room1-u99") == ["all", "all17", "both", "room1"]

    def test_exclusion_everyone(self, h):
        assert h.match_text("*-u17") == sorted(set(h.subs) - {"both", "all17"})
        assert h.match_text("*-u19") == sorted(set(h.subs) - {"none"})

    def test_exclusion_prefix(self, h):
        assert h.match_text("room*-u17") == ["all", "room", "room1", "room2"]

    def test_exclusion_of_all_channel_subscriber_on_empty_target(self, h):
        assert h.match(Target(exclude="u17")) == ["all"]

    def test_exclusion_multi_channel(self, h):
        target = Target(channels=frozenset({"room1", "color"}), exclude="u18")
        assert h.match(target) == ["all", "all17", "both", "room1"]

    def test_match_on_empty_registry(self):
        registry = Registry()
        for target in (Target(), Target(everyone=True), Target(prefixes=("a",))):
            assert registry.match(target) == []
        assert registry.match(Target(channels=frozenset({"a"}))) == []


class TestAddRemove:
    def test_remove_idempotent(self, h):
        sub = h.subs["both"]
        assert h.registry.remove(sub) is True
        assert h.registry.remove(sub) is False
        assert h.match_text("room1") == ["all", "all17", "room1"]
        assert h.match_text("*") == sorted(set(h.subs) - {"both"})

    def test_remove_all_channel_subscriber(self, h):
        assert h.registry.remove(h.subs["all"]) is True
        assert h.match_text("color") == ["all17", "color"]
        assert h.match(Target()) == ["all17"]

    def test_remove_unknown(self):
        registry = Registry()
        stranger = Subscriber(1, ("a",), False, None, FakeTransport([]), False)
        assert registry.remove(stranger) is False

    def test_len_and_iteration_order(self, h):
        assert len(h.registry) == 9
        assert [s.number for s in h.registry] == list(range(1, 10))
        h.registry.remove(h.subs["room2"])
        assert len(h.registry) == 8
        assert [s.number for s in h.registry] == [1, 3, 4, 5, 6, 7, 8, 9]

    def test_next_number(self):
        registry = Registry()
        assert [registry.next_number() for _ in range(3)] == [1, 2, 3]

    def test_count_channel(self, h):
        assert h.registry.count_channel("room1") == 2
        assert h.registry.count_channel("room2") == 2
        assert h.registry.count_channel("color") == 1
        assert h.registry.count_channel("nobody") == 0
        assert h.registry.count_channel("room") == 1  # exact name, not a prefix
        h.registry.remove(h.subs["both"])
        assert h.registry.count_channel("room1") == 1
        h.registry.remove(h.subs["room1"])
        assert h.registry.count_channel("room1") == 0

    def test_count_channel_excludes_all_channel_subscribers(self):
        harness = Harness()
        harness.add("all", all_channels=True)
        harness.add("all2", all_channels=True)
        assert harness.registry.count_channel("x") == 0
        harness.add("x", ["x"])
        assert harness.registry.count_channel("x") == 1

    def test_max_subscribers_and_handshaked(self):
        harness = Harness()
        registry = harness.registry
        assert (registry.max_subscribers, registry.handshaked, len(registry)) == (
            0,
            0,
            0,
        )
        a = harness.add("a", ["x"])
        b = harness.add("b", ["x"])
        assert (registry.max_subscribers, registry.handshaked) == (2, 2)
        registry.remove(a)
        registry.remove(b)
        assert (registry.max_subscribers, registry.handshaked, len(registry)) == (
            2,
            2,
            0,
        )
        harness.add("c", ["x"])
        assert (registry.max_subscribers, registry.handshaked, len(registry)) == (
            2,
            3,
            1,
        )
        harness.add("d", all_channels=True)
        harness.add("e", [])
        assert (registry.max_subscribers, registry.handshaked, len(registry)) == (
            3,
            5,
            3,
        )

    def test_initial_counters(self):
        registry = Registry(clock=lambda: 123.5)
        assert registry.started_at == 123.5
        assert registry.connections == 0


def event(event_id="1-0", event_type="message", data="hi") -> Event:
    return Event(event_id, Target(channels=frozenset({"c"})), event_type, data)


class TestSend:
    def test_unchunked_gets_wire(self):
        harness = Harness()
        sub = harness.add("a", ["c"])
        sub.send(event())
        assert harness.out["a"] == [b"id: 1-0\ndata: hi\n\n"]
        assert sub.messages == 1

    def test_chunked_gets_chunk(self):
        harness = Harness()
        sub = harness.add("a", ["c"], chunked=True)
        sub.send(event())
        sub.send(event("1-1", "t", "x"))
        assert harness.out["a"] == [
            b"12\r\nid: 1-0\ndata: hi\n\n\r\n",
            b"1a\r\nid: 1-1\nevent: t\ndata: x\n\n\r\n",
        ]
        assert sub.messages == 2

    def test_shared_encoding(self):
        harness = Harness()
        a = harness.add("a", ["c"], chunked=True)
        b = harness.add("b", ["c"], chunked=True)
        ev = event()
        a.send(ev)
        b.send(ev)
        assert harness.out["a"][0] is harness.out["b"][0]


class TestHeartbeat:
    def test_opening_counts_as_a_write(self):
        harness = Harness()
        harness.add("new", ["c"])
        harness.registry.heartbeat()
        assert harness.out["new"] == []
        harness.registry.heartbeat()
        assert harness.out["new"] == [b":\n\n"]

    def test_idle_subscribers_get_comment(self):
        harness = Harness()
        harness.add("plain", ["c"])
        harness.add("chunked", ["c"], chunked=True)
        harness.registry.heartbeat()  # the opening line counted as a write
        assert harness.out == {"plain": [], "chunked": []}
        harness.registry.heartbeat()
        assert harness.out == {"plain": [b":\n\n"], "chunked": [b"3\r\n:\n\n\r\n"]}
        harness.registry.heartbeat()
        assert harness.out == {
            "plain": [b":\n\n", b":\n\n"],
            "chunked": [b"3\r\n:\n\n\r\n", b"3\r\n:\n\n\r\n"],
        }

    def test_written_subscriber_skipped_once(self):
        harness = Harness()
        busy = harness.add("busy", ["c"])
        harness.add("idle", ["c"])
        harness.registry.heartbeat()  # both just opened
        busy.send(event())
        harness.registry.heartbeat()
        assert harness.out["busy"] == [b"id: 1-0\ndata: hi\n\n"]
        assert harness.out["idle"] == [b":\n\n"]
        harness.registry.heartbeat()
        assert harness.out["busy"] == [b"id: 1-0\ndata: hi\n\n", b":\n\n"]
        assert harness.out["idle"] == [b":\n\n", b":\n\n"]
        assert busy.messages == 1  # a heartbeat is not a message

    def test_removed_subscriber_gets_nothing(self):
        harness = Harness()
        gone = harness.add("gone", ["c"])
        harness.registry.remove(gone)
        harness.registry.heartbeat()
        harness.registry.heartbeat()
        assert harness.out["gone"] == []

    def test_subscriber_heartbeat_directly(self):
        harness = Harness()
        sub = harness.add("a", ["c"], chunked=True)
        sub.send(event())
        sub.heartbeat()
        sub.heartbeat()
        assert harness.out["a"] == [
            b"12\r\nid: 1-0\ndata: hi\n\n\r\n",
            b"3\r\n:\n\n\r\n",
        ]


class TestSlowSubscriber:
    """The push-producer side of L{Subscriber} (SPEC §8, slow subscriber)."""

    def make(self, max_buffer: int):
        out: list = []
        transport = FakeTransport(out)
        sub = Subscriber(
            1, ("a",), False, None, transport, False, max_buffer=max_buffer
        )
        return sub, transport, out

    def test_limit_counts_what_comes_on_top_of_the_transport_buffer(self):
        sub, _, _ = self.make(65536 + 100)
        assert sub.limit == 100
        sub, _, _ = self.make(1000)
        assert sub.limit == 0

    def test_not_paused_never_dropped(self):
        sub, transport, out = self.make(65536 + 10)
        event = Event("1-0", Target(), "message", "x" * 100)
        for _ in range(50):
            sub.send(event)
        assert transport.aborted == 0
        assert len(out) == 50

    def test_dropped_once_past_the_limit_while_paused(self):
        sub, transport, out = self.make(65536 + 250)
        event = Event("1-0", Target(), "message", "x" * 100)
        frame = len(event.wire)  # "id: 1-0\ndata: " + 100 + "\n\n"
        sub.pauseProducing()
        sent = 0
        while transport.aborted == 0:
            sub.send(event)
            sent += 1
        assert sent == 250 // frame + 1
        assert sub.errors == 1
        sub.send(event)
        sub.heartbeat()
        assert transport.aborted == 1
        assert len(out) == sent

    def test_resume_forgets_the_backlog(self):
        sub, transport, out = self.make(65536 + 250)
        event = Event("1-0", Target(), "message", "x" * 100)
        sub.pauseProducing()
        sub.send(event)
        sub.send(event)
        sub.resumeProducing()
        assert (sub.paused, sub.backlog) == (False, 0)
        sub.pauseProducing()
        sub.send(event)
        sub.send(event)
        assert transport.aborted == 0

    def test_stop_producing_discards_later_writes(self):
        sub, _, out = self.make(MAX)
        sub.stopProducing()
        sub.send(Event("1-0", Target(), "message", "x"))
        assert out == []


MAX = 1048576


class TestRoutes:
    """
    L{Registry.routes} is L{Registry.match} split into lanes and the others: the
    same subscribers, each once, whoever writes directly (SPEC §4, §2.4).
    """

    CHANNELS = ("a", "b", "ab", "abc")

    @staticmethod
    def direct_capable(sub: Subscriber) -> Subscriber:
        sub._socket = object()  # what plain_socket finds under a TCP transport
        return sub

    #: (channels held, all channels, chunked, plain TCP, writing directly)
    KINDS = {
        "lane member": lambda names: (names[:1], False, True, True, True),
        "waiting": lambda names: (names[:1], False, True, True, False),
        "several channels": lambda names: (names, False, True, True, True),
        "all channels": lambda names: ((), True, True, True, True),
        "HTTP/1.0": lambda names: (names[:1], False, False, True, True),
        "TLS": lambda names: (names[:1], False, True, False, False),
    }

    @settings(max_examples=300)
    @given(
        subscribers=st.lists(
            st.tuples(
                st.sampled_from(sorted(KINDS)),
                st.lists(
                    st.sampled_from(CHANNELS), min_size=1, max_size=3, unique=True
                ),
            ),
            max_size=10,
        ),
        targets=st.lists(
            st.one_of(
                st.sampled_from(CHANNELS + ("*", "", "nobody")),
                st.sampled_from(("a*", "ab*", "x*")),
                st.sets(st.sampled_from(CHANNELS), min_size=2).map(
                    lambda names: Target(channels=frozenset(names))
                ),
            ),
            min_size=1,
            max_size=5,
        ),
    )
    def test_routes_reach_what_match_reaches(self, subscribers, targets):
        registry = Registry()
        for number, (kind, names) in enumerate(subscribers):
            channels, everything, chunked, tcp, direct = self.KINDS[kind](names)
            sub = Subscriber(
                number, tuple(channels), everything, None, FakeTransport([]), chunked
            )
            if tcp:
                self.direct_capable(sub)
            registry.add(sub)
            if tcp and direct:
                sub._set_direct(True)
        for target in targets:
            if isinstance(target, str):
                target = parse_target(target)
            lanes, others = registry.routes(target)
            routed = [sub for lane in lanes for sub in lane.members] + others
            assert len(routed) == len(set(routed))
            assert set(routed) == set(registry.match(target))
            for lane in lanes:
                assert all(sub.direct and sub.lane is lane for sub in lane.members)

    def test_only_chunked_single_channel_tcp_subscribers_have_a_lane(self):
        registry = Registry()
        subs = [
            Subscriber(1, ("a",), False, None, FakeTransport([]), True),
            Subscriber(2, ("a",), False, None, FakeTransport([]), False),
            Subscriber(3, ("a", "b"), False, None, FakeTransport([]), True),
            Subscriber(4, (), True, None, FakeTransport([]), True),
            Subscriber(5, ("a",), False, None, FakeTransport([]), True),
        ]
        for sub in subs[:4]:
            registry.add(self.direct_capable(sub))
        registry.add(subs[4])  # no socket: a TLS or test transport
        assert [sub.lane is not None for sub in subs] == [
            True,
            False,
            False,
            False,
            False,
        ]
