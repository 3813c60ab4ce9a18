"""
The SSE port: a twisted.web Resource that turns each request into a subscription,
an HTTP publish (SPEC §5.5), the demo page or an error (SPEC §2).
"""

from __future__ import annotations

import hmac
import json
import socket
from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from sseserver import __version__
from sseserver.commands import HTTP, ServerState
from sseserver.demo import demo_page
from sseserver.dispatch import Dispatcher
from sseserver.event import OPENING
from sseserver.flow import NO_CONGESTION
from sseserver.grammar import (
    MAX_BODY_BYTES,
    Command,
    ProtocolError,
    Subscription,
    accepts_event_stream,
    decode_json,
    is_subscription,
    parse_form_publish,
    parse_json_publish,
    parse_publish,
    parse_subscription,
    percent_decode,
    route,
    split_query,
)
from sseserver.registry import MAX_CLIENT_BUFFER, Registry, Subscriber
from sseserver.stream import Stream, hand_over, set_protocol
from sseserver.verbosity import Verbosity

SERVER_HEADER = b"sseserver/" + __version__.encode("ascii")
#: The methods of the prefix (POST publishes, with --http-publish).
ALLOWED_METHODS = b"GET, HEAD, OPTIONS, POST"
#: What a preflight allows without --http-publish: subscribing.
STREAM_METHODS = b"GET, HEAD, OPTIONS"
PREFLIGHT_HEADERS = b"Cache-Control, Last-Event-ID, X-Requested-With"
PREFLIGHT_PUBLISH_HEADERS = PREFLIGHT_HEADERS + b", Authorization, Content-Type"
#: Media types of a POST publish body (SPEC §5.5).
FORM = b"application/x-www-form-urlencoded"
JSON = b"application/json"
#: Seconds a refused over-long body is still read (and dropped) so that the peer
#: sees the 413 instead of a reset.
BODY_LINGER = 5
#: Seconds a connection may stay idle before it has sent a whole request.
REQUEST_TIMEOUT = 60
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
        self.hub = dispatcher.hub
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
        if request.method == b"POST":
            if not self.http_publish:
                return self._publish_disabled(request)
            return self._post(request, where)
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
        if self.http_publish:
            methods, headers = ALLOWED_METHODS, PREFLIGHT_PUBLISH_HEADERS
        else:
            methods, headers = STREAM_METHODS, PREFLIGHT_HEADERS
        request.setHeader(b"access-control-allow-methods", methods)
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
            replies = self.dispatcher.run(publish.items, HTTP)
        except ProtocolError as error:
            return self._text(request, error.status, str(error))
        waiting = [r for r in replies if isinstance(r, defer.Deferred)]
        if not waiting:
            request.setHeader(b"content-type", b"text/plain")
            return b"OK\r\n"

        def answered(outcome: list) -> bytes:
            errors = [r["error"] for r in outcome if r is not None and "error" in r]
            if errors:
                return self._text(request, 503, errors[0])
            request.setHeader(b"content-type", b"text/plain")
            return b"OK\r\n"

        done = defer.gatherResults(waiting, consumeErrors=True)
        return self._later(request, done.addCallback(answered))

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

    # POST: publish a form or a JSON body (SPEC §5.5)

    def _post(self, request, where) -> bytes:
        """
        Publish the body's events to the path's channels (or the JSON target);
        reply with their ids and the deliveries made.  Nothing is published
        unless every event is valid.
        """
        try:
            params = split_query(where.query)
            if not self._authorized(request, params):
                request.setHeader(b"www-authenticate", b'Bearer realm="sseserver"')
                return self._text(request, 401, "missing or wrong publish token")
            for key, _ in params:
                if percent_decode(key, "query") != "token":
                    raise ProtocolError(
                        "a POST publish takes no query parameter but token"
                    )
            request.content.seek(0)
            body = request.content.read()
            kind = media_type(request.getHeader(b"content-type"))
            dialect = self.dispatcher.dialect
            if kind == JSON or kind.endswith(b"+json"):
                messages = parse_json_publish(
                    decode_json(body), where.segments, dialect
                )
            elif kind in (FORM, b""):
                messages = parse_form_publish(body, where.segments, dialect)
            else:
                return self._text(
                    request,
                    415,
                    "send application/x-www-form-urlencoded or application/json",
                )
            outcome = self.dispatcher.publish(messages, HTTP)
        except ProtocolError as error:
            return self._text(request, error.status, str(error))

        def answered(outcome: tuple) -> bytes:
            ids, delivered = outcome
            reply = {"accepted": len(ids), "ids": ids, "delivered": delivered}
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(reply).encode("utf-8") + b"\n"

        def refused(failure) -> bytes:
            failure.trap(ProtocolError)
            return self._text(request, failure.value.status, str(failure.value))

        if isinstance(outcome, defer.Deferred):
            return self._later(request, outcome.addCallbacks(answered, refused))
        return answered(outcome)

    def _later(self, request, body: defer.Deferred):
        """Answer a publish when Redis has (a cluster's publishes wait for it)."""
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def write(data: bytes) -> None:
            if not gone:
                request.write(data)
                request.finish()

        body.addCallback(write)
        body.addErrback(lambda failure: self.log.failure("HTTP publish", failure))
        return NOT_DONE_YET

    def _subscribe(self, request, subscription: Subscription):
        if self.max_clients and len(self.registry) >= self.max_clients:
            request.setHeader(b"retry-after", b"%d" % RETRY_AFTER)
            if self.verbosity.normal:
                self.log.warn("refused a subscriber: --max-clients reached")
            return self._text(request, 503, "too many subscribers, try again later")
        self._stream_headers(request)
        request.write(self.opening)
        channel = request.channel
        keep_alive(channel.transport)
        now = self.registry.clock()
        subscriber = Subscriber(
            number=channel.number,
            channels=subscription.channels,
            all_channels=subscription.all_channels,
            client_id=subscription.client_id or channel.kept_client_id,
            transport=channel.transport,
            chunked=bool(request.chunked),
            peer=address_text(request.getClientAddress()),
            agent=printable(
                (request.getHeader(b"user-agent") or b"").decode("latin-1")
            ),
            ssl=request.isSecure(),
            connected_at=channel.connected_at,
            handshaked_at=now,
            max_buffer=self.max_client_buffer,
            flow=self.flow,
        )
        channel.site.log(request)  # the access line, now: the request is let go
        channel.site.stream_opened(channel, Stream(subscriber, channel.site))
        self.hub.join(
            subscriber,
            request.getHeader(b"last-event-id"),
            subscription.last_event_id,
        )
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
    One connection on the SSE port until it carries a stream (then a L{Stream}
    takes its place): counted (C{allconncli}) and numbered; an over-long request
    line or header gets its status before the close.
    """

    #: The client id of the stream this connection carried before a reinit.
    kept_client_id: Optional[str] = None

    def connectionMade(self) -> None:
        super().connectionMade()
        registry = self.site.registry
        registry.connections += 1
        self.number = registry.next_number()
        self.connected_at = registry.clock()
        self.site.channels.add(self)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Twisted's 16 KiB line limit: 414 for the request line, else 431."""
        if b":" in line.split(b" ", 1)[0]:
            status, reason = b"431 Request Header Fields Too Large", "header too long"
        else:
            status, reason = b"414 URI Too Long", "request line too long"
        self.site.log_rejected(self, reason)
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status
        )
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.site.connection_closed(self)
        super().connectionLost(reason)


