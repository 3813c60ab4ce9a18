"""
End-to-end tests with an independent SSE client library (httpx + httpx-sse)
against the real C{twistd -n sseserver} process: what a consumer's parser makes
of the stream (SPEC §2.3, §2.4).

Every read has a timeout and the servers run without heartbeats, so a missing
event fails the test with a read timeout instead of hanging it.
"""

from __future__ import annotations

import re
import threading

import httpx
from conftest import TIMEOUT, Stream, assert_events
from httpx_sse import connect_sse

ID = re.compile(r"[0-9]+-[0-9]+")
MAX_EVENTS = 50


def client() -> httpx.Client:
    # trust_env=False: never go through a proxy from the environment.
    return httpx.Client(timeout=httpx.Timeout(TIMEOUT), trust_env=False)


def collect(source, last_type: str = "done") -> list:
    """Events until one of type C{last_type}; bounded, and every read times out."""
    events = []
    for sse in source.iter_sse():
        events.append(sse)
        if sse.event == last_type or len(events) >= MAX_EVENTS:
            break
    return events


def id_key(event_id: str) -> tuple:
    assert ID.fullmatch(event_id), event_id
    return tuple(int(part) for part in event_id.split("-"))


def assert_increasing(ids: list) -> None:
    keys = [id_key(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), ids


def test_library_sees_types_multiline_data_unicode_and_ids(start_server):
    server = start_server("--http-publish", "--heartbeat", "0")
    base = f"http://127.0.0.1:{server.port}"
    with client() as http:
        with connect_sse(http, "GET", base + "/sse/lib") as source:
            response = source.response
            assert response.status_code == 200
            assert (
                response.headers["content-type"] == "text/event-stream; charset=utf-8"
            )
            assert response.headers["cache-control"] == "no-cache"
            server.control(
                "lib=plain\nlib/q1=go\nlib/ünï=☃ snow ü\nlib=\nother=skip\n"
                "lib = a=b \n".encode("utf-8")
            )
            for query in (
                "message=line1%0Aline2%0D%0Aline3%0Dline4",
                "message=x%0Aevent:%20evil%0Aid:%201%0Aretry:%201",
                "t%C3%BF=caf%C3%A9%0A%0A",
            ):
                published = http.get(base + "/sse/lib?" + query)
                assert published.status_code == 200
                assert published.text == "OK\r\n"
            server.control(b"lib/done=end\n")
            events = collect(source)
    assert [(e.event, e.data) for e in events] == [
        ("message", "plain"),
        ("q1", "go"),
        ("ünï", "☃ snow ü"),
        ("message", ""),
        ("message", "a=b"),
        ("message", "line1\nline2\nline3\nline4"),
        ("message", "x\nevent: evil\nid: 1\nretry: 1"),
        ("tÿ", "café\n\n"),
        ("done", "end"),
    ]
    assert all(e.retry is None for e in events)
    assert_increasing([e.id for e in events])


def test_library_with_retry_and_two_subscribers(start_server):
    server = start_server("--retry", "2500", "--heartbeat", "0")
    base = f"http://127.0.0.1:{server.port}"
    targets = {"rooms": "/sse?subscribe=a-b", "everything": "/sse"}
    connected = {name: threading.Event() for name in targets}
    results: dict = {}
    errors: list = []

    def subscribe(name: str) -> None:
        try:
            with client() as http:
                with connect_sse(http, "GET", base + targets[name]) as source:
                    assert source.response.status_code == 200
                    connected[name].set()
                    results[name] = collect(source)
        except BaseException as error:  # reported by the main thread
            errors.append((name, error))
            connected[name].set()

    threads = [
        threading.Thread(target=subscribe, args=(name,), daemon=True)
        for name in targets
    ]
    for thread in threads:
        thread.start()
    for name, event in connected.items():
        assert event.wait(TIMEOUT), f"{name} never connected"
    assert errors == []
    server.control(b"a=1\nb/t=2\nc=3\n=4\n*/done=end\n")
    for thread in threads:
        thread.join(TIMEOUT + 5)
        assert not thread.is_alive(), "a subscriber did not finish"
    assert errors == []

    rooms, everything = results["rooms"], results["everything"]
    for events in (rooms, everything):
        # The stream opens with "retry: 2500": the library reports it (no data, no id).
        first = events[0]
        assert (first.retry, first.data, first.id, first.event) == (
            2500,
            "",
            "",
            "message",
        )
        assert all(e.retry is None for e in events[1:])
    assert [(e.event, e.data) for e in rooms[1:]] == [
        ("message", "1"),
        ("t", "2"),
        ("done", "end"),
    ]
    assert [(e.event, e.data) for e in everything[1:]] == [
        ("message", "1"),
        ("t", "2"),
        ("message", "3"),
        ("message", "4"),
        ("done", "end"),
    ]
    assert_increasing([e.id for e in everything[1:]])
    # One event, one id: both subscribers see the same ids.
    shared = {e.data: e.id for e in everything[1:]}
    assert [e.id for e in rooms[1:]] == [shared["1"], shared["2"], shared["end"]]


def test_library_subscribes_on_a_path_with_a_query(start_server):
    """The library sends Accept: text/event-stream, so a query is no publish."""
    server = start_server("--http-publish", "--heartbeat", "0")
    watcher = Stream(server.port, "/sse")
    url = f"http://127.0.0.1:{server.port}/sse/color?message=first&id=u1"
    with client() as http:
        with connect_sse(http, "GET", url) as source:
            assert source.response.status_code == 200
            server.control(b"color=x\nnumber=y\n*/done=end\n")
            events = collect(source)
    assert [(e.event, e.data) for e in events] == [("message", "x"), ("done", "end")]
    assert_increasing([e.id for e in events])
    assert_events(
        watcher.read_events(3), [(b"x", None), (b"y", None), (b"end", b"done")]
    )
