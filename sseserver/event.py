"""
Events and their wire encoding (SPEC §2.4) — the one place that writes SSE bytes.

An L{Event} is encoded once, and the same bytes (and the same HTTP/1.1 chunk)
are shared by every subscriber that receives it.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Optional

from sseserver.grammar import Target

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

#: First bytes of every stream without C{--retry}: proxies and clients see it open.
OPENING = b":ok\n\n"
#: Sent to a subscriber that was not written to for a heartbeat interval.
HEARTBEAT = b":\n\n"
#: The last chunk of a chunked response.
FINAL_CHUNK = b"0\r\n\r\n"
#: Type of the event that tells a replayed subscriber it missed events (SPEC §2.7).
GAP_TYPE = "sseserver-gap"


def encode(event_id: str | None, event_type: str, data: str) -> bytes:
    """
    The SSE fields of one event.  The data is split at every CR LF, LF and CR, so
    no payload can end the event early or inject a field.
    """
    fields = [f"id: {event_id}\n"] if event_id is not None else []
    if event_type != "message":
        fields.append(f"event: {event_type}\n")
    for line in _LINE_BREAK.split(data):
        fields.append(f"data: {line}\n")
    fields.append("\n")
    return "".join(fields).encode("utf-8")


def chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk holding C{payload}."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


HEARTBEAT_CHUNK = chunk(HEARTBEAT)


class Event:
    """
    An accepted event: immutable, with its encoding computed once, when it is
    made, and shared by every subscriber (plain attributes: the fan-out loop reads
    them once per delivery).
    """

    __slots__ = ("id", "target", "type", "data", "wire", "chunk")

    def __init__(
        self, event_id: Optional[str], target: Target, event_type: str, data: str
    ):
        self.id = event_id
        self.target = target
        self.type = event_type
        self.data = data
        #: The event's bytes for an unchunked (HTTP/1.0) stream.
        self.wire = encode(event_id, event_type, data)
        #: The same framed as one HTTP/1.1 chunk.
        self.chunk = chunk(self.wire)

    def __repr__(self) -> str:
        return f"<Event {self.id} {self.type!r} to {self.target}>"


def gap_event(oldest_id: Optional[str]) -> Event:
    """
    The C{sseserver-gap} event of a replay that cannot be complete: no C{id:}
    line (the browser's last id stays), the oldest id retained as data (empty
    when nothing is).
    """
    return Event(None, Target(), GAP_TYPE, oldest_id or "")


class IdGenerator:
    """
    Event ids C{<milliseconds since epoch>-<sequence>}, the shape of a Redis stream
    id: unique and increasing, also across restarts, and never going back when the
    clock does.
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._millis = 0
        self._sequence = -1

    def next(self) -> str:
        millis = int(self._clock() * 1000)
        if millis > self._millis:
            self._millis, self._sequence = millis, 0
        else:
            self._sequence += 1
        return f"{self._millis}-{self._sequence}"
