"""
Python fallback load client for C{bench/run.py}, used when the C load generator
C{sseload} (shared/tools/sseload) is not available.

It speaks the subset of sseload's command line that run.py uses and prints one JSON
object with the same key names, so run.py handles both alike:

  - N subscribers over raw non-blocking sockets (one C{selectors} loop, one
    thread), with at most C{--max-pending} waiting for their response headers;
    HTTP/1.1 responses with C{Transfer-Encoding: chunked} or an identity body; SSE
    parsed by the EventSource rules (CR, LF or CRLF line ends, comments ignored, a
    blank line dispatches an event that had a C{data} field);
  - one control-port connection publishing C{--messages} lines at C{--rate}, each
    payload starting with C{T<publish time in µs since the epoch>-<seq>} like
    sseload's, so latency = arrival time (taken once per C{recv}) - that stamp;
  - the server's CPU (utime + stime from C{/proc/PID/stat}) and RSS (C{VmRSS} from
    C{/proc/PID/status}) sampled before connecting, once all clients have their
    headers, when publishing starts and at the end.

It is written to be correct, not fast.  Python needs several µs per C{recv} and
per event, so under heavy load the client itself queues events: the latencies and
times it reports are UPPER BOUNDS on the server's own (and deliveries/s a lower
bound).  Server CPU per delivery is not comparable with sseload's either way: a
client that reads slowly lets the server pack many events into one write, which
costs the server less per event than keeping up with a fast reader.  Message
counts, connection counts and RSS per connection are exact.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import resource
import selectors
import signal
import socket
import sys
import time

#: Linux's IP_BIND_ADDRESS_NO_PORT: bind a source address without reserving a
#: port, so each of the --src-ips addresses has its own ephemeral port range.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

STAMP = re.compile(rb"T(\d+)-")
LINE_END = re.compile(rb"\r\n|\r|\n")
PLACEHOLDER = re.compile(r"(i|k|seq|chan|payload)((?:[-+*/%]\d+){0,4})$")
OPERATION = re.compile(r"([-+*/%])(\d+)")
ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "{": "{", "}": "}"}


# -- templates (sseload's mini-language) ------------------------------------------


class Template:
    """
    sseload's templates: literal text with the escapes C{\\n \\r \\t \\\\ \\{ \\}},
    plus C{{i}}, C{{k}}, C{{seq}} (with up to four integer operations evaluated
    left to right, e.g. C{{i%10+1}}), C{{chan}} and C{{payload}}.
    """

    def __init__(self, text: str):
        self.text = text
        self.parts: list = []  # str literals and (name, [(op, n), ...]) tuples
        literal, pos = [], 0
        while pos < len(text):
            char = text[pos]
            if char == "\\" and pos + 1 < len(text) and text[pos + 1] in ESCAPES:
                literal.append(ESCAPES[text[pos + 1]])
                pos += 2
            elif char == "{":
                end = text.find("}", pos)
                match = PLACEHOLDER.match(text[pos + 1 : end]) if end > 0 else None
                if not match:
                    raise ValueError(f"bad placeholder in template {text!r}")
                self.parts.append("".join(literal))
                literal = []
                ops = [(op, int(n)) for op, n in OPERATION.findall(match[2])]
                self.parts.append((match[1], ops))
                pos = end + 1
            else:
                literal.append(char)
                pos += 1
        self.parts.append("".join(literal))

    def uses(self, name: str) -> bool:
        return any(isinstance(p, tuple) and p[0] == name for p in self.parts)

    def render(self, index: int = 0, chan: str = "", payload: str = "") -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part[0] == "chan":
                out.append(chan)
            elif part[0] == "payload":
                out.append(payload)
            else:
                out.append(str(_arithmetic(index, part[1])))
        return "".join(out)


def _arithmetic(value: int, ops: list) -> int:
    for op, n in ops:
        if op == "+":
            value += n
        elif op == "-":
            value -= n
        elif op == "*":
            value *= n
        elif op == "/":
            value = value // n if n else 0
        else:
            value = value % n if n else 0
    return value


class Channels:
    """C{--channels}: a comma list (message k -> list[k % n]) or a template on k."""

    def __init__(self, spec: str | None):
        self.template = self.names = None
        if spec is None:
            return
        if "{" in spec:
            self.template = Template(spec)
        else:
            self.names = spec.split(",")

    def of(self, k: int) -> str:
        if self.template is not None:
            return self.template.render(k)
        if self.names is not None:
            return self.names[k % len(self.names)]
        return ""


# -- wire parsing -------------------------------------------------------------------


class ProtocolError(Exception):
    pass


class ChunkedDecoder:
    """C{Transfer-Encoding: chunked}: feed raw bytes, get the body bytes back."""

    SIZE, DATA, DATA_END, TRAILER, DONE = range(5)

    def __init__(self):
        self.buffer = bytearray()
        self.state = self.SIZE
        self.left = 0

    @property
    def finished(self) -> bool:
        return self.state == self.DONE

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        pos, buf = 0, self.buffer
        while self.state != self.DONE:
            if self.state == self.DATA:
                take = min(self.left, len(buf) - pos)
                if take == 0:
                    break
                out += buf[pos : pos + take]
                pos += take
                self.left -= take
                if self.left == 0:
                    self.state = self.DATA_END
                continue
            if self.state == self.DATA_END:
                if len(buf) - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                pos += 2
                self.state = self.SIZE
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > 4096:
                    raise ProtocolError("chunk size or trailer line too long")
                break
            line, pos = bytes(buf[pos:end]), end + 2
            if self.state == self.TRAILER:
                if not line:
                    self.state = self.DONE
                continue
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                self.state = self.TRAILER
            else:
                self.left, self.state = size, self.DATA
        del buf[:pos]
        return bytes(out)


class SSEParser:
    """
    The EventSource parsing rules, reduced to what a benchmark needs: for each
    dispatched event, the value of its first C{data} field (where the timestamp is).
    """

    def __init__(self):
        self.pending = b""
        self.skip_lf = False
        self.at_start = True
        self.first_data = None  # None: no data field seen in the current event

    def feed(self, data: bytes) -> list:
        buf = self.pending + data
        if self.at_start and buf:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self.pending = buf
                return []
            if buf.startswith(b"\xef\xbb\xbf"):
                buf = buf[3:]
            self.at_start = False
        pos = 0
        if self.skip_lf and buf[:1] == b"\n":
            pos = 1
        self.skip_lf = False
        events = []
        for match in LINE_END.finditer(buf, pos):
            line = buf[pos : match.start()]
            pos = match.end()
            if match.group() == b"\r" and pos == len(buf):
                self.skip_lf = True  # a CRLF may be split across reads
            self._line(line, events)
        self.pending = buf[pos:]
        return events

    def _line(self, line: bytes, events: list) -> None:
        if not line:
            if self.first_data is not None:
                events.append(self.first_data)
            self.first_data = None
            return
        if line.startswith(b":"):
            return
        field, colon, value = line.partition(b":")
        if field != b"data":
            return
        if colon and value.startswith(b" "):
            value = value[1:]
        if self.first_data is None:
            self.first_data = value


# -- measurement helpers ------------------------------------------------------------


class Histogram:
    """
    Latencies in µs: exact 1 µs buckets below 4,096 µs, then buckets 0.05% wide,
    so memory stays bounded however many deliveries a run has.
    """

    EXACT = 4096
    STEP = math.log1p(0.0005)

    def __init__(self):
        self.counts: dict = {}
        self.count = 0
        self.total = 0
        self.low = None
        self.high = 0

    def add(self, usec: int) -> None:
        if usec < self.EXACT:
            bucket = usec
        else:
            bucket = self.EXACT + int(math.log(usec / self.EXACT) / self.STEP)
        self.counts[bucket] = self.counts.get(bucket, 0) + 1
        self.count += 1
        self.total += usec
        self.high = max(self.high, usec)
        self.low = usec if self.low is None else min(self.low, usec)

    def _value(self, bucket: int) -> float:
        if bucket < self.EXACT:
            return bucket
        return self.EXACT * math.exp((bucket - self.EXACT) * self.STEP)

    def percentile(self, fraction: float) -> float:
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(self._value(bucket), self.high)
        return self.high

    def summary_ms(self, negative: int, implausible: int) -> dict:
        def ms(usec):
            return round(usec / 1000.0, 3)

        if not self.count:
            return {
                "count": 0,
                "negative_clamped": negative,
                "implausible_timestamps": implausible,
            }
        return {
            "count": self.count,
            "min": ms(self.low),
            "mean": ms(self.total / self.count),
            "p50": ms(self.percentile(0.50)),
            "p90": ms(self.percentile(0.90)),
            "p99": ms(self.percentile(0.99)),
            "p999": ms(self.percentile(0.999)),
            "max": ms(self.high),
            "negative_clamped": negative,
            "implausible_timestamps": implausible,
        }


class ServerProbe:
    """Whole-process CPU seconds and RSS of the server, read from /proc."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int | None):
        self.pid = pid

    def cpu_s(self) -> float | None:
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.TICK  # utime, stime

    def rss_kb(self) -> int | None:
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None


