"""
The SSE port: a twisted.web Resource that turns each request into a subscription,
an HTTP publish (SPEC §5.5), the demo page or an error (SPEC §2).
"""

from __future__ import annotations

import hmac
import socket
from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from sseserver import __version__
from sseserver.commands import HTTP
from sseserver.demo import demo_page
from sseserver.dispatch import Dispatcher
from sseserver.event import OPENING
from sseserver.flow import NO_CONGESTION
from sseserver.grammar import (
    Command,
    ProtocolError,
    Subscription,
    accepts_event_stream,
    is_subscription,
    parse_publish,
    parse_subscription,
    percent_decode,
    route,
    split_query,
)
from sseserver.registry import MAX_CLIENT_BUFFER, Registry, Subscriber
from sseserver.verbosity import Verbosity

SERVER_HEADER = b"sseserver/" + __version__.encode("ascii")
ALLOWED_METHODS = b"GET, HEAD, OPTIONS"
PREFLIGHT_HEADERS = b"Cache-Control, Last-Event-ID, X-Requested-With"
PREFLIGHT_PUBLISH_HEADERS = PREFLIGHT_HEADERS + b", Authorization"
#: Seconds a connection may stay idle before it has sent a whole request.
REQUEST_TIMEOUT = 60
#: Bytes a peer may send on an open stream before it is disconnected.
MAX_IGNORED_BYTES = 65536
#: Seconds a subscriber refused for --max-clients is told to wait.
RETRY_AFTER = 5


def cors_headers(origin: Optional[bytes], allowed: tuple) -> list:
    """
    SPEC §2.6: C{*} for everyone by default; with a list, the request's own origin
    echoed (with credentials) when listed, and no CORS headers otherwise.
    """
    if "*" in allowed:
        return [(b"Access-Control-Allow-Origin", b"*")]
    if origin is not None and origin.decode("latin-1") in allowed:
        return [
            (b"Access-Control-Allow-Origin", origin),
            (b"Access-Control-Allow-Credentials", b"true"),
            (b"Vary", b"Origin"),
        ]
    return []


def printable(text: str, limit: int = 512) -> str:
    """A header value safe for one log line."""
    return "".join(c if " " <= c != "\x7f" else "?" for c in text[:limit])


def address_text(address) -> str:
    host = getattr(address, "host", None)
    if host is None:
        return str(getattr(address, "name", None) or "unix")
    return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"


