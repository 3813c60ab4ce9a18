"""
A real browser against the real server: headless Chromium (Debian's
C{chromium}, installed by C{.ci/run}) loads the demo page served by
C{twistd -n sseserver}, and its own C{EventSource} receives what is published
through the control port and the FIFO.  The test drives Chromium through the
DevTools protocol (C{websocket-client}); cross-origin pages come from a small
C{http.server} on another loopback port.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import websocket  # websocket-client: the DevTools protocol
from conftest import TIMEOUT, Stream, assert_events, until_marker

#: Debian's chromium, installed by .ci/run.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

EVENT_ID = r"\d+-\d+"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Page:
    """One browser tab, spoken to over its DevTools websocket."""

    def __init__(self, url: str):
        self.ws = websocket.create_connection(
            url, timeout=TIMEOUT, suppress_origin=True
        )
        self.ids = itertools.count(1)
        self.events: list = []

    def call(self, method: str, **params):
        number = next(self.ids)
        self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == number:
                assert "error" not in message, message
                return message["result"]
            self.events.append(message)

    def eval(self, expression: str):
        result = self.call(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = TIMEOUT):
        """Poll C{expression} until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expression!r} still false; page log: {self.eval('window.__log || null')}"
                )
            time.sleep(0.05)

    def close(self) -> None:
        self.ws.close()


class Browser:
    """A headless Chromium with its own profile, killed (whole session) at close."""

    def __init__(self, workdir: Path):
        self.profile = workdir / "chromium-profile"
        self.profile.mkdir()
        self.stderr = open(workdir / "chromium.log", "wb")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            start_new_session=True,
        )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (active.exists() and len(active.read_text().split()) == 2):
            assert self.process.poll() is None, (workdir / "chromium.log").read_text()
            assert time.monotonic() < deadline, "Chromium did not open DevTools"
            time.sleep(0.05)
        self.devtools = int(active.read_text().split()[0])
        self.pages: list = []

    def open(self, url: str) -> Page:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.devtools}/json/new?{url}", method="PUT"
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            target = json.load(response)
        page = Page(target["webSocketDebuggerUrl"])
        self.pages.append(page)
        return page

    def close(self) -> None:
        for page in self.pages:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                page.close()
        session = self.process.pid
        if self.process.poll() is None:
            os.killpg(session, signal.SIGKILL)
        self.process.wait(TIMEOUT)
        # Helpers that left the process group but stayed in the session.
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:  # the session id
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.stderr.close()


@pytest.fixture
def browser(tmp_path):
    chromium = Browser(tmp_path)
    yield chromium
    chromium.close()


#: Collects every event of the demo page's EventSource (global C{source}).
LISTEN = """
(() => {
  window.__got = [];
  for (const type of %s) {
    source.addEventListener(type, (e) => {
      window.__got.push({type: e.type, data: e.data, id: e.lastEventId,
                         origin: e.origin});
    });
  }
  return true;
})()
"""

TYPES = json.dumps(["message", "update", "empty", "sseserver-gap"])


def connected(page: Page, what: str) -> None:
    # (a new tab is about:blank until the page has loaded)
    page.wait(
        "(() => { const state = document.getElementById('state');"
        " return state !== null && state.textContent === "
        + json.dumps(f"connected to {what}")
        + " && typeof source === 'object' && source.readyState === 1; })()"
    )


def got(page: Page, count: int) -> list:
    return page.wait(f"window.__got.length >= {count} && window.__got")


def test_demo_page_receives_control_and_fifo_events(start_server, browser, tmp_path):
    fifo = tmp_path / "sse.fifo"
    port = free_port()
    server = start_server(
        "--port",
        f"tcp:{port}:interface=127.0.0.1",
        "--fifo",
        str(fifo),
        "--retry",
        "300",
    )
    origin = f"http://127.0.0.1:{port}"
    page = browser.open(origin + "/")
    assert page.wait("document.readyState === 'complete' && document.title") == (
        "sseserver demo"
    )
    connected(page, "demo")
    page.eval(LISTEN % TYPES)
    # A raw subscriber of the same channel sees the same events, with the same ids.
    raw = Stream(server.port, "/sse/demo")
    assert server.command(b"tcpsubscribedclients:demo") == {
        "subscribedclients": 2,
        "subscribedfor": "demo",
    }

    server.control(
        b"demo = hello\n"
        + "demo = d\u00e9j\u00e0 vu \u2603\n".encode("utf-8")
        + b"demo/update = two\rlines\n"
        + b"other = not for the page\n"
        + b"demo = a = b = c\n"
        + b"demo/empty =\n"
    )
    with open(fifo, "wb") as pipe:
        pipe.write(b"demo = from the fifo\n* = END\n")
    expected = [
        ("message", "hello"),
        ("message", "d\u00e9j\u00e0 vu \u2603"),
        ("update", "two\nlines"),
        ("message", "a = b = c"),
        ("empty", ""),
        ("message", "from the fifo"),
        ("message", "END"),
    ]
    seen = got(page, len(expected))
    assert [(e["type"], e["data"]) for e in seen] == expected
    assert {e["origin"] for e in seen} == {origin}
    ids = assert_events(
        until_marker(raw),
        [
            (d.encode("utf-8"), None if t == "message" else t.encode())
            for t, d in expected
        ],
    )
    assert [e["id"] for e in seen] == [f"{ms}-{seq}" for ms, seq in ids]
    # The page's own rendering of "message" events, newest first.
    shown = page.eval(
        "Array.from(document.querySelectorAll('#events div'), d => d.textContent)"
    )
    assert shown == [
        f"[{e['id']}] message: {e['data']}"
        for e in reversed(seen)
        if e["type"] == "message"
    ]

    # The form switches the subscription: a new EventSource on two channels.
    page.eval(
        "document.getElementById('channels').value = 'room 1/other';"
        "document.querySelector('#form button').click(); true"
    )
    connected(page, "room%201/other")
    assert page.eval("source.url") == origin + "/sse/room%201/other"
    page.eval(LISTEN % TYPES)
    server.control(b"demo = no longer\nroom 1 = r\nother/update = o\n")
    seen = got(page, 2)
    assert [(e["type"], e["data"]) for e in seen] == [("message", "r"), ("update", "o")]
    raw.close()


