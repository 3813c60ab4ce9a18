"""
Shared fixtures: the real C{twistd -n sseserver} process on loopback ports, and
raw-socket clients for its SSE and control ports.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SSELOAD_DIR = ROOT.parent / "shared" / "tools" / "sseload"
TWISTD = str(Path(sys.executable).with_name("twistd"))
TIMEOUT = 10.0

LISTENING = re.compile(r"\] (SSE|control|admin) listening on (\S+):(\d+)$")
EVENT_ID = rb"\d+-\d+"


class Server:
    """A running C{twistd -n sseserver}; its log is collected line by line."""

    def __init__(self, args: list, workdir: Path, fd_limit: int | None = None):
        self.args = args
        self.workdir = workdir
        self.lines: list[str] = []
        self._changed = threading.Condition()
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "sseserver", *args],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=None if fd_limit is None else _limit_fds(fd_limit),
        )
        threading.Thread(target=self._collect, daemon=True).start()
        self.sse_ports: list[int] = []
        self.control_ports: list[int] = []
        self.admin_ports: list[int] = []

    def _collect(self) -> None:
        for raw in self.process.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_log(self, pattern: str, start: int = 0, timeout: float = TIMEOUT):
        """The first log line from index C{start} on matching C{pattern}."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                if self.process.poll() is not None and not self._stdout_open():
                    raise AssertionError(
                        f"server exited ({self.process.returncode}) before {pattern!r}:\n"
                        + "\n".join(self.lines)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no log line {pattern!r} in:\n" + "\n".join(self.lines)
                    )
                self._changed.wait(min(left, 0.2))

    def _stdout_open(self) -> bool:
        return not self.process.stdout.closed and self.process.poll() is None

    def wait_started(self, sse: int = 1, control: int = 1, admin: int = 0) -> "Server":
        deadline = time.monotonic() + TIMEOUT

        def waiting() -> bool:
            return (
                len(self.sse_ports) < sse
                or len(self.control_ports) < control
                or len(self.admin_ports) < admin
            )

        while waiting():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(
                    f"not all listeners started (exit {self.process.poll()}):\n"
                    + "\n".join(self.lines)
                )
            self.wait_for_log(r"listening on", timeout=deadline - time.monotonic())
            ports = {"SSE": [], "control": [], "admin": []}
            with self._changed:
                for line in self.lines:
                    match = LISTENING.search(line)
                    if match:
                        ports[match[1]].append(int(match[3]))
            self.sse_ports = ports["SSE"]
            self.control_ports = ports["control"]
            self.admin_ports = ports["admin"]
            if waiting():
                time.sleep(0.05)
        return self

    @property
    def port(self) -> int:
        return self.sse_ports[0]

    @property
    def control_port(self) -> int:
        return self.control_ports[0]

    @property
    def admin_port(self) -> int:
        return self.admin_ports[0]

    def mark(self) -> int:
        """The index of the next log line, to search only what comes after."""
        with self._changed:
            return len(self.lines)

    # what /proc tells about the process

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)[1])

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    # control port

    def control(self, data: bytes) -> None:
        """Send bytes on a fresh control connection and close it."""
        with socket.create_connection(("127.0.0.1", self.control_port), TIMEOUT) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(TIMEOUT)
            while s.recv(65536):
                pass

    def wait_subscribed(self, channel: str, count: int) -> None:
        """Wait until the server counts C{count} subscribers of C{channel}."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self.command(b"tcpsubscribedclients:" + channel.encode())
            if reply["subscribedclients"] == count:
                return
            assert time.monotonic() < deadline, reply
            time.sleep(0.05)

    def command(self, line: bytes) -> dict:
        """Send one line, return the one JSON object replied."""
        with ControlClient(self.control_port) as client:
            client.send(line + b"\n")
            return client.reply()

    def stop(self) -> int:
        return stop_process(self.process)


# FIFO writers


def open_writer(path, timeout: float = TIMEOUT) -> int:
    """A FIFO's write end, once the server holds the read end open."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def write_all(fd: int, data: bytes, timeout: float = TIMEOUT) -> None:
    """All of C{data}, waiting while the pipe is full."""
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AssertionError("FIFO not drained by the server")
            select.select([], [fd], [], 0.1)


