"""
A real browser against the real server: headless Chromium (Debian's
C{chromium}) driven by Selenium through Debian's C{chromedriver} (package
C{chromium-driver}; both installed by C{.ci/run}) loads the demo page served by
C{twistd -n sseserver}; its own C{EventSource} receives what is published
through the control port and the FIFO, reconnects by itself when its stream
is cut and gets the missed events by replay; the page's form publishes with
an HTTP POST.  Cross-origin pages come from a small C{http.server} on other
loopback ports.

With C{SSESERVER_SCREENSHOT=PATH} set, the publishing test saves a PNG
screenshot of the demo page there (C{docs/demo.png} in the README comes from
it).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import TIMEOUT, Stream, assert_events, fifo_write, until_marker
from forwarding import Forwarder
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

#: Debian's chromium and chromedriver, installed by .ci/run.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

EVENT_ID = r"\d+-\d+"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Browser:
    """
    A headless Chromium driven by chromedriver, with its own profile.  At close
    the WebDriver session ends and whatever is left of chromedriver's process
    session (Chromium and its helpers) is killed.
    """

    def __init__(self, workdir: Path):
        self.profile = workdir / "chromium-profile"
        self.profile.mkdir()
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=820,790",
            "--force-device-scale-factor=1",
            f"--user-data-dir={self.profile}",
        ):
            options.add_argument(argument)
        # Network events of the DevTools protocol, for the request headers.
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.service = Service(
            CHROMEDRIVER,
            log_output=str(workdir / "chromedriver.log"),
            popen_kw={"start_new_session": True},
        )
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.driver.set_script_timeout(TIMEOUT)

    def get(self, url: str) -> None:
        self.driver.get(url)

    def eval(self, expression: str):
        """The value of a JavaScript expression (a promise is awaited)."""
        return self.driver.execute_script(f"return ({expression});")

    def wait(self, expression: str, timeout: float = TIMEOUT):
        """Poll C{expression} until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expression!r} still false; page log: "
                    f"{self.eval('window.__log || null')}"
                )
            time.sleep(0.05)

    def type_into(self, element_id: str, text: str) -> None:
        """Type C{text} into a field as a user would (keyboard events)."""
        field = self.driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(text)

    def click(self, selector: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, selector).click()

    def sent_headers(self) -> list:
        """The headers of each request the browser sent since the last call."""
        sent = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSentExtraInfo":
                headers = message["params"]["headers"]
                sent.append({k.lower(): v for k, v in headers.items()})
        return sent

    def close(self) -> None:
        session = self.service.process.pid
        with contextlib.suppress(Exception):
            self.driver.quit()
        # Chromium's helpers that outlived chromedriver, in its process session.
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session:  # the session id
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.service.process.wait(TIMEOUT)


@pytest.fixture
def browser(tmp_path):
    chromium = Browser(tmp_path)
    yield chromium
    chromium.close()


@pytest.fixture
def forwarders():
    """Start forwarders to a port (L{Forwarder}); all are closed after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda upstream: stack.enter_context(Forwarder(upstream))


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


def connected(browser: Browser, what: str) -> None:
    browser.wait(
        "(() => { const state = document.getElementById('state');"
        " return state !== null && state.textContent === "
        + json.dumps(f"connected to {what}")
        + " && typeof source === 'object' && source.readyState === 1; })()"
    )


def got(browser: Browser, count: int) -> list:
    return browser.wait(f"window.__got.length >= {count} && window.__got")


def shown(browser: Browser) -> list:
    """The page's own list of events, newest first."""
    return browser.eval(
        "Array.from(document.querySelectorAll('#events div'), d => d.textContent)"
    )


def test_demo_page_receives_control_and_fifo_events(start_server, browser, tmp_path):
    fifo = tmp_path / "sse.fifo"
    server = start_server("--fifo", str(fifo), "--retry", "300")
    origin = f"http://127.0.0.1:{server.port}"
    browser.get(origin + "/")
    # the first page of a fresh Chromium once read as "" right after get()
    assert browser.wait("document.title") == "sseserver demo"
    connected(browser, "demo")
    browser.eval(LISTEN % TYPES)
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
    fifo_write(fifo, b"demo = from the fifo\n* = END\n")
    expected = [
        ("message", "hello"),
        ("message", "d\u00e9j\u00e0 vu \u2603"),
        ("update", "two\nlines"),
        ("message", "a = b = c"),
        ("empty", ""),
        ("message", "from the fifo"),
        ("message", "END"),
    ]
    seen = got(browser, len(expected))
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
    # The page's own rendering of the types it shows (by default "message").
    assert shown(browser) == [
        f"[{e['id']}] message: {e['data']}"
        for e in reversed(seen)
        if e["type"] == "message"
    ]

    # The form switches the subscription: a new EventSource on two channels,
    # showing two types.
    browser.type_into("channels", "room 1/other")
    browser.type_into("types", "message update")
    browser.click("#form button")
    connected(browser, "room%201/other")
    assert browser.eval("source.url") == origin + "/sse/room%201/other"
    browser.eval(LISTEN % TYPES)
    server.control(b"demo = no longer\nroom 1 = r\nother/update = o\n")
    seen = got(browser, 2)
    assert [(e["type"], e["data"]) for e in seen] == [("message", "r"), ("update", "o")]
    assert shown(browser)[:2] == [
        f"[{seen[1]['id']}] update: o",
        f"[{seen[0]['id']}] message: r",
    ]
    raw.close()


