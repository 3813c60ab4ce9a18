"""
End-to-end tests of the SSE port over real sockets, against the real
C{twistd -n sseserver} process: URL forms (SPEC §2.1), methods and status codes
(§2.2), stream headers (§2.3), the wire encoding (§2.4), heartbeats (§2.5), CORS
(§2.6) and HTTP publishing with GET (§5.5).

"Must not receive" checks publish a later marker event and assert that exactly the
expected events arrived before it.
"""

from __future__ import annotations

import re
import socket
import time

from conftest import TIMEOUT, ControlClient, Stream, assert_events

EVENT_STREAM = "text/event-stream"
MISSING = b"GET /missing-page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


# --- helpers ----------------------------------------------------------------------------


def send(server, *lines: bytes) -> None:
    """Publish lines on one control connection; returns once the server read them."""
    server.control(b"".join(line + b"\n" for line in lines))


def fetch(port, target, method="GET", headers=None, version="HTTP/1.1", request=None):
    """A request whose response is not a stream: head plus its Content-Length body."""
    response = Stream(
        port,
        target,
        headers=headers,
        method=method,
        version=version,
        wait_open=False,
        request=request,
    )
    assert "transfer-encoding" not in response.headers, response.head
    length = int(response.headers.get("content-length", "0"))
    if length and method != "HEAD":
        response.read_until(lambda body: len(body) >= length)
    assert len(response.body) == length or method == "HEAD", response.raw
    return response


def values(response, name: str) -> list:
    """Every value of a response header, as sent (to see duplicates)."""
    found = []
    for line in response.header_lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            found.append(value.strip())
    return found


def only(response, name: str) -> str:
    found = values(response, name)
    assert len(found) == 1, (name, response.head)
    return found[0]


def cors_lines(header_lines) -> list:
    return [l for l in header_lines if l.lower().startswith("access-control-")]


def listed(value: str) -> set:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def one_line_reason(response) -> None:
    """A 4xx/5xx body: text/plain, one non-empty line."""
    assert only(response, "content-type").startswith("text/plain"), response.head
    assert re.fullmatch(rb"[^\r\n]+\n", response.body), response.body


def wire(body: bytes):
    """The body with every C{id: <id>} line's value replaced by C{*}, and the ids."""
    ids = [
        tuple(int(part) for part in match.split(b"-"))
        for match in re.findall(rb"(?m)^id: (\d+-\d+)$", body)
    ]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    return re.sub(rb"(?m)^id: \d+-\d+$", b"id: *", body), ids


def pipelined(port, first: bytes, timeout: float = TIMEOUT):
    """
    Send C{first} and then a GET of a missing page on the same connection; return
    the bytes of the first response and the head of the second.  A first response
    with a body would show as bytes after its blank line.
    """
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(first + MISSING)
        received = b""
        deadline = time.monotonic() + timeout
        while True:
            before, marker, after = received.partition(b"HTTP/1.1 404 ")
            if marker and b"\r\n\r\n" in after:
                head, _, body = after.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
                if length and len(body) >= int(length[1]):
                    return before, marker + head
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no second response: {received!r}")
            sock.settimeout(left)
            more = sock.recv(65536)
            if not more:
                raise AssertionError(f"closed: {received!r}")
            received += more