def media_type(content_type: Optional[bytes]) -> bytes:
    """C{application/json; charset=utf-8} -> C{application/json}; none: empty."""
    return (content_type or b"").split(b";", 1)[0].strip().lower()


class SSERequest(Request):
    """
    A request on the SSE port whose body may not exceed L{MAX_BODY_BYTES}: past
    that (known from Content-Length, or counted) it gets its 413 at once and the
    rest of the body is dropped, not stored.
    """

    too_large = False
    received = 0

    def gotLength(self, length) -> None:
        if length is not None and length > MAX_BODY_BYTES:
            self._refuse()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self.received += len(data)
        if self.received > MAX_BODY_BYTES:
            self._refuse()
        else:
            super().handleContentChunk(data)

    def _refuse(self) -> None:
        self.too_large = True
        channel = self.channel
        channel.site.log_rejected(channel, "request body over 1 MiB")
        text = b"request body longer than %d bytes\n" % MAX_BODY_BYTES
        channel.transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(text), text)
        )
        expect = self.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue":
            # The peer waits for a 100 Continue before it sends the body: no
            # body is coming, and no 100 Continue must follow the 413.
            self.requestHeaders.removeHeader(b"expect")
            channel.transport.loseConnection()
        else:
            # Closing with unread data would reset the connection, and the peer
            # might lose the answer: drop the body for a while, then close.
            channel.site.reactor.callLater(
                BODY_LINGER, channel.transport.abortConnection
            )

    def requestReceived(self, command, path, version) -> None:
        if self.too_large:
            self.channel.transport.loseConnection()
            return
        super().requestReceived(command, path, version)


