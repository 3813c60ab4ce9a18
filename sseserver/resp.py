"""
A small Redis client on Twisted's reactor: the RESP2 wire format (pure functions
and an incremental reply parser) and a protocol that pipelines commands, one
Deferred per command, answered in order.

Why our own: the Twisted-native clients (txredisapi) have no stream commands
(XADD, XREAD, XREVRANGE) and reconnect on their own, hiding the outage a node has
to know about to refuse publishes (SPEC §11).  The cluster needs six commands and
one reply format; this module is that, and nothing else.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

DEFAULT_PORT = 6379


class RedisError(Exception):
    """An error reply (C{-ERR ...}) from Redis."""


class ProtocolError(Exception):
    """Bytes from the server that are not RESP: the connection is unusable."""


def encode_command(*args) -> bytes:
    """One command as a RESP array of bulk strings (str, bytes or int args)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class ReplyParser:
    """
    Replies out of a byte stream, as they complete: simple strings as C{str},
    bulk strings as C{bytes}, integers as C{int}, nil as C{None}, arrays as
    lists, errors as L{RedisError} instances (returned, not raised).

    What is parsed stays parsed: a reply arriving over many reads (an XREAD of
    hundreds of entries) is read once, and nested arrays are kept on a stack,
    not in the call stack.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._position = 0
        #: Arrays being filled: [items, items still to come].
        self._stack: list = []
        #: Length of the bulk string whose header was read, waiting for its bytes.
        self._bulk: int | None = None

    def feed(self, data: bytes) -> list:
        """
        Take more bytes; return the replies they complete, in order.  Raises
        L{ProtocolError} (with the replies completed before it as C{replies}).
        """
        self._buffer += data
        replies: list = []
        try:
            while True:
                value = self._value()
                if value is _INCOMPLETE:
                    break
                if value is _OPENED:
                    continue
                while self._stack:
                    frame = self._stack[-1]
                    frame[0].append(value)
                    frame[1] -= 1
                    if frame[1]:
                        break
                    self._stack.pop()
                    value = frame[0]
                else:
                    replies.append(value)
        except ProtocolError as error:
            error.replies = replies
            raise
        finally:
            if self._position:
                del self._buffer[: self._position]
                self._position = 0
        return replies

    def _value(self):
        """The next whole value, L{_OPENED} (an array begun), or L{_INCOMPLETE}."""
        if self._bulk is not None:
            return self._bulk_bytes(self._bulk)
        end = self._buffer.find(b"\r\n", self._position)
        if end < 0:
            return _INCOMPLETE
        line = bytes(self._buffer[self._position : end])
        self._position = end + 2
        if not line:
            raise ProtocolError("empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return _integer(rest)
        if kind == b"$":
            length = _integer(rest)
            if length < 0:
                return None
            return self._bulk_bytes(length)
        if kind == b"*":
            count = _integer(rest)
            if count < 0:
                return None
            if count == 0:
                return []
            self._stack.append([[], count])
            return _OPENED
        raise ProtocolError(f"unknown reply type {kind!r}")

    def _bulk_bytes(self, length: int):
        end = self._position + length
        if len(self._buffer) < end + 2:
            self._bulk = length
            return _INCOMPLETE
        self._bulk = None
        if self._buffer[end : end + 2] != b"\r\n":
            raise ProtocolError("bulk string without its CR LF")
        value = bytes(self._buffer[self._position : end])
        self._position = end + 2
        return value


#: Markers of L{ReplyParser._value}.
_INCOMPLETE = object()
_OPENED = object()


def _integer(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"not an integer: {text!r}") from None


class RedisProtocol(Protocol):
    """
    One connection.  C{execute} sends a command at once (pipelining) and returns
    a Deferred for its reply; an error reply fails it with L{RedisError}.  When
    the connection goes, every command still waiting fails with the reason, and
    C{lost} fires (the reason is then C{lost_reason}).
    """

    def __init__(self, clock=None):
        self._parser = ReplyParser()
        #: (Deferred, time sent) of the commands sent and not yet answered.
        self.waiting: deque = deque()
        self.clock = clock
        self.lost: defer.Deferred = defer.Deferred()
        self.lost_reason: Failure | None = None
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True

    def execute(self, *args) -> defer.Deferred:
        if not self.connected:
            return defer.fail(ConnectionLost("not connected to redis"))
        sent = self.clock.seconds() if self.clock is not None else 0.0
        waiter: defer.Deferred = defer.Deferred()
        self.waiting.append((waiter, sent))
        self.transport.write(encode_command(*args))
        return waiter

    def oldest_wait(self) -> Optional[float]:
        """When the oldest command still unanswered was sent."""
        return self.waiting[0][1] if self.waiting else None

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ProtocolError as error:
            self._answer(error.replies)
            self.transport.abortConnection()
            self._fail_all(Failure(error))
            return
        self._answer(replies)

    def _answer(self, replies: list) -> None:
        for reply in replies:
            if not self.waiting:
                self.transport.abortConnection()
                return
            waiter, _ = self.waiting.popleft()
            if isinstance(reply, RedisError):
                waiter.errback(reply)
            else:
                waiter.callback(reply)

    def connectionLost(self, reason) -> None:
        self.connected = False
        self.lost_reason = reason
        self._fail_all(reason)
        self.lost.callback(None)

    def _fail_all(self, reason) -> None:
        waiting, self.waiting = self.waiting, deque()
        for waiter, _ in waiting:
            waiter.errback(reason)


@dataclass(frozen=True)
class RedisAddress:
    """Where a C{redis://} URL points."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = None
    unix: Optional[str] = None

    def endpoint(self) -> str:
        """A Twisted client endpoint string."""
        if self.unix is not None:
            return "unix:path=" + _escape(self.unix)
        host = _escape(self.host)
        return f"tcp:host={host}:port={self.port}:timeout=5"

    def display(self) -> str:
        """The URL without its password, for the log."""
        if self.unix is not None:
            return f"unix://{self.unix}?db={self.db}"
        if ":" in self.host:
            return f"redis://[{self.host}]:{self.port}/{self.db}"
        return f"redis://{self.host}:{self.port}/{self.db}"

    def setup_commands(self) -> list:
        """The commands a new connection sends first."""
        commands = []
        if self.password is not None:
            if self.username is not None:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


def parse_redis_url(url: str) -> RedisAddress:
    """
    C{redis://[[user]:password@]host[:port][/db]} or C{unix:///path?db=N}; raises
    C{ValueError} with the reason.
    """
    parts = urlsplit(url)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs a socket path")
        db = 0
        for pair in filter(None, parts.query.split("&")):
            key, _, value = pair.partition("=")
            if key == "db":
                db = _db_number(value)
        return RedisAddress(
            db=db, unix=parts.path, username=username, password=password
        )
    if parts.scheme != "redis":
        raise ValueError(f"not a redis:// or unix:// URL: {url!r}")
    try:
        port = DEFAULT_PORT if parts.port is None else parts.port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    if not port:
        raise ValueError(f"bad port in {url!r}")
    if username and password is None:
        raise ValueError("a user name needs a password (redis://user:password@...)")
    path = parts.path.strip("/")
    return RedisAddress(
        host=parts.hostname or "127.0.0.1",
        port=port,
        db=_db_number(path) if path else 0,
        username=username,
        password=password,
    )


def _escape(text: str) -> str:
    """Quote what Twisted's endpoint-string parser would read as syntax."""
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _db_number(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"not a database number: {text!r}")
    return int(text)
