"""
The protocol grammar: control lines, request URLs and targets.

Pure functions with no I/O and no Twisted, so that every rule of SPEC §2.1, §4 and
§5 can be tested exhaustively.  Input that cannot be accepted raises L{ProtocolError},
whose text is the reason the sender sees.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union
from urllib.parse import unquote_to_bytes

MAX_NAME_BYTES = 256
MAX_CHANNELS = 256
MAX_DATA_BYTES = 65536
MAX_LINE_BYTES = 65536
#: Largest body of an HTTP POST publish (SPEC §5.5).
MAX_BODY_BYTES = 1048576

SSE_SERVER = "sse-server"
HASSES = "hasses"
DIALECTS = (SSE_SERVER, HASSES)

#: Commands of SPEC §6; those in ARGUMENT_COMMANDS take ":<channel>".
COMMANDS = frozenset(
    {
        "status",
        "tcpstatus",
        "clientlist",
        "numberofclients",
        "tcpnumberofclients",
        "loglevel_quiet",
        "loglevel_normal",
        "loglevel_debug",
        "reinit_enable",
        "reinit_disable",
        "halt",
    }
)
ARGUMENT_COMMANDS = frozenset({"subscribedclients", "tcpsubscribedclients"})


class ProtocolError(ValueError):
    """
    Input that cannot be accepted.  C{str(error)} is the reason given to the sender;
    C{status} is the HTTP status used when the input came over HTTP.
    """

    status = 400


class TooLarge(ProtocolError):
    """Input over a size limit (HTTP 413)."""

    status = 413


@dataclass(frozen=True)
class Target:
    """
    Who an event goes to (SPEC §4).  The empty target reaches all-channel
    subscribers only; every form also reaches all-channel subscribers.
    """

    channels: frozenset = frozenset()
    prefixes: tuple = ()
    everyone: bool = False
    exclude: Optional[str] = None

    def __str__(self) -> str:
        if self.everyone:
            text = "*"
        else:
            text = ",".join(sorted(self.channels) + [p + "*" for p in self.prefixes])
        return text + ("-" + self.exclude if self.exclude is not None else "")


@dataclass(frozen=True)
class Message:
    """An event to publish, before the hub gives it an id."""

    target: Target
    type: str
    data: str


@dataclass(frozen=True)
class Command:
    """A command of SPEC §6; C{argument} is the channel of C{subscribedclients:}."""

    name: str
    argument: Optional[str] = None


@dataclass(frozen=True)
class Subscription:
    """What a GET request subscribes to (SPEC §2.1)."""

    channels: tuple = ()
    all_channels: bool = False
    client_id: Optional[str] = None
    last_event_id: Optional[str] = None


@dataclass(frozen=True)
class Publish:
    """An HTTP publish (SPEC §5.5): messages and commands in query order."""

    items: tuple = ()
    token: Optional[str] = None


@dataclass(frozen=True)
class JsonPublish:
    """
    The control command C{json <object or list>} (SPEC §5.5): messages published
    together; C{single} when an object (not a list) was given, which shapes the
    reply.
    """

    messages: tuple = ()
    single: bool = True


@dataclass(frozen=True)
class Route:
    """Where a request URI leads: C{kind} is "prefix", "root" or "notfound"."""

    kind: str
    segments: tuple = ()
    query: Optional[bytes] = field(default=None)


# --- names, types and data -----------------------------------------------------------


def check_name(name: str, what: str = "channel name") -> str:
    """
    A channel name, event type or client id: 1-256 bytes of UTF-8, no C0 control
    character and no DEL (SPEC §2.1).
    """
    size = len(name.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise ProtocolError(f"empty {what}")
    if size > MAX_NAME_BYTES:
        raise ProtocolError(f"{what} longer than {MAX_NAME_BYTES} bytes")
    for char in name:
        if char < " " or char == "\x7f":
            raise ProtocolError(f"control character in {what}")
    return name


def check_type(event_type: str) -> str:
    """An event type follows the rules of names, so never holds CR, LF or NUL."""
    return check_name(event_type, "event type")


def check_data(data: str) -> str:
    """Event data: at most 64 KiB of UTF-8 and no NUL."""
    if len(data) > MAX_DATA_BYTES // 4 and len(data.encode("utf-8")) > MAX_DATA_BYTES:
        raise TooLarge(f"data longer than {MAX_DATA_BYTES} bytes")
    if "\0" in data:
        raise ProtocolError("NUL in data")
    return data


def decode_utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"invalid UTF-8 in {where}") from None


# --- targets ---------------------------------------------------------------------------


def parse_target(text: str, dialect: str = SSE_SERVER) -> Target:
    """
    Read the target of a control line (SPEC §4): C{name}, C{prefix*}, C{*}, the
    empty target, and under the hasses dialect C{target-clientid}.
    """
    exclude = None
    if dialect == HASSES and "-" in text:
        text, exclude = text.split("-", 1)
        check_name(exclude, "client id")
    if text == "*":
        return Target(everyone=True, exclude=exclude)
    if text == "":
        return Target(exclude=exclude)
    if text.endswith("*"):
        return Target(prefixes=(check_name(text[:-1]),), exclude=exclude)
    return Target(channels=frozenset((check_name(text),)), exclude=exclude)


# --- control lines ---------------------------------------------------------------------


def parse_command(text: str) -> Command:
    """A line without C{=}: one of the commands of SPEC §6."""
    if text in COMMANDS:
        return Command(text)
    name, colon, argument = text.partition(":")
    if colon and name in ARGUMENT_COMMANDS:
        return Command(name, check_name(argument))
    shown = text if len(text) <= 64 else text[:64] + "..."
    raise ProtocolError(f"unknown command: {shown!r}")


def parse_message(item: str, dialect: str = SSE_SERVER) -> Message:
    """C{TARGET[/TYPE] = DATA}, split at the first C{=} and the first C{/}."""
    left, _, data = item.partition("=")
    target_text, slash, event_type = left.partition("/")
    event_type = event_type.strip(" \t") if slash else "message"
    return Message(
        target=parse_target(target_text.strip(" \t"), dialect),
        type=check_type(event_type),
        data=check_data(data.strip(" \t")),
    )


def parse_line(
    raw: bytes, dialect: str = SSE_SERVER, separator: Optional[str] = None
) -> list:
    """
    One control-port or FIFO line (without its newline) to a list of L{Message}s and
    L{Command}s (SPEC §5.2, §5.3).  A line with an error yields nothing at all.
    """
    if len(raw) > MAX_LINE_BYTES:
        raise TooLarge(f"line longer than {MAX_LINE_BYTES} bytes")
    if b"\0" in raw:
        raise ProtocolError("NUL byte in line")
    line = decode_utf8(raw, "line").strip(" \t")
    json_text = _json_command(line)
    if json_text is not None:
        return [parse_json_command(json_text, dialect)]
    items = line.split(separator) if separator else [line]
    parsed = []
    for item in items:
        item = item.strip(" \t")
        if not item:
            continue
        if "=" in item:
            parsed.append(parse_message(item, dialect))
        else:
            parsed.append(parse_command(item))
    return parsed


# --- URLs ------------------------------------------------------------------------------


def percent_decode(raw: bytes, where: str = "URL") -> str:
    """C{%XX} escapes to bytes, then UTF-8; C{+} stays C{+}."""
    return decode_utf8(unquote_to_bytes(raw), where)


def route(uri: bytes, prefix: bytes) -> Route:
    """
    Split a request URI against the prefix.  The prefix must end at a segment
    boundary (C{/ssefoo} does not match C{/sse}); empty segments are skipped.
    """
    path, question, query = uri.partition(b"?")
    prefix = prefix.rstrip(b"/")
    if path == prefix or path.startswith(prefix + b"/"):
        segments = tuple(
            percent_decode(s, "path") for s in path[len(prefix) :].split(b"/") if s
        )
        return Route("prefix", segments, query if question else None)
    if path == b"/":
        return Route("root", (), query if question else None)
    return Route("notfound")


def split_query(query: Optional[bytes]) -> list:
    """Query parameters as (raw key, raw value or None), split at C{&} and C{;}."""
    if not query:
        return []
    params = []
    for part in query.replace(b";", b"&").split(b"&"):
        if part:
            key, equals, value = part.partition(b"=")
            params.append((key, value if equals else None))
    return params


def accepts_event_stream(accept: Optional[bytes]) -> bool:
    return accept is not None and b"text/event-stream" in accept.lower()


def is_subscription(params: list, accepts_stream: bool) -> bool:
    """
    SPEC §2.1: no query, a C{subscribe} parameter or C{Accept: text/event-stream}
    makes a subscription.  Any other query is an HTTP publish.
    """
    if accepts_stream or not params:
        return True
    return any(percent_decode(key, "query") == "subscribe" for key, _ in params)


def parse_subscription(segments: Iterable[str], params: list) -> Subscription:
    """Channels from the path and from C{subscribe=a-b}; C{id}; C{lastEventId}."""
    channels = list(segments)
    subscribed = False
    all_channels = False
    client_id = last_event_id = None
    for raw_key, raw_value in params:
        key = percent_decode(raw_key, "query")
        if key == "subscribe":
            subscribed = True
            for piece in (raw_value or b"").split(b"-"):
                name = percent_decode(piece, "query")
                if name == "*":
                    all_channels = True
                elif name:
                    channels.append(name)
        elif key == "id":
            client_id = percent_decode(raw_value or b"", "query") or None
        elif key == "lastEventId":
            last_event_id = percent_decode(raw_value or b"", "query") or None
    if not channels and not subscribed:
        all_channels = True
    unique = tuple(dict.fromkeys(check_name(c) for c in channels))
    if len(unique) > MAX_CHANNELS:
        raise ProtocolError(f"more than {MAX_CHANNELS} channels")
    if client_id is not None:
        check_name(client_id, "client id")
    return Subscription(
        channels=() if all_channels else unique,
        all_channels=all_channels,
        client_id=client_id,
        last_event_id=last_event_id,
    )


def parse_publish(segments: Iterable[str], params: list) -> Publish:
    """
    An HTTP publish (SPEC §5.5): each C{type=data} parameter is an event to the
    path's channels (or, with none, to all-channel subscribers); a parameter
    without C{=} is a command; C{token} is consumed.  Everything is checked before
    anything is returned, so a bad parameter publishes nothing.
    """
    channels = frozenset(check_name(c) for c in segments)
    if len(channels) > MAX_CHANNELS:
        raise ProtocolError(f"more than {MAX_CHANNELS} channels")
    target = Target(channels=channels)
    items = []
    token = None
    for raw_key, raw_value in params:
        key = percent_decode(raw_key, "query")
        if raw_value is None:
            items.append(parse_command(key))
        elif key == "token":
            token = percent_decode(raw_value, "query")
        else:
            data = percent_decode(raw_value, "query")
            items.append(Message(target, check_type(key), check_data(data)))
    return Publish(tuple(items), token)


# --- JSON and form publishing (SPEC §5.5) --------------------------------------------------

#: C{json} then blanks then an object or a list: the control port's JSON publish.
_JSON_COMMAND = re.compile(r"json[ \t]+(?=[{\[])")
#: Keys of a JSON publish object; C{id} is accepted and ignored.
JSON_KEYS = frozenset({"event", "data", "target", "id"})
#: Fields of a form publish; C{id} is accepted and ignored.
FORM_FIELDS = JSON_KEYS


def _json_command(line: str) -> Optional[str]:
    match = _JSON_COMMAND.match(line)
    return line[match.end() :] if match else None


def _json_string(value, what: str) -> str:
    """A JSON string that can be sent as UTF-8 (no lone surrogate)."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"invalid Unicode in {what}") from None
    return value


