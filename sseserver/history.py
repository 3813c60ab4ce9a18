"""
The bounded history behind C{Last-Event-ID} replay (SPEC §2.7).  Pure: no I/O, no
Twisted.

It keeps the last C{size} events in publication order, and an index of them by
what their targets name (a channel, a channel prefix, everybody, nobody but the
all-channel subscribers), so that the replay for a subscriber of a few channels
looks only at the events that could reach it, however many others the history
holds.

Ids are compared as numbers, C{(milliseconds, sequence)}.  The I{horizon} is the
key of the newest event evicted: a C{Last-Event-ID} below it may have missed
something (a gap).  It starts below every id, unless given (e.g. the start of the
process, to count ids from before a restart as gaps).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import deque
from heapq import merge
from typing import Iterable, Optional, Tuple

Key = Tuple[int, int]

_ID = re.compile(r"([0-9]+)-([0-9]+)")
#: Digits kept of an id part: anything longer is later than any real id.
_DIGITS = 30
_HUGE = 10**_DIGITS
#: Below every key.
BEGINNING: Key = (-1, -1)


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _DIGITS else _HUGE


def parse_id(text) -> Optional[Key]:
    """
    The key of an event id C{<ms>-<seq>}, or C{None} when it is malformed (does
    not match C{^[0-9]+-[0-9]+$}).  Takes C{str} or C{bytes}.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            return None
    if text is None:
        return None
    match = _ID.fullmatch(text)
    if match is None:
        return None
    return (_number(match[1]), _number(match[2]))


class _Index:
    """
    The events (and their keys) of one index entry, oldest first.  Eviction only
    ever removes the oldest, so a list with a moving start serves: it can be
    bisected, and it is compacted now and then.
    """

    __slots__ = ("keys", "events", "start")

    def __init__(self):
        self.keys: list = []
        self.events: list = []
        self.start = 0

    def append(self, key: Key, event) -> None:
        self.keys.append(key)
        self.events.append(event)

    def pop_oldest(self) -> None:
        self.start += 1
        if self.start > 64 and self.start * 2 > len(self.keys):
            del self.keys[: self.start]
            del self.events[: self.start]
            self.start = 0

    def __len__(self) -> int:
        return len(self.keys) - self.start

    def after(self, key: Key) -> Iterable:
        """(key, event) pairs newer than C{key}, oldest first."""
        first = bisect_right(self.keys, key, self.start)
        return zip(self.keys[first:], self.events[first:])


class History:
    """
    The last C{size} events.  An event is anything with C{id} (C{"<ms>-<seq>"},
    increasing) and C{target} (a L{sseserver.grammar.Target}).
    """

    def __init__(self, size: int, horizon: Key = BEGINNING):
        if size < 1:
            raise ValueError("a history holds at least one event")
        self.size = size
        #: Key of the newest event evicted (or known to be lost).
        self.horizon = horizon
        self._order: deque = deque()  # (key, event, index entries), oldest first
        self._channels: dict = {}  # channel -> _Index
        self._prefixes: dict = {}  # prefix -> _Index
        self._everyone = _Index()  # target "*"
        self._all = _Index()  # every event, for all-channel subscribers

    def __len__(self) -> int:
        return len(self._order)

    @property
    def oldest_id(self) -> Optional[str]:
        """The id of the oldest event retained, C{None} when there is none."""
        return self._order[0][1].id if self._order else None

    @property
    def newest_key(self) -> Optional[Key]:
        return self._order[-1][0] if self._order else None

    def append(self, event) -> None:
        """Remember an event (newer than every one before); evict the oldest."""
        ms, _, seq = event.id.partition("-")  # an id of ours: well-formed
        key = (int(ms), int(seq))
        target = event.target
        entries = [self._all]
        if target.everyone:
            entries.append(self._everyone)
        else:
            for channel in target.channels:
                entries.append(self._entry(self._channels, channel))
            for prefix in target.prefixes:
                entries.append(self._entry(self._prefixes, prefix))
        for entry in entries:
            entry.append(key, event)
        self._order.append((key, event, entries))
        if len(self._order) > self.size:
            self._evict()

    @staticmethod
    def _entry(table: dict, name: str) -> _Index:
        entry = table.get(name)
        if entry is None:
            entry = table[name] = _Index()
        return entry

    def _evict(self) -> None:
        key, event, entries = self._order.popleft()
        self.horizon = max(self.horizon, key)
        target = event.target
        for entry in entries:
            entry.pop_oldest()
        if not target.everyone:
            for table, names in (
                (self._channels, target.channels),
                (self._prefixes, target.prefixes),
            ):
                for name in names:
                    entry = table.get(name)
                    if entry is not None and not entry:
                        del table[name]

    def is_gap(self, key: Key) -> bool:
        """Whether a subscriber whose last event was C{key} may have missed some."""
        return key < self.horizon

    def after(self, key: Key, subscriber) -> list:
        """
        The retained events newer than C{key} that C{subscriber} would have
        received (SPEC §4), oldest first, each once.  C{subscriber} has
        C{channels}, C{all_channels} and C{client_id}, as a
        L{sseserver.registry.Subscriber} does.
        """
        newest = self.newest_key
        if newest is None or key >= newest:
            return []
        if subscriber.all_channels:
            sources = [self._all]
        else:
            sources = [self._everyone]
            for channel in subscriber.channels:
                entry = self._channels.get(channel)
                if entry is not None:
                    sources.append(entry)
                sources.extend(self._prefix_entries(channel))
        sources = [s for s in sources if len(s)]
        if len(sources) == 1:
            found = sources[0].after(key)
        else:
            found = merge(*(s.after(key) for s in sources), key=lambda pair: pair[0])
        client_id = subscriber.client_id
        events = []
        last = None
        for event_key, event in found:
            if event_key == last:
                continue  # reached through two of the subscriber's channels
            last = event_key
            exclude = event.target.exclude
            if exclude is None or exclude != client_id:
                events.append(event)
        return events

    def _prefix_entries(self, channel: str) -> list:
        """The index entries of the C{prefix*} targets that match C{channel}."""
        prefixes = self._prefixes
        if not prefixes:
            return []
        if len(prefixes) < len(channel):
            return [e for p, e in prefixes.items() if channel.startswith(p)]
        found = []
        for end in range(1, len(channel) + 1):
            entry = prefixes.get(channel[:end])
            if entry is not None:
                found.append(entry)
        return found