def test_browser_reconnects_after_a_cut_and_gets_the_missed_events_by_replay(
    start_server, browser, forwarders, tmp_path
):
    fifo = tmp_path / "sse.fifo"
    server = start_server("--fifo", str(fifo), "--retry", "300")  # --history 1000
    forwarder = forwarders(server.port)
    origin = f"http://127.0.0.1:{forwarder.port}"
    browser.get(origin + "/")
    connected(browser, "demo")
    browser.eval(LISTEN % TYPES)
    raw = Stream(server.port, "/sse/demo")
    server.wait_subscribed("demo", 2)
    server.control(b"demo = before 1\ndemo/update = before 2\n")
    before = got(browser, 2)
    assert [(e["type"], e["data"]) for e in before] == [
        ("message", "before 1"),
        ("update", "before 2"),
    ]

    # Cut the stream; the browser's next connection waits in the forwarder.
    forwarder.hold()
    assert forwarder.cut() >= 1
    browser.wait("source.readyState === 0")  # CONNECTING
    assert browser.eval("document.getElementById('state').textContent") == (
        "reconnecting..."
    )
    forwarder.wait_pending(1)  # it reconnects by itself
    server.wait_subscribed("demo", 1)  # only the raw subscriber is left
    # Published while the browser is away: control port and FIFO.
    server.control(
        b"demo = missed 1\ndemo/update = missed\r2\n"
        + "demo = missed \u2603\n".encode("utf-8")
    )
    fifo_write(fifo, b"other = not for the page\ndemo = missed from the fifo\n")
    missed = [
        ("message", "missed 1"),
        ("update", "missed\n2"),
        ("message", "missed \u2603"),
        ("message", "missed from the fifo"),
    ]
    raw.read_events(2 + len(missed))
    assert browser.eval("window.__got.length") == 2

    forwarder.release()
    connected(browser, "demo")
    server.control(b"demo = live\n")
    expected = [(e["type"], e["data"]) for e in before] + missed + [("message", "live")]
    seen = got(browser, len(expected))
    # Each missed event exactly once, in order, before the live one.
    assert [(e["type"], e["data"]) for e in seen] == expected
    server.control(b"demo = END\n")
    assert [e["data"] for e in got(browser, len(expected) + 1)][-1] == "END"
    ids = assert_events(
        until_marker(raw),
        [
            (d.encode("utf-8"), None if t == "message" else t.encode())
            for t, d in expected
        ]
        + [(b"END", None)],
    )
    assert [e["id"] for e in browser.eval("window.__got")] == [
        f"{ms}-{seq}" for ms, seq in ids
    ]
    # On the wire: two requests for the stream, the second one (made by the
    # browser itself) carrying the last id it had seen.
    requests = forwarder.requests("/sse/demo")
    assert len(requests) == 2, requests
    assert "last-event-id" not in requests[0]
    assert requests[1]["last-event-id"] == before[-1]["id"]
    assert requests[1]["accept"] == "text/event-stream"
    raw.close()


def test_browser_reconnects_after_the_server_restarts(start_server, browser):
    port = free_port()
    args = ("--port", f"tcp:{port}:interface=127.0.0.1", "--retry", "200")
    first = start_server(*args)
    browser.get(f"http://127.0.0.1:{port}/")
    connected(browser, "demo")
    browser.eval(LISTEN % TYPES)
    first.control(b"demo = before\n")
    (before,) = got(browser, 1)
    assert before["data"] == "before"

    first.stop()  # SIGTERM: the stream ends cleanly
    browser.wait("source.readyState === 0")  # CONNECTING
    second = start_server(*args)
    browser.wait("source.readyState === 1")
    second.control(b"demo = after\n")
    seen = got(browser, 2)
    assert [e["data"] for e in seen] == ["before", "after"]
    assert re.fullmatch(EVENT_ID, seen[1]["id"])
    # The reconnection told the server the last id it had seen.
    sent = browser.sent_headers()
    assert any(h.get("last-event-id") == before["id"] for h in sent), sent


def publish_with_form(browser: Browser, channel: str, event: str, data: str) -> dict:
    """Fill in and submit the demo page's publish form; its reply."""
    browser.type_into("pub-channel", channel)
    browser.type_into("pub-event", event)
    browser.type_into("pub-data", data)
    browser.click("#publish button")
    status = browser.wait("document.getElementById('reply').dataset.status")
    return {
        "status": int(status),
        "reply": browser.eval("document.getElementById('reply').textContent"),
        "hint": browser.eval(
            "(h => h.hidden ? null : h.textContent)(document.getElementById('hint'))"
        ),
    }