def now_us() -> int:
    """CLOCK_REALTIME in µs: the clock of the payload timestamps."""
    return time.time_ns() // 1000


def raise_fd_limit() -> None:
    """Each subscriber is one fd: take the hard limit, as sseload does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the connections ----------------------------------------------------------------


class Subscriber:
    """One SSE connection: connect, send the request, parse the stream."""

    CONNECTING, HEAD, BODY, CLOSED = range(4)

    def __init__(self, run: LoadRun, index: int, path: str, expected: int):
        self.run = run
        self.index = index
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        self.expected = expected
        self.events = 0
        self.http_ok = False
        self.state = self.CONNECTING
        self.head = b""
        self.decoder = None  # ChunkedDecoder, or None for an identity body
        self.parser = SSEParser()
        self.sock = None

    @property
    def complete(self) -> bool:
        return self.expected is not None and self.events >= self.expected

    def connect(self, src_ips: int) -> None:
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if src_ips > 1:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((f"127.0.0.{1 + self.index % src_ips}", 0))
        err = sock.connect_ex(("127.0.0.1", self.run.port))
        if err not in (0, errno.EINPROGRESS):
            self.run.connect_resolved()
            self._fail(f"connect: {os.strerror(err)}")
            return
        self.run.selector.register(sock, selectors.EVENT_WRITE, self)

    def on_ready(self, mask: int) -> None:
        if self.state == self.CONNECTING:
            self._connected()
        else:
            self._readable()

    def _connected(self) -> None:
        self.run.connect_resolved()
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(f"connect: {os.strerror(err)}")
            return
        self.run.stats["clients_connected"] += 1
        try:
            sent = self.sock.send(self.request)
        except OSError as error:
            self._fail(f"send: {error}")
            return
        if sent < len(self.request):  # never seen for a request this small
            self._fail("request not sent in one write")
            return
        self.state = self.HEAD
        self.run.selector.modify(self.sock, selectors.EVENT_READ, self)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.run.stats["read_errors"] += 1
            self._closed()
            return
        if not data:
            self._closed()
            return
        arrival = now_us()
        self.run.stats["read_calls"] += 1
        self.run.stats["bytes_total"] += len(data)
        try:
            if self.state == self.HEAD:
                data = self._head(data)
            if self.state == self.BODY and data:
                self._body(data, arrival)
        except ProtocolError as error:
            self.run.protocol_error(self, str(error))

    def _head(self, data: bytes) -> bytes:
        self.head += data
        while True:
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    raise ProtocolError("response head over 64 KiB")
                return b""
            head, rest = self.head[:end], self.head[end + 4 :]
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise ProtocolError(f"bad status line {lines[0][:60]!r}")
            status = int(parts[1])
            if 100 <= status < 200:  # interim response: the real one follows
                self.head = rest
                continue
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            self.head = b""
            self.http_ok = status == 200
            self.run.got_headers(self, status, headers)
            if status != 200:
                self._close()
                return b""
            if "chunked" in headers.get("transfer-encoding", ""):
                self.decoder = ChunkedDecoder()
            self.state = self.BODY
            return rest

    def _body(self, data: bytes, arrival: int) -> None:
        if self.decoder is not None:
            data = self.decoder.feed(data)
        for first_data in self.parser.feed(data):
            self.events += 1
            self.run.delivered(first_data, arrival)
        if self.decoder is not None and self.decoder.finished:
            self.run.stats["ended_by_server"] += 1
            self._closed()

    def _fail(self, reason: str) -> None:
        self.run.connect_failed(self, reason)
        self._close()

    def _closed(self) -> None:
        """The server ended the stream (or reset it)."""
        if self.state != self.CLOSED:
            self.run.disconnected(self)
        self._close()

    def _close(self) -> None:
        if self.state == self.CLOSED:
            return
        self.state = self.CLOSED
        if self.sock is not None:
            try:
                self.run.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()


class Publisher:
    """
    One control-port connection writing one line per message at C{--rate}.  Lines
    are stamped in batches of at most 1,024 just before they are queued, so the
    stamp is never later than the send.
    """

    def __init__(
        self,
        run: LoadRun,
        port: int,
        line: Template,
        channels: Channels,
        messages: int,
        rate: float,
        payload_bytes: int,
    ):
        self.run = run
        self.line = line
        self.channels = channels
        self.messages = messages
        self.rate = rate
        self.payload_bytes = payload_bytes
        self.next = 0  # the next message to queue
        self.published = 0  # lines handed to the socket
        self.out = bytearray()
        self.started = None
        self.finished = None
        self.errors = 0
        self.replies = 0
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.sock.setblocking(False)
        run.selector.register(self.sock, selectors.EVENT_READ, self)

    @property
    def done(self) -> bool:
        return self.finished is not None

    def start(self) -> None:
        self.started = time.monotonic()
        self.pump()

    def due(self) -> int:
        if self.rate <= 0:
            return self.messages
        elapsed = time.monotonic() - self.started
        return min(self.messages, int(elapsed * self.rate) + 1)

    def next_due_in(self) -> float:
        """Seconds until the next message is due (for the select timeout)."""
        if self.done or self.rate <= 0 or self.started is None:
            return 1.0
        at = self.started + self.next / self.rate
        return max(0.0, at - time.monotonic())

    def pump(self) -> None:
        if self.started is None or self.done:
            return
        due = self.due()
        while self.next < due and len(self.out) < 1 << 20:
            batch_end = min(due, self.next + 1024)
            stamp = now_us()
            for k in range(self.next, batch_end):
                self.out += self._line(k, stamp)
            self.next = batch_end
        self._send()
        if self.next == self.messages and not self.out:
            self.finished = time.monotonic()

    def _line(self, k: int, stamp: int) -> bytes:
        payload = f"T{stamp}-{k}"
        payload += "x" * max(0, self.payload_bytes - len(payload))
        text = self.line.render(k, self.channels.of(k), payload)
        if not text.endswith("\n"):
            text += "\n"
        return text.encode("utf-8")

    def _send(self) -> None:
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.errors += 1
                self.run.stats["first_publish_error"] = str(error)
                self.out.clear()
                self.next = self.messages
                break
            self.published += self.out.count(b"\n", 0, sent)
            del self.out[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
        self.run.selector.modify(self.sock, events, self)

    def on_ready(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            if data:
                self.replies += len(data)  # error replies: the server refused lines
        if mask & selectors.EVENT_WRITE:
            self.pump()

    def close(self) -> None:
        try:
            self.run.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()


# -- the run ------------------------------------------------------------------------


class LoadRun:
    """Connect, (hold or publish), collect, report: one sseload-like run."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.port = args.port
        self.selector = selectors.DefaultSelector()
        self.probe = ServerProbe(args.server_pid)
        self.histogram = Histogram()
        self.negative = self.implausible = 0
        self.interrupted = False
        self.stats = {
            "clients_connected": 0,
            "connect_failed": 0,
            "first_connect_error": "",
            "responses": 0,
            "http_ok": 0,
            "not_event_stream_content_type": 0,
            "events_total": 0,
            "events_with_timestamp": 0,
            "bytes_total": 0,
            "read_calls": 0,
            "disconnected_early": 0,
            "first_disconnect": "",
            "disconnected_after_complete": 0,
            "ended_by_server": 0,
            "read_errors": 0,
            "protocol_errors": 0,
            "first_protocol_error": "",
            "first_publish_error": "",
        }
        self.statuses: dict = {}
        self.resolved = 0  # clients whose connect failed or whose headers came
        self.connects_resolved = 0
        self.last_event = None
        self.marks: dict = {}
        self.subscribers = self._subscribers()
        self.publisher = None

    # setup

    def _subscribers(self) -> list:
        args = self.args
        path, sub_chan = Template(args.path), Template(args.sub_chan or "")
        counts = self._expected_per_channel()
        subscribers = []
        for i in range(args.clients):
            chan = sub_chan.render(i) if args.sub_chan else ""
            subscribers.append(
                Subscriber(self, i, path.render(i, chan), self._expect(chan, counts))
            )
        return subscribers

    def _expected_per_channel(self) -> dict:
        channels = Channels(self.args.channels)
        counts: dict = {}
        if self.args.sub_chan and self.args.hold is None:
            for k in range(self.args.messages):
                name = channels.of(k)
                counts[name] = counts.get(name, 0) + 1
        return counts

    def _expect(self, chan: str, counts: dict):
        """sseload's rules 1-3: --expect, else --sub-chan, else a broadcast."""
        args = self.args
        if args.hold is not None:
            return None
        if args.expect is not None:
            return args.expect
        if args.sub_chan:
            return counts.get(chan, 0)
        if not Template(self._line_template()).uses("chan"):
            return args.messages
        raise SystemExit("pyload: give --expect or --sub-chan for this publish")

    def _line_template(self) -> str:
        if self.args.line is not None:
            return self.args.line
        return "{chan}={payload}" if self.args.channels else "{payload}"

    # callbacks from the connections

    def got_headers(self, sub: Subscriber, status: int, headers: dict) -> None:
        self.stats["responses"] += 1
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status == 200:
            self.stats["http_ok"] += 1
            if not headers.get("content-type", "").startswith("text/event-stream"):
                self.stats["not_event_stream_content_type"] += 1
        self._resolved()

    def connect_failed(self, sub: Subscriber, reason: str) -> None:
        self.stats["connect_failed"] += 1
        if not self.stats["first_connect_error"]:
            self.stats["first_connect_error"] = f"client {sub.index}: {reason}"
        self._resolved()

    def connect_resolved(self) -> None:
        """A connect attempt succeeded or failed."""
        self.connects_resolved += 1
        if self.connects_resolved == len(self.subscribers):
            self._mark("connect_all")

    def _resolved(self) -> None:
        self.resolved += 1
        if self.resolved == len(self.subscribers):
            self._mark("headers_all")

    def disconnected(self, sub: Subscriber) -> None:
        if sub.state == Subscriber.HEAD:
            self.connect_failed(sub, "closed before the response head")
            return
        if sub.complete and self.args.hold is None:
            self.stats["disconnected_after_complete"] += 1
            return
        self.stats["disconnected_early"] += 1
        if not self.stats["first_disconnect"]:
            self.stats["first_disconnect"] = (
                f"client {sub.index} after {sub.events} events"
            )

    def protocol_error(self, sub: Subscriber, reason: str) -> None:
        self.stats["protocol_errors"] += 1
        if not self.stats["first_protocol_error"]:
            self.stats["first_protocol_error"] = f"client {sub.index}: {reason}"
        sub._close()

    def delivered(self, first_data: bytes, arrival: int) -> None:
        self.stats["events_total"] += 1
        self.last_event = time.monotonic()
        match = STAMP.match(first_data)
        if not match:
            return
        self.stats["events_with_timestamp"] += 1
        latency = arrival - int(match[1])
        if latency < 0:
            if latency < -1_000_000:
                self.implausible += 1
                return
            self.negative += 1
            latency = 0
        elif latency > 12 * 86400 * 1_000_000:
            self.implausible += 1
            return
        self.histogram.add(latency)

    # phases

    def _mark(self, name: str) -> None:
        """Remember when a phase began, with the server's CPU and RSS then."""
        self.marks[name] = (time.monotonic(), self.probe.cpu_s(), self.probe.rss_kb())

    def run(self) -> str:
        self._mark("start")
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._interrupt)
        if self.args.control is not None and self.args.hold is None:
            self.publisher = Publisher(
                self,
                self.args.control,
                Template(self._line_template()),
                Channels(self.args.channels),
                self.args.messages,
                self.args.rate,
                self.args.payload_bytes,
            )
        if not self.subscribers:
            self._mark("headers_all")
        reason = self._connect_phase()
        if reason:
            return reason
        if self.args.hold is not None:
            return self._hold_phase()
        return self._publish_phase()

    def _interrupt(self, signum, frame) -> None:
        self.interrupted = True

    def _poll(self, timeout: float) -> None:
        for key, mask in self.selector.select(timeout):
            key.data.on_ready(mask)

    def _connect_phase(self):
        deadline = self.marks["start"][0] + self.args.timeout
        started = 0
        while "headers_all" not in self.marks:
            pending = started - self.resolved
            while started < len(self.subscribers) and pending < self.args.max_pending:
                self.subscribers[started].connect(self.args.src_ips)
                started += 1
                pending += 1
            self._poll(0.05)
            if self.interrupted:
                return "interrupted"
            if time.monotonic() > deadline:
                return "timeout"
        return None

    def _hold_phase(self) -> str:
        end = time.monotonic() + self.args.hold
        while time.monotonic() < end and not self.interrupted:
            self._poll(min(0.2, max(0.0, end - time.monotonic())))
        return "interrupted" if self.interrupted else "hold_done"

    def _publish_phase(self) -> str:
        settle_end = time.monotonic() + self.args.settle_ms / 1000.0
        while time.monotonic() < settle_end and not self.interrupted:
            self._poll(max(0.0, settle_end - time.monotonic()))
        self._mark("publish_start")
        publisher = self.publisher
        if publisher is None:
            raise SystemExit("pyload: --control is needed without --hold")
        publisher.start()
        deadline = self.marks["start"][0] + self.args.timeout
        while True:
            publisher.pump()
            self._poll(min(0.05, publisher.next_due_in()))
            if self.interrupted:
                return "interrupted"
            now = time.monotonic()
            if publisher.done:
                open_incomplete = [
                    s
                    for s in self.subscribers
                    if s.state != Subscriber.CLOSED and not s.complete
                ]
                if not open_incomplete:
                    return self._finished()
                idle_since = max(self.last_event or 0, publisher.finished)
                if now - idle_since > self.args.idle_timeout:
                    return "idle"
            if now > deadline:
                return "timeout"

    def _finished(self) -> str:
        if all(s.complete for s in self.subscribers):
            return "complete"
        return "finished_incomplete"

    # the report

    def report(self, reason: str, elapsed: float) -> dict:
        self._mark("end")
        stats = dict(self.stats)
        expected = [s.expected for s in self.subscribers if s.expected is not None]
        result = {
            "tool": "pyload",
            "version": "1.0",
            "mode": "hold" if self.args.hold is not None else "publish-tcp",
            "port": self.port,
            "path": self.args.path,
            "clients_requested": len(self.subscribers),
            **{
                k: stats[k]
                for k in (
                    "clients_connected",
                    "connect_failed",
                    "first_connect_error",
                    "responses",
                    "http_ok",
                )
            },
            "http_statuses": self.statuses,
            "not_event_stream_content_type": stats["not_event_stream_content_type"],
            "connect_all_s": self._since("start", "connect_all"),
            "headers_all_s": self._since("start", "headers_all"),
            "still_open": sum(s.state != Subscriber.CLOSED for s in self.subscribers),
        }
        result.update(self._publish_report(expected))
        result.update(
            {
                k: stats[k]
                for k in (
                    "disconnected_early",
                    "first_disconnect",
                    "disconnected_after_complete",
                    "ended_by_server",
                    "read_errors",
                    "protocol_errors",
                    "first_protocol_error",
                )
            }
        )
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        result.update(
            {
                "stop_reason": reason,
                "elapsed_total_s": round(elapsed, 6),
                "loadgen_cpu_s": round(cpu.ru_utime + cpu.ru_stime, 3),
                "events_per_read": round(stats["events_total"] / stats["read_calls"], 2)
                if stats["read_calls"]
                else 0,
            }
        )
        if self.probe.pid is not None:
            result["server"] = self._server_report(result)
        return result

    def _since(self, start: str, end: str):
        if start not in self.marks or end not in self.marks:
            return None
        return round(self.marks[end][0] - self.marks[start][0], 6)

    def _publish_report(self, expected: list) -> dict:
        if self.args.hold is not None:
            return {}
        publisher = self.publisher
        total = self.stats["events_total"]
        window = None
        if "publish_start" in self.marks and self.last_event is not None:
            window = self.last_event - self.marks["publish_start"][0]
        duration = None
        if publisher.finished is not None:
            duration = publisher.finished - publisher.started
        per_client = [s.events for s in self.subscribers if s.http_ok]
        return {
            "messages_requested": self.args.messages,
            "messages_published": publisher.published,
            "publish_errors": publisher.errors,
            "first_publish_error": self.stats["first_publish_error"],
            "publish_duration_s": round(duration, 6) if duration is not None else None,
            "control_bytes_received": publisher.replies,
            "expect_mode": "expect"
            if self.args.expect is not None
            else ("sub-chan" if self.args.sub_chan else "broadcast"),
            "expected_events_total": sum(expected),
            "clients_complete": sum(s.complete for s in self.subscribers),
            "events_total": total,
            "events_with_timestamp": self.stats["events_with_timestamp"],
            "events_missing": sum(
                max(0, s.expected - s.events) for s in self.subscribers
            ),
            "events_extra": sum(
                max(0, s.events - s.expected) for s in self.subscribers
            ),
            "events_per_client_min": min(per_client) if per_client else 0,
            "events_per_client_max": max(per_client) if per_client else 0,
            "bytes_total": self.stats["bytes_total"],
            "read_calls": self.stats["read_calls"],
            "elapsed_publish_to_last_delivery_s": round(window, 6)
            if window is not None
            else None,
            "deliveries_per_s": round(total / window, 1) if window else None,
            "latency_ms": self.histogram.summary_ms(self.negative, self.implausible),
        }

    def _server_report(self, result: dict) -> dict:
        marks = self.marks
        baseline = self.args.baseline_rss_kb or marks["start"][2]
        connected = marks.get("headers_all", (None, None, None))[2]
        open_conns = result["still_open"] or 1
        server = {
            "pid": self.probe.pid,
            "rss_kb_baseline": baseline,
            "rss_kb_connected": connected,
            "rss_kb_publish_start": marks.get("publish_start", (0, 0, None))[2],
            "rss_kb_end": marks["end"][2],
            "rss_per_conn_bytes": None,
            "rss_per_conn_conns": result["still_open"],
            "cpu_s_connect": _difference(marks, "start", "headers_all"),
            "cpu_s_publish": None,
            "cpu_us_per_delivery": None,
        }
        if connected is not None and baseline is not None:
            server["rss_per_conn_bytes"] = round(
                (connected - baseline) * 1024 / open_conns
            )
        if self.args.hold is not None:
            server["cpu_s_publish"] = _difference(marks, "headers_all", "end")
        else:
            server["cpu_s_publish"] = _difference(marks, "publish_start", "end")
            events = result.get("events_total") or 0
            if server["cpu_s_publish"] is not None and events:
                server["cpu_us_per_delivery"] = round(
                    server["cpu_s_publish"] * 1e6 / events, 3
                )
        return server

    def close(self) -> None:
        for sub in self.subscribers:
            sub._close()
        if self.publisher is not None:
            self.publisher.close()
        self.selector.close()