class SSEResource(Resource):
    """Every request on the SSE port comes here; it routes on the raw URI."""

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        registry: Registry,
        dispatcher: Dispatcher,
        verbosity: Verbosity,
        prefix: str = "/sse",
        cors_origins: tuple = ("*",),
        http_publish: bool = False,
        publish_token: Optional[str] = None,
        allow_commands: bool = False,
        demo: bool = True,
        retry: Optional[int] = None,
        max_clients: int = 0,
        max_client_buffer: int = MAX_CLIENT_BUFFER,
        flow=NO_CONGESTION,
    ):
        super().__init__()
        self.registry = registry
        self.dispatcher = dispatcher
        self.verbosity = verbosity
        self.prefix = prefix.encode("utf-8")
        self.cors_origins = tuple(cors_origins)
        self.http_publish = http_publish
        self.publish_token = publish_token
        self.allow_commands = allow_commands
        self.demo_page = demo_page(prefix) if demo else None
        self.opening = b"retry: %d\n\n" % retry if retry is not None else OPENING
        self.max_clients = max_clients
        self.max_client_buffer = max_client_buffer
        self.flow = flow

    def render(self, request):
        request.setHeader(b"server", SERVER_HEADER)
        try:
            where = route(request.uri, self.prefix)
        except ProtocolError as error:
            return self._text(request, error.status, str(error))
        if (
            where.kind == "root"
            and self.demo_page
            and request.method in (b"GET", b"HEAD")
        ):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return self.demo_page
        if where.kind != "prefix":
            return self._text(request, 404, "not found")
        cors = cors_headers(request.getHeader(b"origin"), self.cors_origins)
        for name, value in cors:
            request.setHeader(name, value)
        if request.method == b"GET":
            return self._get(request, where)
        if request.method == b"HEAD":
            self._stream_headers(request)
            request.write(b"")
            request.finish()
            return NOT_DONE_YET
        if request.method == b"OPTIONS":
            return self._preflight(request, bool(cors))
        if request.method == b"POST" and not self.http_publish:
            return self._publish_disabled(request)
        request.setHeader(b"allow", ALLOWED_METHODS)
        return self._text(request, 405, "method not allowed")

    # responses

    def _text(self, request, code: int, text: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return text.encode("utf-8") + b"\n"

    def _preflight(self, request, allowed: bool) -> bytes:
        """204; the CORS part only for an allowed origin (SPEC §2.6)."""
        request.setResponseCode(204)
        if not allowed:
            return b""
        headers = PREFLIGHT_PUBLISH_HEADERS if self.http_publish else PREFLIGHT_HEADERS
        request.setHeader(b"access-control-allow-methods", ALLOWED_METHODS)
        request.setHeader(b"access-control-allow-headers", headers)
        request.setHeader(b"access-control-max-age", b"86400")
        return b""

    def _publish_disabled(self, request) -> bytes:
        return self._text(
            request,
            403,
            "HTTP publishing is disabled; start sseserver with --http-publish",
        )

    def _stream_headers(self, request) -> None:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        keep_alive = request.clientproto == b"HTTP/1.1"
        request.setHeader(b"connection", b"keep-alive" if keep_alive else b"close")

    # GET: subscribe or publish

    def _get(self, request, where):
        try:
            params = split_query(where.query)
            accept = accepts_event_stream(request.getHeader(b"accept"))
            if is_subscription(params, accept):
                return self._subscribe(
                    request, parse_subscription(where.segments, params)
                )
            if not self.http_publish:
                return self._publish_disabled(request)
            if not self._authorized(request, params):
                request.setHeader(b"www-authenticate", b'Bearer realm="sseserver"')
                return self._text(request, 401, "missing or wrong publish token")
            publish = parse_publish(where.segments, params)
        except ProtocolError as error:
            return self._text(request, error.status, str(error))
        commands = [i for i in publish.items if isinstance(i, Command)]
        if commands and not self.allow_commands:
            return self._text(
                request, 403, "commands need --allow-commands and --http-publish"
            )
        try:
            self.dispatcher.run(publish.items, HTTP)
        except ProtocolError as error:
            return self._text(request, error.status, str(error))
        request.setHeader(b"content-type", b"text/plain")
        return b"OK\r\n"

    def _authorized(self, request, params: list) -> bool:
        if self.publish_token is None:
            return True
        expected = self.publish_token.encode("utf-8")
        offered = []
        header = request.getHeader(b"authorization") or b""
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() == b"bearer":
            offered.append(credentials.strip())
        for key, value in params:
            if value is not None and percent_decode(key, "query") == "token":
                offered.append(percent_decode(value, "query").encode("utf-8"))
        return any(hmac.compare_digest(token, expected) for token in offered)

    def _subscribe(self, request, subscription: Subscription):
        if self.max_clients and len(self.registry) >= self.max_clients:
            request.setHeader(b"retry-after", b"%d" % RETRY_AFTER)
            if self.verbosity.normal:
                self.log.warn("refused a subscriber: --max-clients reached")
            return self._text(request, 503, "too many subscribers, try again later")
        self._stream_headers(request)
        request.write(self.opening)
        channel = request.channel
        channel.start_stream()
        now = self.registry.clock()
        subscriber = Subscriber(
            number=channel.number,
            channels=subscription.channels,
            all_channels=subscription.all_channels,
            client_id=subscription.client_id,
            transport=channel.transport,
            chunked=bool(request.chunked),
            peer=address_text(request.getClientAddress()),
            agent=printable(
                (request.getHeader(b"user-agent") or b"").decode("latin-1")
            ),
            ssl=request.isSecure(),
            connected_at=channel.connected_at,
            handshaked_at=now,
            request=request,
            max_buffer=self.max_client_buffer,
            flow=self.flow,
        )
        request.registerProducer(subscriber, True)
        self.registry.add(subscriber)
        request.notifyFinish().addBoth(self._gone, subscriber)
        if self.verbosity.normal:
            self.log.info(
                "subscriber <{number}> {peer} connected: {channels} id={id}",
                number=subscriber.number,
                peer=subscriber.peer,
                channels="*"
                if subscriber.all_channels
                else ",".join(subscriber.channels),
                id=subscriber.client_id or "",
            )
        return NOT_DONE_YET

    def _gone(self, reason, subscriber: Subscriber) -> None:
        if self.registry.remove(subscriber) and self.verbosity.normal:
            self.log.info(
                "subscriber <{number}> {peer} disconnected after {messages} messages",
                number=subscriber.number,
                peer=subscriber.peer,
                messages=subscriber.messages,
            )
        subscriber.request = None


#: TCP keepalive and unacknowledged-data limits for open streams: a peer that
#: vanished without a FIN (half-open) is found within about two minutes.
TCP_OPTIONS = [
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), 60),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), 10),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 6),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), 120_000),
]