def path_target(path_channels: Iterable[str]) -> Target:
    """The target of an HTTP publish: the path's channels (none: all-channel only)."""
    channels = frozenset(check_name(c) for c in path_channels)
    if len(channels) > MAX_CHANNELS:
        raise ProtocolError(f"more than {MAX_CHANNELS} channels")
    return Target(channels=channels)


def _publish_message(
    event_type, data, target, path_channels: tuple, dialect: str
) -> Message:
    """One event of a JSON or form publish, checked."""
    if target is not None and path_channels:
        raise ProtocolError("target given, but the path already names channels")
    if target is None:
        where = path_target(path_channels)
    else:
        where = parse_target(_json_string(target, "target"), dialect)
    if event_type is None:
        event_type = "message"
    if data is None:
        raise ProtocolError("missing data")
    return Message(
        target=where,
        type=check_type(_json_string(event_type, "event")),
        data=check_data(_json_string(data, "data")),
    )


def decode_json(raw: Union[bytes, str], where: str = "body"):
    """JSON text to a value; L{ProtocolError} when it is not valid JSON."""
    if isinstance(raw, bytes):
        raw = decode_utf8(raw, where)
    try:
        return json.loads(raw)
    except RecursionError:
        raise ProtocolError(f"JSON nested too deeply in {where}") from None
    except ValueError as error:
        raise ProtocolError(f"invalid JSON in {where}: {error}") from None