def _difference(marks: dict, start: str, end: str):
    if start not in marks or end not in marks:
        return None
    if marks[start][1] is None or marks[end][1] is None:
        return None
    return round(marks[end][1] - marks[start][1], 3)


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Python fallback of sseload (the subset bench/run.py uses)."
    )
    add = parser.add_argument
    add("--port", type=int, required=True, help="SSE port on 127.0.0.1")
    add("--path", default="/", help="request path template")
    add("--clients", type=int, default=1)
    add("--max-pending", type=int, default=64)
    add("--src-ips", type=int, default=1)
    add("--sub-chan", help="channel template of client i")
    add("--control", type=int, help="control port for the publisher")
    add("--line", help="publish line template")
    add("--messages", type=int, default=0)
    add("--rate", type=float, default=0)
    add("--channels", help="a,b,c or a template on k")
    add("--payload-bytes", type=int, default=0)
    add("--settle-ms", type=int, default=200)
    add("--expect", type=int)
    add("--timeout", type=float, default=60)
    add("--idle-timeout", type=float, default=10)
    add("--hold", type=float)
    add("--server-pid", type=int)
    add("--baseline-rss-kb", type=int)
    add("--quiet", action="store_true", help="accepted for sseload compatibility")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit()
    started = time.monotonic()
    run = LoadRun(args)
    try:
        reason = run.run()
        report = run.report(reason, time.monotonic() - started)
    finally:
        run.close()
    print(json.dumps(report))
    return 0 if reason in ("complete", "hold_done") else 1


if __name__ == "__main__":
    sys.exit(main())