def test_demo_page_publishes_with_its_form(start_server, browser):
    server = start_server("--http-publish", "--retry", "300")
    origin = f"http://127.0.0.1:{server.port}"
    browser.get(origin + "/")
    connected(browser, "demo")
    browser.eval(LISTEN % TYPES)
    raw = Stream(server.port, "/sse/demo")
    server.wait_subscribed("demo", 2)
    server.control(b"demo = Hello from the control port\n")

    # Typed as a user would: a type, two lines, non-ASCII, '+' and '&'.
    data = "caf\u00e9 \u2603 1+1=2 & more\nsecond line"
    result = publish_with_form(browser, "demo", "update", data)
    assert result["status"] == 200, result
    status, _, body = result["reply"].partition(" ")
    reply = json.loads(body)
    assert status == "200" and result["hint"] is None
    assert reply["accepted"] == 1 and reply["delivered"] == 2, reply
    (event_id,) = reply["ids"]
    # The raw subscriber gets exactly that event, with the id of the reply.
    events = raw.read_events(2)
    assert events[1] == (
        f"id: {event_id}\nevent: update\ndata: caf\u00e9 \u2603 1+1=2 & more\n"
        "data: second line"
    ).encode("utf-8")
    # The page listens to the type it published and shows the event.
    seen = got(browser, 2)
    assert (seen[1]["type"], seen[1]["data"], seen[1]["id"]) == (
        "update",
        data,
        event_id,
    )
    assert browser.eval("document.getElementById('types').value") == ("message update")
    # An empty type is a "message"; the path names the channels.
    result = publish_with_form(browser, "demo/other", "", "from the form")
    (event_id,) = json.loads(result["reply"].partition(" ")[2])["ids"]
    assert raw.read_events(3)[2] == f"id: {event_id}\ndata: from the form".encode()
    seen = got(browser, 3)
    assert shown(browser) == [
        f"[{event_id}] message: from the form",
        f"[{seen[1]['id']}] update: {data}",
        f"[{seen[0]['id']}] message: Hello from the control port",
    ]

    screenshot = os.environ.get("SSESERVER_SCREENSHOT")
    if screenshot:
        png = browser.driver.get_screenshot_as_png()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        Path(screenshot).write_bytes(png)
    raw.close()


def test_demo_page_shows_why_publishing_is_refused(start_server, browser):
    off = start_server()
    browser.get(f"http://127.0.0.1:{off.port}/")
    connected(browser, "demo")
    result = publish_with_form(browser, "demo", "", "nobody hears this")
    assert result == {
        "status": 403,
        "reply": "403 HTTP publishing is disabled; start sseserver with --http-publish",
        "hint": "Publishing over HTTP is off: start sseserver with --http-publish,"
        " or publish on the control port.",
    }

    token = start_server("--http-publish", "--publish-token", "s3cret")
    browser.get(f"http://127.0.0.1:{token.port}/")
    connected(browser, "demo")
    browser.eval(LISTEN % TYPES)
    result = publish_with_form(browser, "demo", "", "no token")
    assert result == {
        "status": 401,
        "reply": "401 missing or wrong publish token",
        "hint": "This server needs its --publish-token: type it in Token.",
    }
    browser.type_into("pub-token", "s3cret")
    result = publish_with_form(browser, "demo", "", "with the token")
    assert result["status"] == 200 and result["hint"] is None, result
    assert [e["data"] for e in got(browser, 1)] == ["with the token"]


class _Pages(http.server.BaseHTTPRequestHandler):
    """Serves one page that opens an EventSource on a given URL."""

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


def cross_origin(browser: Browser, server, url: str, credentials: bool) -> str:
    """Open an EventSource from the page; publish until it answers."""
    browser.eval(
        f"(window.__result = null, open_source({json.dumps(url)}, "
        f"{json.dumps(credentials)}).then(r => window.__result = r), true)"
    )
    deadline = time.monotonic() + TIMEOUT
    while True:
        server.control(b"cors = ping\n")
        result = browser.eval("window.__result")
        if result:
            return result
        assert time.monotonic() < deadline, "no answer from the EventSource"
        time.sleep(0.1)


def test_cors_rules_in_the_browser(start_server, browser, page_servers):
    allowed, other = page_servers
    listed = start_server("--cors-origin", allowed)
    anyone = start_server()
    url = "http://127.0.0.1:%d/sse/cors"

    browser.get(allowed + "/")
    browser.wait("typeof window.open_source === 'function'")
    # A listed origin may read, with or without credentials (echoed origin
    # plus Access-Control-Allow-Credentials).
    assert cross_origin(browser, listed, url % listed.port, False) == "message:ping"
    assert cross_origin(browser, listed, url % listed.port, True) == "message:ping"

    browser.get(other + "/")
    browser.wait("typeof window.open_source === 'function'")
    # An origin not in the list gets no CORS headers: the browser refuses.
    assert cross_origin(browser, listed, url % listed.port, False) == "refused"
    # "*" lets every origin read without credentials, but a browser never
    # sends credentials to "*".
    assert cross_origin(browser, anyone, url % anyone.port, False) == "message:ping"
    assert cross_origin(browser, anyone, url % anyone.port, True) == "refused"
