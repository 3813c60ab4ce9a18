"""
An independent EventSource implementation against the real server: the npm
package C{eventsource} (pinned in C{tests/node/package-lock.json}, installed
with C{npm ci} into the git-ignored C{tests/node/node_modules}) run by the
machine's Node.  C{tests/node/listen.js} prints one JSON line per event; the
lines must be exactly what was published, with the server's ids.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import shutil
import subprocess
import threading
import time
import urllib.parse

import pytest
from conftest import ROOT, TIMEOUT, Stream, assert_events
from forwarding import Forwarder

NODE_DIR = ROOT / "tests" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="needs Node.js and npm"
)


def _installed() -> bool:
    """Every package of the lock file is in node_modules, at its version."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    for path, entry in lock["packages"].items():
        if not path:
            continue
        manifest = NODE_DIR / path / "package.json"
        if not manifest.exists():
            return False
        if json.loads(manifest.read_text())["version"] != entry["version"]:
            return False
    return True


@pytest.fixture(scope="session")
def node_modules():
    """The pinned packages, installed once (again only when the lock changes)."""
    if not _installed():
        result = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert _installed()
    return NODE_DIR / "node_modules"


class NodeListener:
    """C{node listen.js URL TYPE...}; its JSON lines, read by a thread."""

    def __init__(self, url: str, types: list):
        self.process = subprocess.Popen(
            [NODE, str(NODE_DIR / "listen.js"), url, *types],
            cwd=NODE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.process.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def next(self, count: int = 1) -> list:
        """The next C{count} lines."""
        deadline = time.monotonic() + TIMEOUT
        got = []
        while len(got) < count:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"only {got} from node") from None
            assert line is not None, (got, self.process.stderr.read().decode())
            got.append(line)
        return got

    def assert_quiet(self) -> None:
        """Nothing more was printed so far."""
        assert self.lines.empty(), self.lines.get()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def listeners(node_modules):
    """Start Node listeners; each is killed after the test."""
    started = []

    def start(url: str, types: list) -> NodeListener:
        started.append(NodeListener(url, types))
        return started[-1]

    yield start
    for listener in started:
        listener.kill()
    assert all(listener.process.returncode is not None for listener in started)


@pytest.fixture
def forwarders():
    with contextlib.ExitStack() as stack:
        yield lambda upstream: stack.enter_context(Forwarder(upstream))


def post(port: int, path: str, body: bytes, content_type: str) -> dict:
    """An HTTP POST publish; its JSON reply."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("POST", path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        reply = response.read()
        assert response.status == 200, (response.status, reply)
        return json.loads(reply)
    finally:
        connection.close()


def event(type_: str, data: str, event_id: str) -> dict:
    return {"type": type_, "data": data, "lastEventId": event_id}


TYPES = ["message", "update", "empty", "sseserver-gap"]


def test_npm_eventsource_receives_exactly_what_was_published(start_server, listeners):
    server = start_server("--http-publish")
    url = f"http://127.0.0.1:{server.port}/sse/news"
    node = listeners(url, TYPES)
    assert node.next() == [{"open": url}]
    raw = Stream(server.port, "/sse/news")
    server.wait_subscribed("news", 2)

    server.control(
        b"news = hello\n"
        + "news/update = d\u00e9j\u00e0 vu \u2603 \U0001f600\n".encode("utf-8")
        + b"other = not for news\n"
        + b"news = a = b = c\n"
        + b"news/empty =\n"
        + b"news = two\rlines\n"
    )
    # Multi-line data over HTTP: a form (CRLF, LF and CR all break lines; '+'
    # is a space) and JSON.
    form = post(
        server.port,
        "/sse/news",
        urllib.parse.urlencode(
            {"event": "update", "data": "line 1\nline 2\r\nline\r3 +\u00e9"}
        ).encode(),
        "application/x-www-form-urlencoded",
    )
    document = post(
        server.port,
        "/sse",
        json.dumps(
            [
                {"target": "news", "data": "json \u2603\n\nafter a blank line"},
                {"target": "news", "event": "update", "data": ""},
            ]
        ).encode(),
        "application/json",
    )
    assert (form["accepted"], form["delivered"]) == (1, 2)
    assert (document["accepted"], document["delivered"]) == (2, 4)
    server.control(b"* = END\n")

    expected = [
        ("message", "hello"),
        ("update", "d\u00e9j\u00e0 vu \u2603 \U0001f600"),
        ("message", "a = b = c"),
        ("empty", ""),
        ("message", "two\nlines"),
        ("update", "line 1\nline 2\nline\n3 +\u00e9"),
        ("message", "json \u2603\n\nafter a blank line"),
        ("update", ""),
        ("message", "END"),
    ]
    # The raw subscriber gives the ids (and checks the wire format).
    ids = assert_events(
        raw.read_events(len(expected)),
        [
            (d.encode("utf-8"), None if t == "message" else t.encode())
            for t, d in expected
        ],
    )
    ids = [f"{ms}-{seq}" for ms, seq in ids]
    assert ids[5:8] == form["ids"] + document["ids"]
    assert node.next(len(expected)) == [
        event(t, d, i) for (t, d), i in zip(expected, ids)
    ]
    node.assert_quiet()
    raw.close()


def test_npm_eventsource_reconnects_and_replays_what_it_missed(
    start_server, listeners, forwarders
):
    server = start_server("--retry", "200")
    forwarder = forwarders(server.port)
    url = f"http://127.0.0.1:{forwarder.port}/sse/news"
    node = listeners(url, TYPES)
    assert node.next() == [{"open": url}]
    server.wait_subscribed("news", 1)
    server.control(b"news = one\nnews/update = two\n")
    before = node.next(2)
    assert [(e["type"], e["data"]) for e in before] == [
        ("message", "one"),
        ("update", "two"),
    ]

    forwarder.hold()
    assert forwarder.cut() == 1
    (error,) = node.next()
    # (the message is undici's, e.g. "TypeError: terminated: other side closed")
    assert error.keys() == {"error", "readyState"}
    assert error["readyState"] == 0  # CONNECTING: it will reconnect
    forwarder.wait_pending(1)
    server.wait_subscribed("news", 0)
    server.control("news = missed \u2603\nnews/empty =\nnews = missed 3\n".encode())
    node.assert_quiet()
    forwarder.release()
    assert node.next() == [{"open": url}]
    server.control(b"news = live\n")
    replayed = node.next(4)
    assert [(e["type"], e["data"]) for e in replayed] == [
        ("message", "missed \u2603"),
        ("empty", ""),
        ("message", "missed 3"),
        ("message", "live"),
    ]
    seen = [e["lastEventId"] for e in before + replayed]
    assert sorted(set(seen), key=lambda i: tuple(map(int, i.split("-")))) == seen
    node.assert_quiet()
    requests = forwarder.requests("/sse/news")
    assert len(requests) == 2, requests
    assert "last-event-id" not in requests[0]
    assert requests[1]["last-event-id"] == before[-1]["lastEventId"]