def fifo_write(path, data: bytes) -> None:
    """One writer: open, write, close."""
    fd = open_writer(path)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def stop_process(process: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL if it lingers; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(TIMEOUT)
    return process.returncode


def _limit_fds(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return preexec


class ControlClient:
    """A control-port connection that reads JSON replies line by line."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        self.sock.settimeout(TIMEOUT)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def raw_reply(self) -> bytes:
        """The next reply line as sent, with its newline."""
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed; unread {self.buffer!r}")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line + b"\n"

    def reply(self) -> dict:
        return json.loads(self.raw_reply())

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Stream:
    """
    A raw HTTP client for one SSE request: the response head as sent, and the body
    de-chunked (C{body}) next to the raw bytes (C{raw}).
    """

    def __init__(
        self,
        port: int,
        target: str = "/sse",
        headers: dict | None = None,
        method: str = "GET",
        version: str = "HTTP/1.1",
        wait_open: bool = True,
        request: bytes | None = None,
        rcvbuf: int | None = None,
    ):
        if rcvbuf is None:
            self.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        else:  # set before connecting: it sets the advertised window
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(TIMEOUT)
        if request is None:
            lines = [f"{method} {target} {version}", "Host: 127.0.0.1"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        self.sock.sendall(request)
        self.raw = bytearray()
        self.body = bytearray()
        self._chunk_buffer = bytearray()
        self.closed = False
        self.finished = False
        self.head = self._read_head()
        status_line, *header_lines = self.head.decode("latin-1").split("\r\n")
        self.status_line = status_line
        self.status = int(status_line.split()[1])
        self.header_lines = header_lines
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self._absorb(self._rest)
        if wait_open and self.status == 200 and method == "GET":
            self.read_until(lambda body: body.startswith((b":ok\n\n", b"retry:")))

    def _read_head(self) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            more = self.sock.recv(65536)
            if not more:
                raise AssertionError(f"closed before a full response head: {data!r}")
            data += more
        head, _, self._rest = data.partition(b"\r\n\r\n")
        return head

    def _absorb(self, data: bytes) -> None:
        self.raw += data
        if not self.chunked:
            self.body += data
            return
        self._chunk_buffer += data
        while True:
            size_line, crlf, rest = self._chunk_buffer.partition(b"\r\n")
            if not crlf:
                return
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            assert rest[size : size + 2] == b"\r\n", rest[: size + 2]
            self.body += rest[:size]
            self._chunk_buffer = bytearray(rest[size + 2 :])
            if size == 0:
                self.finished = True
                return

    def read_until(self, predicate, timeout: float = TIMEOUT) -> bytes:
        """Read until C{predicate(body)} holds; return the body."""
        deadline = time.monotonic() + timeout
        while not predicate(self.body):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise AssertionError(f"timed out or closed; body so far: {self.body!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                self.closed = True
                if not predicate(self.body):
                    raise AssertionError(f"closed; body so far: {self.body!r}")
                break
            self._absorb(data)
        return self.body

    def read_to_end(self, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"still open; body so far: {self.body!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                self.closed = True
            else:
                self._absorb(data)
        return self.body

    def events(self) -> list:
        """The body's event blocks (comments included), without the blank line."""
        return [block for block in self.body.split(b"\n\n")[:-1]]

    def data_events(self) -> list:
        """The events, without comments and the opening C{retry:} field."""
        return _data_blocks(self.body)

    def read_events(self, count: int, timeout: float = TIMEOUT) -> list:
        """Wait until C{count} non-comment events arrived; return them all."""
        self.read_until(lambda body: len(_data_blocks(body)) >= count, timeout)
        return self.data_events()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with RST instead of FIN."""
        self.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        self.sock.close()


def _data_blocks(body: bytes) -> list:
    blocks = body.split(b"\n\n")[:-1]
    return [b for b in blocks if not b.startswith((b":", b"retry:"))]


#: A last event to publish: what a stream received before it is all it got.
END = b"END"


def until_marker(stream: Stream, marker: bytes = END) -> list:
    """The stream's events up to and including the C{marker} event."""
    needle = b"\ndata: " + marker + b"\n\n"
    stream.read_until(lambda body: needle in body)
    return stream.data_events()


def expect(stream: Stream, expected: list, marker: bytes = END) -> None:
    """Exactly C{expected} arrived before the marker event."""
    assert_events(until_marker(stream, marker), expected + [(marker, None)])


def event_re(data: bytes, event_type: bytes | None = None) -> bytes:
    """A regex matching one encoded event with any id."""
    pattern = b"id: (" + EVENT_ID + b")\n"
    if event_type is not None:
        pattern += b"event: " + re.escape(event_type) + b"\n"
    for line in data.split(b"\n"):
        pattern += b"data: " + re.escape(line) + b"\n"
    return pattern


def assert_events(events: list, expected: list) -> list:
    """
    Each event block matches C{(data, type)} exactly, with any id; ids increase.
    Returns the ids.
    """
    assert len(events) == len(expected), events
    ids = []
    for block, (data, event_type) in zip(events, expected):
        match = re.fullmatch(event_re(data, event_type), block + b"\n")
        assert match, (block, data, event_type)
        ids.append(tuple(int(p) for p in match[1].split(b"-")))
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    return ids


def _option_value(args, option: str):
    """The value given to C{option} in C{args} (C{--opt v} or C{--opt=v}), or None."""
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


@pytest.fixture
def start_server(tmp_path):
    """Start servers with extra arguments; all are stopped after the test."""
    servers = []

    def start(
        *args: str,
        sse: int = 1,
        control: int = 1,
        ports: bool = True,
        fd_limit: int | None = None,
    ) -> Server:
        base = []
        if ports and not any(a.startswith("--port") for a in args):
            base += ["--port", "tcp:0:interface=127.0.0.1"]
        if ports and not any(a.startswith("--control") for a in args):
            base += ["--control", "tcp:0:interface=127.0.0.1"]
        # The admin listener's default port 8086 is fixed: off unless asked for.
        admin = _option_value(args, "--admin")
        if admin is None:
            base += ["--admin", "none"]
        server = Server([*base, *args], tmp_path, fd_limit)
        servers.append(server)
        return server.wait_started(sse, control, 0 if admin in (None, "none") else 1)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def sseload() -> str:
    """The reference load generator (shared/tools/sseload), built if needed."""
    binary = SSELOAD_DIR / "sseload"
    if not binary.exists():
        subprocess.run(
            ["make", "-C", str(SSELOAD_DIR)], check=True, capture_output=True
        )
    return str(binary)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port, stopped after the test."""
    from redis_server import RedisServer

    servers = []

    def start(*extra: str):
        server = RedisServer(tmp_path, *extra).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