def split_head(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return status_line, lines, body


def line_values(lines: list, name: str) -> list:
    return [
        l.partition(":")[2].strip()
        for l in lines
        if l.partition(":")[0].strip().lower() == name.lower()
    ]


# --- §2.1 URL forms ------------------------------------------------------------------------


def test_path_form_subscribes_to_exactly_the_listed_channels(start_server):
    server = start_server()
    multi = Stream(server.port, "/sse/color/number/page")
    color = Stream(server.port, "/sse/color")
    other = Stream(server.port, "/sse/other")
    everything = Stream(server.port, "/sse")
    send(
        server,
        b"color=1",
        b"number=2",
        b"page=3",
        b"other=4",
        b"=5",
        b"colo=6",
        b"colorx=7",
        b"Color=8",
        b"*=end",
    )
    m = lambda data: (data, None)  # noqa: E731
    assert_events(multi.read_events(4), [m(b"1"), m(b"2"), m(b"3"), m(b"end")])
    assert_events(color.read_events(2), [m(b"1"), m(b"end")])
    assert_events(other.read_events(2), [m(b"4"), m(b"end")])
    assert_events(
        everything.read_events(9),
        [m(d) for d in (b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"end")],
    )


def test_prefix_alone_subscribes_to_all_channels(start_server):
    server = start_server()
    streams = [
        Stream(server.port, target)
        for target in (
            "/sse",
            "/sse/",
            "/sse//",
            "/sse?subscribe=*",
            "/sse?subscribe=x-*",
        )
    ]
    broadcasts_only = Stream(server.port, "/sse?subscribe=")
    send(server, b"a=1", b"b/t=2", b"=3", b"*=4", b"zz*=5")
    expected = [(b"1", None), (b"2", b"t"), (b"3", None), (b"4", None), (b"5", None)]
    for stream in streams:
        assert_events(stream.read_events(5), expected)
    assert_events(broadcasts_only.read_events(1), [(b"4", None)])


def test_subscribe_query_channels_default_dialect(start_server):
    server = start_server()
    rooms = Stream(server.port, "/sse?subscribe=room1-room2&id=u17")
    # Under the default dialect "room1-u17" is an ordinary channel name.
    dashed = Stream(server.port, "/sse/room1-u17")
    send(
        server,
        b"room1=a",
        b"room2=b",
        b"room3=c",
        b"room=d",
        b"room1-u17=e",
        b"*=end",
    )
    assert_events(rooms.read_events(3), [(b"a", None), (b"b", None), (b"end", None)])
    assert_events(dashed.read_events(2), [(b"e", None), (b"end", None)])


def test_subscribe_query_client_id_is_used_by_hasses_exclusion(start_server):
    server = start_server("--dialect", "hasses")
    u17 = Stream(server.port, "/sse?subscribe=room1-room2&id=u17")
    u18 = Stream(server.port, "/sse?subscribe=room1&id=u18")
    anonymous = Stream(server.port, "/sse?subscribe=room2")
    send(
        server,
        b"room1=a",
        b"room2=b",
        b"room3=c",
        b"room1-u17=d",
        b"*-u17=e",
        b"room2-u18=f",
        b"*=end",
    )
    m = lambda data: (data, None)  # noqa: E731
    assert_events(u17.read_events(4), [m(b"a"), m(b"b"), m(b"f"), m(b"end")])
    assert_events(u18.read_events(4), [m(b"a"), m(b"d"), m(b"e"), m(b"end")])
    assert_events(anonymous.read_events(4), [m(b"b"), m(b"e"), m(b"f"), m(b"end")])


def test_empty_subscribe_gets_only_broadcasts(start_server):
    server = start_server()
    empty = Stream(server.port, "/sse?subscribe=")
    dashes = Stream(server.port, "/sse?subscribe=--")
    send(server, b"room1=a", b"=b", b"x/t=c", b"room*=d", b"*/kind=e")
    send(server, b"room1=f", b"=g", b"*=h")
    for stream in (empty, dashes):
        assert_events(stream.read_events(2), [(b"e", b"kind"), (b"h", None)])


def test_path_segments_and_subscribe_pieces_are_percent_decoded(start_server):
    server = start_server()
    upper = Stream(server.port, "/sse/caf%C3%A9")
    lower = Stream(server.port, "/sse/caf%c3%a9")
    query = Stream(server.port, "/sse?subscribe=caf%C3%A9-a%20b")
    spaced = Stream(server.port, "/sse/a%20b")
    # The subscribe value is split on "-" before decoding: %2D is part of a name.
    dashed = Stream(server.port, "/sse?subscribe=d%2De")
    send(server, "cafe=no".encode(), "café=x".encode(), b"a b=y", b"d=no", b"e=no")
    send(server, b"d-e=z", b"*=end")
    assert_events(dashed.read_events(2), [(b"z", None), (b"end", None)])
    for stream in (upper, lower):
        assert_events(stream.read_events(2), [(b"x", None), (b"end", None)])
    assert_events(query.read_events(3), [(b"x", None), (b"y", None), (b"end", None)])
    assert_events(spaced.read_events(2), [(b"y", None), (b"end", None)])


def test_escaped_slash_in_a_path_segment_is_part_of_the_channel(start_server):
    server = start_server("--http-publish")
    slashed = Stream(server.port, "/sse/f%2Fg")
    plain = Stream(server.port, "/sse/f")
    response = fetch(server.port, "/sse/f%2Fg?message=z")
    assert (response.status, response.body) == (200, b"OK\r\n")
    send(server, b"*=end")
    assert_events(slashed.read_events(2), [(b"z", None), (b"end", None)])
    assert_events(plain.read_events(1), [(b"end", None)])


def test_plus_stays_plus_in_path_and_query(start_server):
    server = start_server()
    path = Stream(server.port, "/sse/a+b")
    query = Stream(server.port, "/sse?subscribe=c+d")
    send(server, b"a b=no1", b"a+b=yes1", b"c d=no2", b"c+d=yes2", b"*=end")
    assert_events(path.read_events(2), [(b"yes1", None), (b"end", None)])
    assert_events(query.read_events(2), [(b"yes2", None), (b"end", None)])


def test_prefix_must_end_at_a_segment_boundary(start_server):
    server = start_server()
    for target in ("/ssefoo", "/ssefoo/bar", "/sse.x", "/ssefoo?subscribe=x"):
        response = fetch(server.port, target, headers={"Accept": EVENT_STREAM})
        assert response.status == 404, (target, response.head)
        assert only(response, "content-type") != "text/event-stream; charset=utf-8"


def test_bad_channel_names_are_400_with_a_one_line_reason(start_server):
    server = start_server()
    for target in (
        "/sse/%01",
        "/sse/ok/a%0Ab",
        "/sse/%7F",
        "/sse/%00",
        "/sse/" + "a" * 257,
        "/sse/" + "%C3%A9" * 128 + "a",  # 257 bytes of UTF-8
        "/sse?subscribe=ok-%01",
        "/sse?subscribe=" + "b" * 257,
        "/sse?subscribe=ok&id=%01",
        "/sse?subscribe=ok&id=" + "c" * 257,
    ):
        response = fetch(server.port, target)
        assert response.status == 400, (target, response.head)
        one_line_reason(response)
        accepting = fetch(server.port, target, headers={"Accept": EVENT_STREAM})
        assert accepting.status == 400, (target, accepting.head)
        one_line_reason(accepting)


def test_invalid_utf8_in_a_path_segment_is_400(start_server):
    server = start_server()
    targets = ("/sse?subscribe=%FF", "/sse/%FF", "/sse/ok/%C3", "/sse/%C3%28")
    responses = {target: fetch(server.port, target) for target in targets}
    assert {t: r.status for t, r in responses.items()} == dict.fromkeys(targets, 400)
    for response in responses.values():
        one_line_reason(response)


def test_names_of_256_bytes_are_accepted(start_server):
    server = start_server()
    name = "a" * 256
    path = Stream(server.port, "/sse/" + name)
    utf8 = Stream(server.port, "/sse/" + "%C3%A9" * 128)
    query = Stream(server.port, "/sse?subscribe=" + name + "&id=" + "i" * 256)
    assert (path.status, utf8.status, query.status) == (200, 200, 200)
    send(server, name.encode() + b"=long", ("é" * 128).encode() + b"=accent")
    assert_events(path.read_events(1), [(b"long", None)])
    assert_events(query.read_events(1), [(b"long", None)])
    assert_events(utf8.read_events(1), [(b"accent", None)])


def test_at_most_256_channels_per_subscriber(start_server):
    server = start_server()
    names = [f"c{i}" for i in range(257)]
    too_many = [
        "/sse/" + "/".join(names),
        "/sse?subscribe=" + "-".join(names),
        "/sse/c0?subscribe=" + "-".join(names[1:]),
    ]
    for target in too_many:
        response = fetch(server.port, target)
        assert response.status == 400, (target, response.head)
        one_line_reason(response)
    path = Stream(server.port, "/sse/" + "/".join(names[:256]))
    query = Stream(server.port, "/sse?subscribe=" + "-".join(names[:256]))
    assert (path.status, query.status) == (200, 200)
    send(server, b"c256=no", b"c255=last", b"c0=first")
    for stream in (path, query):
        assert_events(stream.read_events(2), [(b"last", None), (b"first", None)])


def test_path_query_with_event_stream_accept_is_a_subscription(start_server):
    server = start_server()  # no --http-publish: a publish would be a 403
    everything = Stream(server.port, "/sse")
    for accept in (EVENT_STREAM, "text/html, text/event-stream;q=0.9"):
        stream = Stream(
            server.port, "/sse/color?message=first", headers={"Accept": accept}
        )
        assert stream.status == 200, stream.head
        assert only(stream, "content-type") == "text/event-stream; charset=utf-8"
        send(server, b"color=x", b"message=no", b"*=end")
        assert_events(stream.read_events(2), [(b"x", None), (b"end", None)])
    # Without the Accept header the same URL is a publish, refused here.
    publish = fetch(server.port, "/sse/color?message=first")
    assert publish.status == 403, publish.head
    send(server, b"*=marker")
    m = lambda data: (data, None)  # noqa: E731
    assert_events(
        everything.read_events(7),
        [m(b"x"), m(b"no"), m(b"end"), m(b"x"), m(b"no"), m(b"end"), m(b"marker")],
    )


# --- §2.2 methods and status codes ---------------------------------------------------------


def test_get_subscription_stays_open(start_server):
    server = start_server()
    stream = Stream(server.port, "/sse/open")
    assert stream.status == 200
    assert "content-length" not in stream.headers
    send(server, b"open=1")
    assert_events(stream.read_events(1), [(b"1", None)])
    send(server, b"open=2")
    assert_events(stream.read_events(2), [(b"1", None), (b"2", None)])
    assert not stream.closed and not stream.finished


def test_head_on_prefix_has_stream_headers_and_no_body(start_server):
    server = start_server()
    for target in (b"/sse", b"/sse/color", b"/sse?subscribe=a-b"):
        request = b"HEAD " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        first, second = pipelined(server.port, request)
        status_line, lines, body = split_head(first)
        assert status_line == "HTTP/1.1 200 OK", first
        assert body == b"", first  # the next response follows right away
        assert second.startswith(b"HTTP/1.1 404 "), second
        for line in (
            "Content-Type: text/event-stream; charset=utf-8",
            "Cache-Control: no-cache",
            "X-Accel-Buffering: no",
            "Access-Control-Allow-Origin: *",
        ):
            assert lines.count(line) == 1, (line, first)
    # A HEAD is not a subscriber.
    assert server.command(b"tcpstatus")["sseconncli"] == 0


def test_options_on_prefix_is_a_204_preflight(start_server):
    server = start_server()
    request = (
        b"OPTIONS /sse/color HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Origin: https://a.example\r\nAccess-Control-Request-Method: GET\r\n"
        b"Access-Control-Request-Headers: last-event-id\r\n\r\n"
    )
    first, second = pipelined(server.port, request)
    status_line, lines, body = split_head(first)
    assert status_line == "HTTP/1.1 204 No Content", first
    assert body == b"" and second.startswith(b"HTTP/1.1 404 "), (first, second)
    assert line_values(lines, "Access-Control-Allow-Origin") == ["*"]
    (methods,) = line_values(lines, "Access-Control-Allow-Methods")
    assert {"get", "head", "options"} <= listed(methods), methods
    (allowed,) = line_values(lines, "Access-Control-Allow-Headers")
    assert {"cache-control", "last-event-id", "x-requested-with"} <= listed(allowed)


def test_post_without_http_publish_is_403_and_publishes_nothing(start_server):
    server = start_server()
    stream = Stream(server.port, "/sse/color")
    form = b"event=message&data=nope"
    request = (
        b"POST /sse/color HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(form), form)
    )
    response = fetch(server.port, "/sse/color", method="POST", request=request)
    assert response.status == 403, response.head
    assert b"--http-publish" in response.body
    send(server, b"color=marker")
    assert_events(stream.read_events(1), [(b"marker", None)])


def test_other_methods_on_prefix_are_405_with_allow(start_server):
    server = start_server()
    for method in ("PUT", "DELETE", "PATCH"):
        for target in ("/sse", "/sse/color"):
            request = (
                f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            response = fetch(server.port, target, method=method, request=request)
            assert response.status == 405, (method, target, response.head)
            allow = only(response, "allow")
            methods = [m.strip() for m in allow.split(",")]
            assert methods[:3] == ["GET", "HEAD", "OPTIONS"], allow
            assert methods[3:] in ([], ["POST"]), allow


def test_demo_page_at_root(start_server):
    server = start_server()
    response = fetch(server.port, "/")
    assert response.status == 200, response.head
    assert only(response, "content-type").startswith("text/html")
    page = response.body
    assert b"EventSource" in page
    assert b"<script>" in page or b"<script " in page
    assert not re.search(rb"<script[^>]*\bsrc=", page), "script must be inline"
    assert b"/sse" in page


def test_no_demo_makes_root_404(start_server):
    server = start_server("--no-demo")
    assert fetch(server.port, "/").status == 404
    stream = Stream(server.port, "/sse/still")
    assert stream.status == 200
    send(server, b"still=works")
    assert_events(stream.read_events(1), [(b"works", None)])


def test_other_paths_are_404(start_server):
    server = start_server()
    for target in ("/index.html", "/favicon.ico", "/foo/sse", "/SSE", "/sse-x/y"):
        response = fetch(server.port, target)
        assert response.status == 404, (target, response.head)


def test_http_10_stream_is_unchunked_and_ends_with_the_connection(start_server):
    server = start_server()
    # HTTP/1.0 needs no Host header at all.
    stream = Stream(server.port, request=b"GET /sse/old HTTP/1.0\r\n\r\n")
    assert stream.status == 200, stream.head
    assert stream.status_line.split()[1:] == ["200", "OK"], stream.status_line
    assert "transfer-encoding" not in stream.headers and not stream.chunked
    assert only(stream, "content-type") == "text/event-stream; charset=utf-8"
    assert stream.raw == b":ok\n\n"
    send(server, b"old=hello", b"old/t=two%0Alines")
    stream.read_events(2)
    text, ids = wire(stream.raw)
    assert (
        text == b":ok\n\nid: *\ndata: hello\n\nid: *\nevent: t\ndata: two%0Alines\n\n"
    )
    assert len(ids) == 2
    server.stop()  # ends every stream
    stream.read_to_end()
    assert stream.raw == stream.body and stream.raw.endswith(b"data: two%0Alines\n\n")


def test_http_10_plain_response_closes_the_connection(start_server):
    server = start_server()
    response = fetch(server.port, "/nowhere", request=b"GET /nowhere HTTP/1.0\r\n\r\n")
    assert response.status == 404
    response.read_to_end()
    assert response.closed


def test_only_the_request_line_and_host_are_needed(start_server):
    server = start_server()
    path = Stream(
        server.port, request=b"GET /sse/min HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    hasses = Stream(
        server.port, request=b"GET /sse?subscribe=min HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    for stream in (path, hasses):
        assert stream.status_line == "HTTP/1.1 200 OK", stream.head
    send(server, b"min=1")
    for stream in (path, hasses):
        assert_events(stream.read_events(1), [(b"1", None)])


def test_max_clients_refuses_with_503_and_retry_after(start_server):
    server = start_server("--max-clients", "1")
    first = Stream(server.port, "/sse/a")
    assert first.status == 200
    for target in ("/sse/b", "/sse", "/sse?subscribe=a"):
        refused = fetch(server.port, target)
        assert refused.status == 503, (target, refused.head)
        assert re.fullmatch(r"[1-9][0-9]*", only(refused, "retry-after"))
        assert only(refused, "access-control-allow-origin") == "*"
    # Other requests are not limited, and the first subscriber still gets events.
    assert fetch(server.port, "/").status == 200
    send(server, b"a=1", b"b=2")
    assert_events(first.read_events(1), [(b"1", None)])
    first.close()
    deadline = time.monotonic() + TIMEOUT
    while True:
        again = Stream(server.port, "/sse/b", wait_open=False)
        if again.status == 200:
            break
        assert again.status == 503 and time.monotonic() < deadline, again.head
        again.close()
        time.sleep(0.05)
    again.read_until(lambda body: body == b":ok\n\n")
    send(server, b"b=3")
    assert_events(again.read_events(1), [(b"3", None)])


# --- §2.3 stream response headers ----------------------------------------------------------


def test_stream_response_head_and_first_bytes(start_server):
    server = start_server()
    stream = Stream(server.port, "/sse/head")
    assert stream.status_line == "HTTP/1.1 200 OK"
    for line in (
        "Content-Type: text/event-stream; charset=utf-8",
        "Cache-Control: no-cache",
        "X-Accel-Buffering: no",
        "Connection: keep-alive",
        "Access-Control-Allow-Origin: *",
        "Transfer-Encoding: chunked",
    ):
        assert stream.header_lines.count(line) == 1, (line, stream.head)
        assert len(values(stream, line.partition(":")[0])) == 1, stream.head
    assert "content-length" not in stream.headers
    assert stream.raw == b"5\r\n:ok\n\n\r\n"
    assert stream.body == b":ok\n\n"
    send(server, b"head=hi")
    stream.read_events(1)
    (event_id,) = re.findall(rb"id: (\d+-\d+)\n", stream.body)
    payload = b"id: " + event_id + b"\ndata: hi\n\n"
    assert (
        stream.raw == b"5\r\n:ok\n\n\r\n" + b"%x\r\n" % len(payload) + payload + b"\r\n"
    )


def test_retry_option_opens_the_stream(start_server):
    server = start_server("--retry", "2500")
    stream = Stream(server.port, "/sse/r")
    assert stream.raw == b"d\r\nretry: 2500\n\n\r\n"
    assert stream.body == b"retry: 2500\n\n"
    send(server, b"r=1")
    stream.read_until(lambda body: body.endswith(b"data: 1\n\n"))
    text, _ = wire(stream.body)
    assert text == b"retry: 2500\n\nid: *\ndata: 1\n\n"


# --- §2.4 events on the wire --------------------------------------------------------------


def test_event_encoding_is_byte_exact(start_server):
    server = start_server()
    stream = Stream(server.port, "/sse/enc")
    send(
        server,
        b"enc=hello",
        b"enc/q1=go",
        b"enc/message=explicit",
        b"enc=",
        b"enc = a=b = c ",
        "enc/ünï=☃ café".encode(),
        b"enc/t = x:y",
    )
    stream.read_events(7)
    text, ids = wire(stream.body)
    assert text == (
        b":ok\n\n"
        b"id: *\ndata: hello\n\n"
        b"id: *\nevent: q1\ndata: go\n\n"
        b"id: *\ndata: explicit\n\n"
        b"id: *\ndata: \n\n"
        b"id: *\ndata: a=b = c\n\n"
        + "id: *\nevent: ünï\ndata: ☃ café\n\n".encode()
        + b"id: *\nevent: t\ndata: x:y\n\n"
    )
    assert len(ids) == 7


def test_line_breaks_in_data_become_data_lines(start_server):
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse/ml")
    queries = [
        "message=a%0Ab%0D%0Ac%0Dd",
        "message=x%0Aevent:%20evil%0Aid:%201",
        "message=%0A%0A",
        "message=end%0D%0A",
        "message=p%0D%0A%0D%0Aretry:%201%0D%0A%0D%0A:c",
        "t=one%0D%0Atwo",
    ]
    for query in queries:
        response = fetch(server.port, "/sse/ml?" + query)
        assert (response.status, response.body) == (200, b"OK\r\n"), query
    stream.read_events(len(queries))
    text, ids = wire(stream.body)
    assert text == (
        b":ok\n\n"
        b"id: *\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        b"id: *\ndata: x\ndata: event: evil\ndata: id: 1\n\n"
        b"id: *\ndata: \ndata: \ndata: \n\n"
        b"id: *\ndata: end\ndata: \n\n"
        b"id: *\ndata: p\ndata: \ndata: retry: 1\ndata: \ndata: :c\n\n"
        b"id: *\nevent: t\ndata: one\ndata: two\n\n"
    )
    assert len(ids) == len(queries)


def test_ids_are_unique_and_increasing(start_server):
    server = start_server()
    one = Stream(server.port, "/sse/one")
    everything = Stream(server.port, "/sse")
    send(server, *[b"one=%d" % i for i in range(60)])
    send(server, *[b"two=%d" % i for i in range(30)])
    send(server, b"one=last")
    for stream, count in ((one, 61), (everything, 91)):
        events = stream.read_events(count)
        assert len(events) == count
        for block in events:
            assert re.fullmatch(rb"id: \d+-\d+\ndata: [a-z0-9]+", block), block
        _, ids = wire(stream.body)  # asserts strictly increasing
        assert len(ids) == count


def test_subscriber_of_several_matching_channels_gets_an_event_once(start_server):
    server = start_server("--http-publish")
    streams = [
        Stream(server.port, "/sse/room1/room2"),
        Stream(server.port, "/sse?subscribe=room1-room2-room1"),
        Stream(server.port, "/sse/room1/room1/room2"),
        Stream(server.port, "/sse/room1?subscribe=room2"),
    ]
    send(server, b"room*=x", b"*=y")
    response = fetch(server.port, "/sse/room1/room2?message=h")
    assert response.status == 200
    send(server, b"room1=z", b"room*=end")
    for stream in streams:
        assert_events(
            stream.read_events(5),
            [(b"x", None), (b"y", None), (b"h", None), (b"z", None), (b"end", None)],
        )


# --- §2.5 heartbeat ---------------------------------------------------------------------


def test_heartbeat_reaches_idle_streams_only(start_server):
    server = start_server("--heartbeat", "1")
    idle = Stream(server.port, "/sse/idle")
    idle.read_until(lambda body: b"\n\n:\n\n" in body, timeout=2.5)
    assert idle.body.startswith(b":ok\n\n:\n\n")
    assert b"3\r\n:\n\n\r\n" in idle.raw

    busy = Stream(server.port, "/sse/busy")
    with ControlClient(server.control_port) as control:
        for i in range(11):
            control.send(b"busy=%d\n" % i)
            time.sleep(0.3)  # pacing only: an event at least every 0.3 s
        control.send(b"busy=end\n")
    busy.read_events(12)
    blocks = busy.events()
    first_event = next(i for i, b in enumerate(blocks) if not b.startswith(b":"))
    assert [b for b in blocks[first_event:] if b.startswith(b":")] == [], blocks
    # Meanwhile the idle stream kept getting nothing but heartbeats.
    idle.read_until(lambda body: body.count(b":\n\n") >= 3)
    assert re.fullmatch(rb":ok\n\n(:\n\n)+", idle.body), idle.body


def test_no_heartbeat_right_after_the_stream_opened(start_server):
    """
    The opening comment is a write: a stream opened shortly before a heartbeat
    tick was not idle for a whole interval and gets no heartbeat at that tick.
    """
    server = start_server("--heartbeat", "2")
    clock = Stream(server.port, "/sse/clock")
    clock.read_until(lambda body: body.count(b":\n\n") >= 1, timeout=5)  # a tick
    time.sleep(1.2)  # pacing: open the next stream between two ticks
    fresh = Stream(server.port, "/sse/fresh")
    clock.read_until(lambda body: body.count(b":\n\n") >= 2, timeout=5)  # next tick
    send(server, b"*=marker")
    fresh.read_events(1)
    text, _ = wire(fresh.body)
    assert text == b":ok\n\nid: *\ndata: marker\n\n"


# --- §2.6 CORS ------------------------------------------------------------------------------


def test_cors_default_is_star_on_every_prefix_response(start_server):
    server = start_server()
    origin = {"Origin": "https://x.example"}
    stream = Stream(server.port, "/sse/c", headers=origin)
    responses = [
        stream,
        Stream(server.port, "/sse/c"),
        fetch(server.port, "/sse/%01", headers=origin),  # 400
        fetch(server.port, "/sse/c?message=x", headers=origin),  # 403
        fetch(server.port, "/sse", method="DELETE", headers=origin),  # 405
        fetch(server.port, "/sse", method="HEAD", headers=origin),
        fetch(server.port, "/sse", method="OPTIONS", headers=origin),
    ]
    for response in responses:
        assert cors_lines(response.header_lines)[:1] == [
            "Access-Control-Allow-Origin: *"
        ], response.head
        assert values(response, "access-control-allow-credentials") == [], response.head


def test_cors_origin_list_echoes_listed_origins(start_server):
    server = start_server(
        "--cors-origin", "https://a.example", "--cors-origin", "https://b.example"
    )
    for origin in ("https://a.example", "https://b.example"):
        for response in (
            Stream(server.port, "/sse/c", headers={"Origin": origin}),
            fetch(server.port, "/sse/%01", headers={"Origin": origin}),
            fetch(server.port, "/sse", method="HEAD", headers={"Origin": origin}),
        ):
            lines = response.header_lines
            assert lines.count(f"Access-Control-Allow-Origin: {origin}") == 1, lines
            assert lines.count("Access-Control-Allow-Credentials: true") == 1, lines
            assert values(response, "vary") == ["Origin"], lines
            assert len(values(response, "access-control-allow-origin")) == 1


def test_cors_origin_list_gives_no_cors_headers_to_others(start_server):
    server = start_server(
        "--cors-origin", "https://a.example", "--cors-origin", "https://b.example"
    )
    streams = []
    for headers in (
        {"Origin": "https://c.example"},
        {"Origin": "https://b.example.evil"},
        {"Origin": "null"},
        {},
    ):
        stream = Stream(server.port, "/sse/c", headers=headers)
        assert stream.status == 200
        assert cors_lines(stream.header_lines) == [], stream.head
        streams.append(stream)
        refused = fetch(server.port, "/sse/%01", headers=headers)
        assert refused.status == 400
        assert cors_lines(refused.header_lines) == [], refused.head
    send(server, b"c=still served")
    for stream in streams:
        assert_events(stream.read_events(1), [(b"still served", None)])


def test_cors_preflight_for_a_listed_origin(start_server):
    server = start_server(
        "--cors-origin", "https://a.example", "--cors-origin", "https://b.example"
    )
    response = fetch(
        server.port,
        "/sse/c",
        method="OPTIONS",
        headers={
            "Origin": "https://b.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "last-event-id, cache-control",
        },
    )
    assert response.status == 204
    lines = response.header_lines
    assert lines.count("Access-Control-Allow-Origin: https://b.example") == 1, lines
    assert lines.count("Access-Control-Allow-Credentials: true") == 1, lines
    assert values(response, "vary") == ["Origin"]
    assert {"get", "head", "options"} <= listed(
        only(response, "access-control-allow-methods")
    )
    assert {"cache-control", "last-event-id", "x-requested-with"} <= listed(
        only(response, "access-control-allow-headers")
    )


def test_cors_preflight_for_an_unlisted_origin_has_no_cors_headers(start_server):
    server = start_server("--cors-origin", "https://a.example")
    for headers in ({"Origin": "https://c.example"}, {}):
        response = fetch(
            server.port,
            "/sse/c",
            method="OPTIONS",
            headers={**headers, "Access-Control-Request-Method": "GET"},
        )
        assert response.status == 204
        assert cors_lines(response.header_lines) == [], response.head


# --- §5.5 HTTP publish (GET) -----------------------------------------------------------------


def test_http_publish_to_the_path_channels(start_server):
    server = start_server("--http-publish")
    both = Stream(server.port, "/sse/color/page")
    color = Stream(server.port, "/sse/color")
    page = Stream(server.port, "/sse/page")
    everything = Stream(server.port, "/sse")
    other = Stream(server.port, "/sse/other")
    broadcasts = Stream(server.port, "/sse?subscribe=")
    response = fetch(server.port, "/sse/color/page?q1=go&q2=end")
    assert response.status_line == "HTTP/1.1 200 OK"
    assert only(response, "content-type") == "text/plain"
    assert response.body == b"OK\r\n"
    assert only(response, "content-length") == "4"
    send(server, b"*=marker")
    for stream in (both, color, page, everything):
        assert_events(
            stream.read_events(3), [(b"go", b"q1"), (b"end", b"q2"), (b"marker", None)]
        )
    for stream in (other, broadcasts):
        assert_events(stream.read_events(1), [(b"marker", None)])


def test_http_publish_parameters(start_server):
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse/p")
    for query in (
        "a=1;b=2&a=3",
        "message=x+y",
        "my%20type=caf%C3%A9",
        "message=",
        "message=a=b",
        "message=1&message=1",
        "t" * 256 + "=long",
    ):
        response = fetch(server.port, "/sse/p?" + query)
        assert (response.status, response.body) == (200, b"OK\r\n"), query
    events = stream.read_events(10)
    assert_events(
        events,
        [
            (b"1", b"a"),
            (b"2", b"b"),
            (b"3", b"a"),
            (b"x+y", None),
            ("café".encode(), b"my type"),
            (b"", None),
            (b"a=b", None),
            (b"1", None),
            (b"1", None),
            (b"long", b"t" * 256),
        ],
    )


def test_http_publish_without_channel_reaches_all_channel_subscribers_only(
    start_server,
):
    server = start_server("--http-publish")
    everything = Stream(server.port, "/sse")
    star = Stream(server.port, "/sse?subscribe=*")
    color = Stream(server.port, "/sse/color")
    broadcasts = Stream(server.port, "/sse?subscribe=")
    for target in ("/sse?message=x", "/sse/?t=y"):
        response = fetch(server.port, target)
        assert (response.status, response.body) == (200, b"OK\r\n"), target
    send(server, b"*=marker")
    for stream in (everything, star):
        assert_events(
            stream.read_events(3), [(b"x", None), (b"y", b"t"), (b"marker", None)]
        )
    for stream in (color, broadcasts):
        assert_events(stream.read_events(1), [(b"marker", None)])


def test_http_publish_with_only_an_id_parameter_is_a_publish(start_server):
    """
    SPEC §2.1: a query on a path-form URL is a publish unless the request
    carries Accept: text/event-stream; "id" is then an ordinary event type.
    """
    server = start_server("--http-publish")
    color = Stream(server.port, "/sse/color")
    response = Stream(server.port, "/sse/color?id=5", wait_open=False)
    assert response.status == 200, response.head
    assert only(response, "content-type") == "text/plain", "served as a subscription"
    response.read_until(lambda body: len(body) >= 4)
    assert response.body == b"OK\r\n"
    send(server, b"*=marker")
    assert_events(color.read_events(2), [(b"5", b"id"), (b"marker", None)])


def test_http_publish_is_off_by_default(start_server):
    server = start_server()
    everything = Stream(server.port, "/sse")
    color = Stream(server.port, "/sse/color")
    for target in ("/sse/color?message=nope", "/sse?message=nope", "/sse/color?status"):
        response = fetch(server.port, target)
        assert response.status == 403, (target, response.head)
        assert b"--http-publish" in response.body, response.body
    send(server, b"*=marker")
    for stream in (everything, color):
        assert_events(stream.read_events(1), [(b"marker", None)])


def test_http_publish_token(start_server):
    server = start_server("--http-publish", "--publish-token", "s3cret")
    stream = Stream(server.port, "/sse/tok")  # subscribing needs no token
    everything = Stream(server.port, "/sse")
    refused = [
        ("/sse/tok?message=a", {}),
        ("/sse/tok?message=a", {"Authorization": "Bearer wrong"}),
        ("/sse/tok?message=a", {"Authorization": "Bearer s3cre"}),
        ("/sse/tok?message=a", {"Authorization": "Basic czNjcmV0"}),
        ("/sse/tok?message=a&token=wrong", {}),
        ("/sse/tok?token=s3cre&message=a", {}),
    ]
    for target, headers in refused:
        response = fetch(server.port, target, headers=headers)
        assert response.status == 401, (target, headers, response.head)
    accepted = [
        ("/sse/tok?message=b", {"Authorization": "Bearer s3cret"}),
        ("/sse/tok?token=s3cret&message=c", {}),
        ("/sse/tok?t=d&token=s3cret", {}),
    ]
    for target, headers in accepted:
        response = fetch(server.port, target, headers=headers)
        assert (response.status, response.body) == (200, b"OK\r\n"), target
    send(server, b"*=marker")
    expected = [(b"b", None), (b"c", None), (b"d", b"t"), (b"marker", None)]
    for subscriber in (stream, everything):
        assert_events(subscriber.read_events(4), expected)
        assert b"s3cret" not in subscriber.body and b"token" not in subscriber.body


def test_http_publish_with_a_bad_part_publishes_nothing(start_server):
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse/bt")
    everything = Stream(server.port, "/sse")
    for query in (
        "ok=1&bad%0Atype=2&ok2=3",
        "ok=1&bad%0Dtype=2",
        "ok=1&bad%0D%0Atype=2",
        "ok=1&bad%00type=2",
        "ok=1&" + "t" * 257 + "=2",
        "ok=1&=2",
        "ok=1&%FF=2",
        "ok=1&message=%FF",
    ):
        response = fetch(server.port, "/sse/bt?" + query)
        assert response.status == 400, (query, response.head)
        one_line_reason(response)
    response = fetch(server.port, "/sse/bt/b%01?message=x")
    assert response.status == 400
    send(server, b"*=marker")
    for subscriber in (stream, everything):
        assert_events(subscriber.read_events(1), [(b"marker", None)])


def test_http_commands_need_allow_commands(start_server):
    plain = start_server("--http-publish")
    stream = Stream(plain.port, "/sse/cmd")
    for target in ("/sse?status", "/sse/cmd?message=x&status", "/sse/cmd?status&t=y"):
        response = fetch(plain.port, target)
        assert response.status == 403, (target, response.head)
    send(plain, b"cmd=marker")
    assert_events(stream.read_events(1), [(b"marker", None)])

    no_publish = start_server("--allow-commands")
    response = fetch(no_publish.port, "/sse?status")
    assert response.status == 403, response.head

    allowed = start_server("--http-publish", "--allow-commands")
    stream = Stream(allowed.port, "/sse/cmd")
    mark = allowed.mark()
    response = fetch(allowed.port, "/sse/cmd?message=x&status")
    assert (response.status, response.body) == (200, b"OK\r\n")
    allowed.wait_for_log(r"------- status of sseserver -------", start=mark)
    send(allowed, b"cmd=marker")
    assert_events(stream.read_events(2), [(b"x", None), (b"marker", None)])