def test_browser_reconnects_after_the_server_restarts(start_server, browser):
    port = free_port()
    args = ("--port", f"tcp:{port}:interface=127.0.0.1", "--retry", "200")
    first = start_server(*args)
    page = browser.open(f"http://127.0.0.1:{port}/")
    connected(page, "demo")
    page.eval(LISTEN % TYPES)
    page.call("Network.enable")
    first.control(b"demo = before\n")
    (before,) = got(page, 1)
    assert before["data"] == "before"

    first.stop()  # SIGTERM: the stream ends cleanly
    page.wait("source.readyState === 0")  # CONNECTING
    second = start_server(*args)
    page.wait("source.readyState === 1")
    second.control(b"demo = after\n")
    seen = got(page, 2)
    assert [e["data"] for e in seen] == ["before", "after"]
    assert re.fullmatch(EVENT_ID, seen[1]["id"])
    # The reconnection told the server the last id it had seen.
    page.call("Runtime.evaluate", expression="1")  # flush pending DevTools events
    sent = [
        {k.lower(): v for k, v in e["params"]["headers"].items()}
        for e in page.events
        if e.get("method") == "Network.requestWillBeSentExtraInfo"
    ]
    assert any(h.get("last-event-id") == before["id"] for h in sent), sent


class _Pages(http.server.BaseHTTPRequestHandler):
    """Serves one page that opens an EventSource on C{self.server.target}."""

    def do_GET(self):
        body = (
            b"<!DOCTYPE html><meta charset=utf-8><title>cross</title><script>"
            b"window.__log = [];"
            b"window.open_source = function (url, credentials) {"
            b"  return new Promise(function (resolve) {"
            b"    var s = new EventSource(url, {withCredentials: credentials});"
            b"    s.onmessage = function (e) { s.close(); resolve('message:' + e.data); };"
            b"    s.onerror = function () {"
            b"      if (s.readyState === 2) { resolve('refused'); }"
            b"    };"
            b"    window.__sources = (window.__sources || []).concat([s]);"
            b"  });"
            b"};"
            b"</script>"
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def page_servers():
    """Two page servers on other loopback ports: two other origins."""
    servers = []
    for _ in range(2):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def cross_origin(page: Page, server, url: str, credentials: bool) -> str:
    """Open an EventSource from the page; publish until it answers."""
    page.eval(
        f"window.__result = null; open_source({json.dumps(url)}, "
        f"{json.dumps(credentials)}).then(r => window.__result = r); true"
    )
    deadline = time.monotonic() + TIMEOUT
    while True:
        server.control(b"cors = ping\n")
        result = page.eval("window.__result")
        if result:
            return result
        assert time.monotonic() < deadline, "no answer from the EventSource"
        time.sleep(0.1)


def test_cors_rules_in_the_browser(start_server, browser, page_servers):
    allowed, other = page_servers
    listed = start_server("--cors-origin", allowed)
    anyone = start_server()
    url = "http://127.0.0.1:%d/sse/cors"

    page = browser.open(allowed + "/")
    page.wait("typeof window.open_source === 'function'")
    # A listed origin may read, with or without credentials (echoed origin
    # plus Access-Control-Allow-Credentials).
    assert cross_origin(page, listed, url % listed.port, False) == "message:ping"
    assert cross_origin(page, listed, url % listed.port, True) == "message:ping"

    page = browser.open(other + "/")
    page.wait("typeof window.open_source === 'function'")
    # An origin not in the list gets no CORS headers: the browser refuses.
    assert cross_origin(page, listed, url % listed.port, False) == "refused"
    # "*" lets every origin read without credentials, but a browser never
    # sends credentials to "*".
    assert cross_origin(page, anyone, url % anyone.port, False) == "message:ping"
    assert cross_origin(page, anyone, url % anyone.port, True) == "refused"
