"""
The nginx snippet, live: Debian's nginx (installed by C{.ci/run}) runs as the
current user on a free loopback port with C{etc/nginx/sseserver.conf} included
in its server block, in front of the real C{twistd -n sseserver}.  Streams read
through it get every event within a second of its publishing, whole, while
they stay open; heartbeats and C{Last-Event-ID} pass through too.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, Stream, assert_events

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SNIPPET = ROOT / "etc" / "nginx" / "sseserver.conf"
#: Where the snippet sends requests: sseserver's port of etc/sseserver.conf.
UPSTREAM = "proxy_pass http://127.0.0.1:8080;"

#: An event published must come out of nginx within this many seconds.
UNBUFFERED = 1.0

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="needs nginx")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nginx:
    """nginx in the foreground, everything it writes under C{workdir}."""

    def __init__(self, workdir: Path, sse_port: int):
        self.workdir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        # A copy of the snippet, pointed at this test's sseserver.
        snippet = SNIPPET.read_text()
        assert snippet.count(UPSTREAM) == 1, snippet
        (workdir / "sseserver.conf").write_text(
            snippet.replace(UPSTREAM, f"proxy_pass http://127.0.0.1:{sse_port};")
        )
        self.start(
            "    server {\n"
            f"        listen 127.0.0.1:{self.port};\n"
            "        server_name localhost;\n"
            f"        include {workdir}/sseserver.conf;\n"
            "    }\n"
        )

    def start(self, http: str, log_format: str | None = None) -> None:
        """Run nginx in the foreground with C{http} in its http block."""
        workdir = self.workdir
        logs = workdir / "logs"
        temp = workdir / "temp"
        logs.mkdir(parents=True, exist_ok=True)
        temp.mkdir(exist_ok=True)
        user = ""
        if os.geteuid() == 0:  # workers would be "nobody" otherwise
            user = (
                f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                f"{grp.getgrgid(os.getegid()).gr_name};\n"
            )
        access_log = f"    access_log {logs}/access.log;\n"
        if log_format is not None:
            access_log = (
                f"    log_format custom {log_format};\n"
                f"    access_log {logs}/access.log custom;\n"
            )
        conf = workdir / "nginx.conf"
        conf.write_text(
            f"{user}"
            "worker_processes 1;\n"
            f"pid {workdir}/nginx.pid;\n"
            f"error_log {logs}/error.log info;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            f"{access_log}"
            f"    client_body_temp_path {temp}/client_body;\n"
            f"    proxy_temp_path {temp}/proxy;\n"
            f"    fastcgi_temp_path {temp}/fastcgi;\n"
            f"    uwsgi_temp_path {temp}/uwsgi;\n"
            f"    scgi_temp_path {temp}/scgi;\n"
            f"{http}"
            "}\n"
        )
        self.output = open(logs / "stderr.log", "wb")
        self.process = subprocess.Popen(
            [
                NGINX,
                "-p",
                str(workdir),
                "-e",
                str(logs / "error.log"),
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert self.process.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, self.log()
                time.sleep(0.05)

    def log(self) -> str:
        logs = self.workdir / "logs"
        return "\n".join(
            p.read_text(errors="replace")
            for p in (logs / "stderr.log", logs / "error.log")
            if p.exists()
        )

    def stop(self) -> None:
        """SIGTERM (fast shutdown: open streams do not hold it), then SIGKILL."""
        group = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self.process.wait(TIMEOUT)
        # No worker outlives its master.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.output.close()


@pytest.fixture
def nginx_in_front(start_server, tmp_path):
    """Start sseserver with extra arguments and nginx in front of it."""
    started = []

    def start(*args: str):
        server = start_server(*args)
        nginx = Nginx(tmp_path / f"nginx{len(started)}", server.port)
        started.append(nginx)
        return server, nginx

    yield start
    for nginx in started:
        nginx.stop()


def test_events_pass_through_nginx_unbuffered(nginx_in_front):
    server, nginx = nginx_in_front("--heartbeat", "1")
    # Through nginx (the opening ":ok" came through at once: Stream waits for it).
    stream = Stream(nginx.port, "/sse/news", {"Accept": "text/event-stream"})
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert stream.headers["server"].startswith("nginx")
    direct = Stream(server.port, "/sse/news")

    published = [
        (b"news = first\n", b"first", None),
        (
            "news/update = caf\u00e9 \u2603\n".encode(),
            "caf\u00e9 \u2603".encode(),
            b"update",
        ),
        (b"news = two\rlines\n", b"two\nlines", None),
        (b"other = not for news\n", None, None),
        (b"news = " + b"x" * 60000 + b"\n", b"x" * 60000, None),
        (b"* = last\n", b"last", None),
    ]
    expected = []
    for line, data, event_type in published:
        time.sleep(0.2)  # idle between events: nothing else pushes them out
        started = time.monotonic()
        server.control(line)
        if data is None:
            continue
        expected.append((data, event_type))
        # Each event, whole, within a second of publishing it.
        events = stream.read_events(len(expected), timeout=UNBUFFERED)
        elapsed = time.monotonic() - started
        assert elapsed < UNBUFFERED, elapsed
        assert not stream.closed and not stream.finished
    ids = assert_events(events, expected)
    # The same bytes as a subscriber that talks to sseserver directly.
    assert direct.read_events(len(expected)) == events
    assert len(ids) == len(expected)

    # Idle: the heartbeat comes through too, and the stream stays open.
    mark = len(stream.body)
    stream.read_until(lambda body: b":\n\n" in body[mark:], timeout=3)
    assert stream.body[mark:].startswith(b":\n\n")
    assert not stream.closed and not stream.finished
    started = time.monotonic()
    server.control(b"news = after the heartbeat\n")
    events = stream.read_events(len(expected) + 1, timeout=UNBUFFERED)
    assert time.monotonic() - started < UNBUFFERED
    assert_events(events, expected + [(b"after the heartbeat", None)])
    assert nginx.process.poll() is None
    stream.close()
    direct.close()


def test_last_event_id_passes_through_nginx(nginx_in_front):
    server, nginx = nginx_in_front()
    first = Stream(nginx.port, "/sse/news", {"Accept": "text/event-stream"})
    server.control(b"news = one\nnews = two\nnews = three\n")
    ids = assert_events(
        first.read_events(3), [(b"one", None), (b"two", None), (b"three", None)]
    )
    first.close()
    # Reconnecting through nginx with the first id: the two after it, replayed.
    again = Stream(
        nginx.port,
        "/sse/news",
        {"Accept": "text/event-stream", "Last-Event-ID": "%d-%d" % ids[0]},
    )
    started = time.monotonic()
    server.control(b"news = live\n")
    events = again.read_events(3, timeout=UNBUFFERED)
    assert time.monotonic() - started < UNBUFFERED
    assert (
        assert_events(events, [(b"two", None), (b"three", None), (b"live", None)])[:2]
        == ids[1:]
    )
    again.close()