def keep_alive(transport) -> None:
    """Set L{TCP_OPTIONS} on the TCP socket under C{transport} (TLS or not)."""
    while transport is not None and not isinstance(
        getattr(transport, "socket", None), socket.socket
    ):
        transport = getattr(transport, "transport", None)
    if transport is None or transport.socket.family not in (
        socket.AF_INET,
        socket.AF_INET6,
    ):
        return
    for level, option, value in TCP_OPTIONS:
        if option is not None:
            transport.socket.setsockopt(level, option, value)


class SSEChannel(HTTPChannel):
    """
    One connection on the SSE port: counted (C{allconncli}) and numbered.  Once
    it carries a stream, bytes from the peer are discarded, up to a cap; an
    over-long request line or header gets its status before the close.
    """

    streaming = False
    ignored = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        registry = self.site.registry
        registry.connections += 1
        self.number = registry.next_number()
        self.connected_at = registry.clock()
        self.site.channels.add(self)

    def start_stream(self) -> None:
        """From now on the peer has nothing more to say (SPEC §2.8, reinit off)."""
        self.streaming = True
        self.setTimeout(None)  # heartbeats and keepalives watch an open stream
        keep_alive(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if not self.streaming:
            return super().dataReceived(data)
        self.ignored += len(data)
        if self.ignored > MAX_IGNORED_BYTES:
            self._log_rejected("sent more than 64 KiB on an open stream")
            self.transport.abortConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        """Twisted's 16 KiB line limit: 414 for the request line, else 431."""
        if b":" in line.split(b" ", 1)[0]:
            status, reason = b"431 Request Header Fields Too Large", "header too long"
        else:
            status, reason = b"414 URI Too Long", "request line too long"
        self._log_rejected(reason)
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status
        )
        self.transport.loseConnection()

    def _log_rejected(self, reason: str) -> None:
        if self.site.verbosity.normal:
            self.site.access_log.warn(
                "connection <{number}> {peer}: {reason}",
                number=self.number,
                peer=address_text(self.transport.getPeer()),
                reason=reason,
            )

    def connectionLost(self, reason) -> None:
        self.site.registry.connections -= 1
        self.site.channel_closed(self)
        super().connectionLost(reason)


class SSESite(Site):
    """
    The SSE port's Site: access lines only at the C{normal} log level, and a
    clean end of every stream (final chunk, then close) when the server stops.
    """

    protocol = SSEChannel
    displayTracebacks = False
    access_log = Logger()

    def __init__(self, resource: SSEResource, timeout: float = REQUEST_TIMEOUT):
        super().__init__(resource, timeout=timeout)
        self.registry = resource.registry
        self.verbosity = resource.verbosity
        self.channels: set = set()
        self._all_closed: list = []

    def log(self, request) -> None:
        if self.verbosity.normal:
            line = self._logFormatter(self._logDateTime, request)
            self.access_log.info("{line}", line=line)

    def channel_closed(self, channel) -> None:
        self.channels.discard(channel)
        if not self.channels:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def end_all_streams(self) -> defer.Deferred:
        """End every stream with its final chunk, close every connection."""
        for subscriber in list(self.registry):
            request = subscriber.request
            if request is not None and not request.finished:
                request.unregisterProducer()
                request.finish()
        for channel in list(self.channels):
            channel.transport.loseConnection()
        if not self.channels:
            return defer.succeed(None)
        d = defer.Deferred()
        self._all_closed.append(d)
        return d