class SSESite(Site):
    """
    The SSE port's Site: access lines only at the C{normal} log level, and a
    clean end of every stream (final chunk, then close) when the server stops.
    """

    protocol = SSEChannel
    requestFactory = SSERequest
    displayTracebacks = False
    access_log = Logger()

    def __init__(
        self,
        resource: SSEResource,
        timeout: float = REQUEST_TIMEOUT,
        state: Optional[ServerState] = None,
    ):
        super().__init__(resource, timeout=timeout)
        self.registry = resource.registry
        self.verbosity = resource.verbosity
        self.state = state if state is not None else ServerState()
        self.channels: set = set()
        self._all_closed: list = []

    def reinit(self, stream: Stream, data: bytes) -> bool:
        """
        hasses -ra (SPEC §2.8): end the stream cleanly (final chunk) and serve
        the new request on the same connection, keeping the client id when the
        new request names none.  Only a chunked stream can carry a second
        response; C{False} when reinit is off or impossible.
        """
        subscriber = stream.subscriber
        if not (self.state.reinit and subscriber.chunked):
            return False
        transport = subscriber.transport
        subscriber.finish()
        self.state.reinits += 1
        self.stream_closed(stream)
        if self.verbosity.normal:
            self.resource.log.info(
                "subscriber <{number}> {peer} reinitialised its stream",
                number=subscriber.number,
                peer=subscriber.peer,
            )
        channel = self.buildProtocol(transport.getPeer())
        channel.kept_client_id = subscriber.client_id
        set_protocol(transport, channel)
        channel.makeConnection(transport)
        channel.dataReceived(data)
        return True

    def log(self, request) -> None:
        if self.verbosity.normal:
            line = self._logFormatter(self._logDateTime, request)
            self.access_log.info("{line}", line=line)

    def log_rejected(self, connection, reason: str) -> None:
        if self.verbosity.normal:
            self.access_log.warn(
                "connection <{number}> {peer}: {reason}",
                number=connection.number,
                peer=address_text(connection.transport.getPeer()),
                reason=reason,
            )

    def stream_opened(self, channel: SSEChannel, stream: Stream) -> None:
        """The stream takes the channel's place (see L{sseserver.stream})."""
        hand_over(channel, stream)
        self.channels.discard(channel)
        self.channels.add(stream)

    def stream_closed(self, stream: Stream) -> None:
        subscriber = stream.subscriber
        removed = self.registry.remove(subscriber)
        if removed:
            self.resource.hub.disconnected(subscriber)
        if removed and self.verbosity.normal:
            self.resource.log.info(
                "subscriber <{number}> {peer} disconnected after {messages} messages",
                number=subscriber.number,
                peer=subscriber.peer,
                messages=subscriber.messages,
            )
        self.connection_closed(stream)

    def connection_closed(self, connection) -> None:
        self.registry.connections -= 1
        self.channels.discard(connection)
        if not self.channels:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def end_all_streams(self) -> defer.Deferred:
        """End every stream with its final chunk, close every connection."""
        for subscriber in list(self.registry):
            subscriber.end()
        for connection in list(self.channels):
            connection.transport.loseConnection()
        if not self.channels:
            return defer.succeed(None)
        d = defer.Deferred()
        self._all_closed.append(d)
        return d
