"""
End-to-end tests of POST/JSON publishing on the SSE port and of the control
command C{json} (SPEC §5.5, POST part) against the real C{twistd -n sseserver}.
"""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
from conftest import END, TIMEOUT, ControlClient, Stream, fifo_write, until_marker

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def post(server, path: str, body=b"", headers=None, **kw) -> httpx.Response:
    return httpx.post(
        url(server, path), content=body, headers=headers, timeout=TIMEOUT, **kw
    )


def ids_of(blocks: list) -> list:
    return [re.match(rb"id: (\d+-\d+)\n", b)[1].decode() for b in blocks]


def received(stream: Stream) -> list:
    """The events before the END marker, as their blocks without the id line."""
    blocks = until_marker(stream)
    assert blocks[-1].endswith(b"\ndata: " + END)
    return [re.sub(rb"^id: \d+-\d+\n", b"", b) for b in blocks[:-1]]


def end(server) -> None:
    server.control(b"*=" + END + b"\n")


def raw_exchange(port: int, request: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send a request, return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                more = sock.recv(65536)
            except ConnectionResetError:
                break
            if not more:
                break
            data += more
        return data


# --- forms --------------------------------------------------------------------------------


def test_form_post_with_multi_line_data(start_server):
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse/news")
    other = Stream(server.port, "/sse/other")
    response = post(
        server,
        "/sse/news",
        b"event=update&data=line+one%0Aline%20two%0D%0Athree\rfour&id=ignored",
        FORM,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    reply = response.json()
    assert list(reply) == ["accepted", "ids", "delivered"]
    assert reply["accepted"] == 1 and reply["delivered"] == 1
    end(server)
    blocks = until_marker(stream)
    assert reply["ids"] == ids_of(blocks[:1])
    assert received(stream) == [
        b"event: update\ndata: line one\ndata: line two\ndata: three\ndata: four"
    ]
    assert received(other) == []


def test_form_defaults_and_no_content_type(start_server):
    """curl -d sends a form; a POST without a type is read as one too."""
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse")
    for body, headers in ((b"data=x", FORM), (b"data=y+z", {})):
        reply = post(server, "/sse", body, headers).json()
        assert reply["accepted"] == 1 and reply["delivered"] == 1
    end(server)
    assert received(stream) == [b"data: x", b"data: y z"]


def test_form_to_several_channels_reaches_each_subscriber_once(start_server):
    server = start_server("--http-publish")
    both = Stream(server.port, "/sse/a/b")
    one = Stream(server.port, "/sse/b")
    everything = Stream(server.port, "/sse")
    reply = post(server, "/sse/a/b", b"data=hi", FORM).json()
    assert reply["delivered"] == 3
    end(server)
    for stream in (both, one, everything):
        assert received(stream) == [b"data: hi"]


# --- JSON ---------------------------------------------------------------------------------


def test_json_object_and_list(start_server):
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse/news")
    one = post(server, "/sse/news", b'{"event": "t", "data": "a\\nb"}', JSON).json()
    many = post(
        server,
        "/sse/news",
        json.dumps([{"data": "1"}, {"data": "2", "event": "u"}, {"data": ""}]).encode(),
        {"Content-Type": "application/json; charset=utf-8"},
    ).json()
    assert one["accepted"] == 1 and one["delivered"] == 1
    assert many["accepted"] == 3 and many["delivered"] == 3
    end(server)
    blocks = until_marker(stream)
    assert ids_of(blocks[:4]) == one["ids"] + many["ids"]
    assert received(stream) == [
        b"event: t\ndata: a\ndata: b",
        b"data: 1",
        b"event: u\ndata: 2",
        b"data: ",
    ]


def test_json_targets_without_path_channels(start_server):
    server = start_server("--http-publish")
    room1 = Stream(server.port, "/sse/room1")
    other = Stream(server.port, "/sse/other")
    everything = Stream(server.port, "/sse")
    reply = post(
        server,
        "/sse",
        json.dumps(
            [
                {"target": "room*", "data": "rooms"},
                {"target": "*", "data": "all"},
                {"data": "all-channel only"},
                {"target": "other", "data": "o"},
            ]
        ).encode(),
        JSON,
    ).json()
    assert reply["accepted"] == 4
    assert reply["delivered"] == 2 + 3 + 1 + 2
    end(server)
    assert received(room1) == [b"data: rooms", b"data: all"]
    assert received(other) == [b"data: all", b"data: o"]
    assert received(everything) == [
        b"data: rooms",
        b"data: all",
        b"data: all-channel only",
        b"data: o",
    ]


def test_bad_bodies_are_400_and_publish_nothing(start_server):
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse")
    cases = [
        ("/sse/news", b'{"target": "x", "data": "d"}', JSON, "target given"),
        ("/sse", b'[{"data": "ok"}, {"data": 5}]', JSON, "data must be a string"),
        ("/sse", b'{"data": "ok", "colour": 1}', JSON, "unknown key"),
        ("/sse", b"{", JSON, "invalid JSON"),
        ("/sse", b"\xff", JSON, "invalid UTF-8"),
        ("/sse", b"[]", JSON, "empty list"),
        ("/sse", b'"text"', JSON, "object or a list"),
        ("/sse", b'{"data": "x", "event": "a\\nb"}', JSON, "control character"),
        ("/sse", b"event=x", FORM, "missing data"),
        ("/sse", b"data=1&data=2", FORM, "given twice"),
        ("/sse", b'{"data": "x"}', FORM, "Content-Type: application/json"),
        ("/sse/news?q1=go", b"data=x", FORM, "no query parameter but token"),
        ("/sse/a%01", b"data=x", FORM, "control character"),
    ]
    for path, body, headers, reason in cases:
        response = post(server, path, body, headers)
        assert response.status_code == 400, (path, body, response.text)
        assert reason in response.text, (reason, response.text)
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert re.fullmatch(r"[^\r\n]+\n", response.text)
    unsupported = post(server, "/sse", b"data=x", {"Content-Type": "text/plain"})
    assert unsupported.status_code == 415
    end(server)
    assert received(stream) == []


def test_data_over_64_kib_is_413(start_server):
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse")
    ok = {"data": "x" * 65536}
    too_big = {"data": "x" * 65537}
    response = post(server, "/sse", json.dumps([ok, too_big]).encode(), JSON)
    assert response.status_code == 413
    assert post(server, "/sse", b"data=" + b"y" * 65537, FORM).status_code == 413
    assert post(server, "/sse", json.dumps(ok).encode(), JSON).status_code == 200
    end(server)
    assert received(stream) == [b"data: " + b"x" * 65536]


# --- body size ----------------------------------------------------------------------------


def sized_json(size: int) -> bytes:
    """A JSON publish of exactly C{size} bytes (padded with spaces)."""
    body = json.dumps([{"data": "x" * 60000} for _ in range(size // 60100)]).encode()
    return body + b" " * (size - len(body))


def test_body_of_1_mib_passes_and_one_byte_more_is_413(start_server):
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse")
    exact = sized_json(1048576)
    assert len(exact) == 1048576
    reply = post(server, "/sse", exact, JSON)
    assert reply.status_code == 200 and reply.json()["accepted"] == 17
    refused = post(server, "/sse", exact + b" ", JSON)
    assert refused.status_code == 413
    assert refused.text == "request body longer than 1048576 bytes\n"
    end(server)
    assert len(received(stream)) == 17


def test_oversized_body_is_refused_before_it_is_read(start_server):
    """
    A Content-Length over 1 MiB gets its 413 at once; with Expect: 100-continue
    no body is waited for (and no 100 Continue is sent); a chunked body is
    counted as it comes.
    """
    server = start_server("--http-publish")
    stream = Stream(server.port, "/sse")
    head = (
        b"POST /sse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000000000\r\n"
    )
    started = time.monotonic()
    reply = raw_exchange(server.port, head + b"Expect: 100-continue\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413 Payload Too Large\r\n"), reply
    assert b"100 Continue" not in reply
    assert time.monotonic() - started < 2
    # without Expect, the start of the body is read and dropped, then closed
    with socket.create_connection(("127.0.0.1", server.port), TIMEOUT) as sock:
        sock.sendall(head + b"\r\n" + b"[" * 100_000)
        sock.settimeout(TIMEOUT)
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
    chunk = b"%x\r\n%s\r\n" % (100_000, b" " * 100_000)
    chunked = (
        b"POST /sse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 11 + b"0\r\n\r\n"
    )
    reply = raw_exchange(server.port, chunked)
    assert reply.startswith(b"HTTP/1.1 413 Payload Too Large\r\n"), reply[:200]
    end(server)
    assert received(stream) == []
    server.wait_for_log(r"request body over 1 MiB")


# --- access -------------------------------------------------------------------------------


def test_post_needs_http_publish(start_server):
    server = start_server()
    response = post(server, "/sse/a", b"data=x", FORM)
    assert response.status_code == 403
    assert "--http-publish" in response.text


def test_publish_token(start_server):
    server = start_server("--http-publish", "--publish-token", "s3cret")
    stream = Stream(server.port, "/sse/a")
    for headers, path in (
        ({}, "/sse/a"),
        ({"Authorization": "Bearer wrong"}, "/sse/a"),
        ({"Authorization": "Basic s3cret"}, "/sse/a"),
        ({}, "/sse/a?token=wrong"),
    ):
        response = post(server, path, b"data=no", {**FORM, **headers})
        assert response.status_code == 401, (headers, path)
        assert response.headers["www-authenticate"] == 'Bearer realm="sseserver"'
    good = [
        post(server, "/sse/a", b"data=1", {**FORM, "Authorization": "Bearer s3cret"}),
        post(server, "/sse/a?token=s3cret", b'{"data": "2"}', JSON),
    ]
    assert [r.status_code for r in good] == [200, 200]
    end(server)
    assert received(stream) == [b"data: 1", b"data: 2"]


def test_cors_on_post_and_preflight_allows_post(start_server):
    server = start_server("--http-publish", "--cors-origin", "https://a.example")
    response = post(
        server, "/sse/a", b"data=x", {**FORM, "Origin": "https://a.example"}
    )
    assert response.headers["access-control-allow-origin"] == "https://a.example"
    preflight = httpx.options(
        url(server, "/sse/a"),
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert preflight.status_code == 204
    methods = {
        m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")
    }
    assert methods == {"GET", "HEAD", "OPTIONS", "POST"}
    allowed = {
        h.strip().lower()
        for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert {"content-type", "authorization", "last-event-id"} <= allowed
    refused = httpx.request("PUT", url(server, "/sse"))
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD, OPTIONS, POST"


def test_get_publish_still_replies_ok(start_server):
    server = start_server("--http-publish")
    response = httpx.get(url(server, "/sse/a?q=x"))
    assert response.status_code == 200 and response.content == b"OK\r\n"


# --- the control command json ---------------------------------------------------------------


def test_json_control_command(start_server):
    server = start_server()
    news = Stream(server.port, "/sse/news")
    everything = Stream(server.port, "/sse")
    with ControlClient(server.control_port) as control:
        control.send(b'json {"target": "news", "event": "t", "data": "a=1\\nb=2"}\n')
        one = control.reply()
        control.send(
            b'json [{"target": "news", "data": "x"}, {"target": "*", "data": "y"}]\n'
        )
        many = control.reply()
        control.send(b"news=plain lines get no reply\n")
        control.send(b'json {"target": "news", "data": 5}\njson {\njson []\n')
        errors = [control.reply() for _ in range(3)]
        control.send(b"tcpnumberofclients\n")
        assert control.reply() == {"numberofclients": 2}  # nothing else came back
    assert list(one) == ["id", "delivered"] and one["delivered"] == 2
    assert list(many) == ["ids", "delivered"] and many["delivered"] == 4
    assert errors == [
        {"error": "data must be a string"},
        {"error": errors[1]["error"]},
        {"error": "empty list: nothing to publish"},
    ]
    assert errors[1]["error"].startswith("invalid JSON in json command: ")
    end(server)
    blocks = until_marker(news)
    assert ids_of(blocks[:3]) == [one["id"]] + many["ids"]
    assert received(news) == [
        b"event: t\ndata: a=1\ndata: b=2",
        b"data: x",
        b"data: y",
        b"data: plain lines get no reply",
    ]
    assert len(received(everything)) == 4


def test_json_on_the_fifo_publishes_without_reply(start_server, tmp_path):
    fifo = tmp_path / "sse.fifo"
    server = start_server("--fifo", str(fifo))
    stream = Stream(server.port, "/sse/a")
    mark = server.mark()
    fifo_write(
        fifo,
        b'json [{"target": "a", "data": "1\\n2"}, {"target": "a", "data": "3"}]\njson {"data": 1}\n',
    )
    end(server)
    assert received(stream) == [b"data: 1\ndata: 2", b"data: 3"]
    server.wait_for_log(r"fifo: rejected: data must be a string", start=mark)