def parse_json_publish(
    obj, path_channels: Iterable[str] = (), dialect: str = SSE_SERVER
) -> list:
    """
    A decoded JSON publish: an object C{{"event", "data", "target"}} or a
    non-empty list of them, to L{Message}s.  C{data} is required; C{event}
    defaults to C{message}; C{target} (a control-line target, SPEC §4) only when
    the path names no channel — without either, the event goes to all-channel
    subscribers only; C{id} is ignored.  Everything is checked before anything is
    returned.
    """
    path_channels = tuple(path_channels)
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise ProtocolError("empty list: nothing to publish")
    messages = []
    for item in items:
        if not isinstance(item, dict):
            raise ProtocolError(
                "a JSON publish is an object or a list of objects"
                ' {"event", "data", "target"}'
            )
        unknown = sorted(set(item) - JSON_KEYS)
        if unknown:
            raise ProtocolError(f"unknown key {unknown[0]!r} in JSON publish")
        messages.append(
            _publish_message(
                item.get("event"),
                item.get("data"),
                item.get("target"),
                path_channels,
                dialect,
            )
        )
    return messages


def parse_json_command(text: str, dialect: str = SSE_SERVER) -> JsonPublish:
    """The argument of the control command C{json}: an object or a list."""
    obj = decode_json(text, "json command")
    return JsonPublish(
        tuple(parse_json_publish(obj, (), dialect)), isinstance(obj, dict)
    )


def parse_form_publish(
    body: bytes, path_channels: Iterable[str] = (), dialect: str = SSE_SERVER
) -> list:
    """
    An C{application/x-www-form-urlencoded} publish body (fields C{event},
    C{data}, C{target}; C{id} ignored): standard form decoding, C{+} is a
    space, fields split at C{&}.  One event; each field at most once.
    """
    fields: dict = {}
    for part in body.split(b"&"):
        if not part:
            continue
        raw_key, _, raw_value = part.partition(b"=")
        key = decode_utf8(unquote_to_bytes(raw_key.replace(b"+", b" ")), "form")
        value = decode_utf8(unquote_to_bytes(raw_value.replace(b"+", b" ")), "form")
        if key not in FORM_FIELDS:
            shown = key if len(key) <= 64 else key[:64] + "..."
            raise ProtocolError(
                f"unknown form field {shown!r} (fields: event, data, target;"
                " JSON needs Content-Type: application/json)"
            )
        if key in fields:
            raise ProtocolError(f"form field {key!r} given twice")
        fields[key] = value
    return [
        _publish_message(
            fields.get("event"),
            fields.get("data"),
            fields.get("target"),
            tuple(path_channels),
            dialect,
        )
    ]
