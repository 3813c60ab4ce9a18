"""
Unit tests of the replay history (sseserver/history.py, SPEC §2.7): eviction, the
horizon, per-channel lookup, and "what the subscriber would have received" checked
against the registry's own matching on random histories.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import pytest

from sseserver.event import Event
from sseserver.grammar import HASSES, SSE_SERVER, Target, parse_target
from sseserver.history import BEGINNING, History, parse_id
from sseserver.registry import Registry, Subscriber


class NoTransport:
    def write(self, data: bytes) -> None:
        raise AssertionError("nothing is sent here")


@dataclass
class Who:
    channels: tuple = ()
    all_channels: bool = False
    client_id: Optional[str] = None


def events(*targets: str, start: int = 1, dialect: str = SSE_SERVER) -> list:
    return [
        Event(f"{start + n}-0", parse_target(t, dialect), "message", f"e{start + n}")
        for n, t in enumerate(targets)
    ]


def filled(size: int, *targets: str, dialect: str = SSE_SERVER, **kw) -> History:
    history = History(size, **kw)
    for event in events(*targets, dialect=dialect):
        history.append(event)
    return history


def data(found: list) -> list:
    return [e.data for e in found]


# --- ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("1795365096530-0", (1795365096530, 0)),
        ("0-0", (0, 0)),
        (b"12-34", (12, 34)),
        ("007-08", (7, 8)),
        ("9" * 40 + "-1", (10**30, 1)),
        ("1-" + "0" * 5000 + "5", (1, 5)),
    ],
)
def test_parse_id_well_formed(text, key):
    assert parse_id(text) == key


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "1",
        "1-",
        "-1",
        "a-1",
        "1-0 ",
        " 1-0",
        "1-0\n",
        "1--0",
        "1-0-0",
        "+1-0",
        "1_0",
        "١-٠",
        b"\xff-1",
        "1.5-0",
    ],
)
def test_parse_id_malformed(text):
    assert parse_id(text) is None


def test_ids_compare_numerically_not_as_text():
    assert parse_id("10-0") > parse_id("9-0")
    assert parse_id("5-10") > parse_id("5-9")


# --- eviction and horizon ---------------------------------------------------------------


def test_holds_exactly_size_events_and_tracks_the_horizon():
    history = filled(3, "a", "b", "a", "c", "a")
    assert len(history) == 3
    assert history.oldest_id == "3-0"
    assert history.horizon == (2, 0)
    assert not history.is_gap((2, 0))  # it received the newest evicted: no loss
    assert history.is_gap((1, 9))
    assert data(history.after((0, 0), Who(all_channels=True))) == ["e3", "e4", "e5"]


def test_initial_horizon():
    assert History(5).horizon == BEGINNING
    history = History(5, horizon=(100, 0))
    assert history.is_gap((99, 7)) and not history.is_gap((100, 0))
    assert history.oldest_id is None


def test_size_must_be_positive():
    with pytest.raises(ValueError):
        History(0)


def test_eviction_frees_the_index_entries():
    history = filled(2, "a", "b", "p*", "*", "c", "d")
    assert set(history._channels) == {"c", "d"}
    assert history._prefixes == {}
    assert len(history._everyone) == 0


def test_long_run_compacts_the_indexes():
    history = History(10)
    for n, event in enumerate(events(*["a"] * 5000)):
        history.append(event)
    entry = history._channels["a"]
    assert len(entry) == 10 and len(entry.keys) < 200
    assert data(history.after((4994, 0), Who(("a",)))) == [
        f"e{n}" for n in range(4995, 5001)
    ]


# --- what a subscriber would have received ------------------------------------------------


def test_after_an_id_only_newer_events_in_order():
    history = filled(10, "a", "b", "a", "a", "b")
    assert data(history.after((1, 0), Who(("a",)))) == ["e3", "e4"]
    assert data(history.after((3, 0), Who(("a",)))) == ["e4"]
    assert data(history.after((4, 0), Who(("a",)))) == []
    assert data(history.after((2, 5), Who(("a", "b")))) == ["e3", "e4", "e5"]


def test_an_id_newer_than_anything_gives_nothing():
    history = filled(10, "a", "a")
    assert history.after((10**30, 0), Who(("a",))) == []
    assert history.after((2, 1), Who(all_channels=True)) == []


def test_between_ids_and_unknown_ids():
    """An id that was never published (between two) counts by its value."""
    history = filled(10, "a", "a", "a")
    assert data(history.after((1, 5), Who(("a",)))) == ["e2", "e3"]


def test_targets_of_every_form():
    history = filled(20, "a", "room*", "*", "", "b", "a", "roomx")
    assert data(history.after(BEGINNING, Who(("a",)))) == ["e1", "e3", "e6"]
    assert data(history.after(BEGINNING, Who(("room1",)))) == ["e2", "e3"]
    assert data(history.after(BEGINNING, Who(("roomx",)))) == ["e2", "e3", "e7"]
    assert data(history.after(BEGINNING, Who(()))) == ["e3"]  # broadcasts only
    assert data(history.after(BEGINNING, Who(all_channels=True))) == [
        f"e{n}" for n in range(1, 8)
    ]


def test_an_event_to_two_of_the_subscribers_channels_comes_once():
    history = History(10)
    history.append(Event("1-0", Target(channels=frozenset({"a", "b"})), "t", "x"))
    history.append(Event("2-0", parse_target("a*"), "t", "y"))
    assert data(history.after(BEGINNING, Who(("a", "b", "ab")))) == ["x", "y"]


def test_hasses_exclusion():
    history = filled(10, "room-u17", "*-u17", "room", dialect=HASSES)
    assert data(history.after(BEGINNING, Who(("room",), client_id="u17"))) == ["e3"]
    assert data(history.after(BEGINNING, Who(("room",), client_id="u2"))) == [
        "e1",
        "e2",
        "e3",
    ]
    assert data(history.after(BEGINNING, Who(all_channels=True, client_id="u17"))) == [
        "e3"
    ]


def test_prefix_lookup_with_many_prefixes_and_long_channels():
    history = History(100)
    targets = [f"{'x' * n}*" for n in range(1, 40)]
    for event in events(*targets):
        history.append(event)
    assert len(data(history.after(BEGINNING, Who(("xxx",))))) == 3
    assert len(data(history.after(BEGINNING, Who(("x" * 100,))))) == 39


def test_lookup_does_not_touch_unrelated_events():
    """A subscriber of one channel costs its own events, not the whole history."""
    history = History(100_000)
    for event in events(*["other"] * 99_990 + ["mine"] * 10):
        history.append(event)

    class Untouchable:
        def __len__(self):
            return 99_990

        def after(self, key):
            raise AssertionError("looked at unrelated events")

    history._all = Untouchable()  # every event, in order
    history._channels["other"] = Untouchable()
    found = history.after((5, 0), Who(("mine",)))
    assert data(found) == [f"e{n}" for n in range(99_991, 100_001)]


def test_matches_what_the_registry_delivers():
    """
    On random histories and subscribers: the replay after any id is exactly the
    events after it that Registry.match would have delivered to the subscriber.
    """
    rng = random.Random(5)
    channels = ["a", "b", "room1", "room2", "r", "x"]
    target_texts = channels + ["room*", "r*", "*", "", "a-u1", "*-u1", "room-u2"]
    for round_ in range(40):
        size = rng.randint(1, 30)
        history = History(size)
        registry = Registry()
        subscribers = []
        for number in range(8):
            picked = tuple(rng.sample(channels, rng.randint(0, 3)))
            everything = rng.random() < 0.2
            sub = Subscriber(
                number=number,
                channels=() if everything else picked,
                all_channels=everything,
                client_id=rng.choice([None, "u1", "u2"]),
                transport=NoTransport(),
                chunked=True,
            )
            registry.add(sub)
            subscribers.append(sub)
        published = []
        for n in range(rng.randint(0, 60)):
            target = parse_target(rng.choice(target_texts), HASSES)
            event = Event(f"{n // 3 + 1}-{n % 3}", target, "message", str(n))
            published.append((event, set(registry.match(target))))
            history.append(event)
        kept = published[-size:]
        for sub in subscribers:
            for last in [BEGINNING] + [parse_id(e.id) for e, _ in published]:
                expected = [
                    e.id
                    for e, reached in kept
                    if sub in reached and parse_id(e.id) > last
                ]
                assert [e.id for e in history.after(last, sub)] == expected, round_
