"""
Benchmark of the checkout's sseserver against the targets of the project issue.

    python bench/run.py [--loads A,B,C,D] [--scale 0.05] [--runs 1] [--json out.json]
                        [--loader auto|sseload|python] [--sseload PATH]
                        [--server sseserver|floor]

For each load it starts the REAL server from this checkout (C{twistd -n sseserver}
with C{PYTHONPATH} set to the checkout, so the code measured is the code checked
out, not an installed copy), drives it with a load generator, stops it, and at the
end prints one table with every figure next to its target.  Each load gets a fresh
server, so one load's connections, garbage and heap growth do not leak into the
next one's CPU and RSS figures.

The load generator is the reference C tool C{sseload}
(C{../shared/tools/sseload/sseload} from the checkout; built with C{make} if only
its source is there).  Without it, C{bench/pyload.py} takes its place: same
arguments, same JSON, correct but slow, so its latencies are upper bounds (see
its docstring for why its CPU per delivery is not comparable).

With C{taskset} and two CPUs, the server runs on the first CPU and the load
generator on the second, so they do not compete for a core.  Everything listens on
and connects to 127.0.0.1 only.  See bench/RESULTS.md for measured figures.

C{--server floor} measures C{bench/floor} instead (built with C{make} when needed):
a minimal single-threaded C epoll server with sseserver's wire format and one
C{send()} per delivery, under the same loads, pinning and table.  Its figures are
the floor of what the kernel's loopback TCP path costs on this machine, to set
sseserver's against.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYLOAD = ROOT / "bench" / "pyload.py"
DEFAULT_SSELOAD = ROOT.parent / "shared" / "tools" / "sseload" / "sseload"
FLOOR = ROOT / "bench" / "floor"

#: fds a process needs beyond one per connection (listeners, epoll, logs, pipes).
FD_MARGIN = 100
#: Ephemeral ports kept free per source address (TIME_WAIT of earlier loads).
PORT_MARGIN = 2000
#: Other processes' CPU use (in CPUs) above which a load's figures are flagged.
OTHER_LOAD_LIMIT = 0.05
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
LISTENING = re.compile(
    r"\b(SSE|control) listening on 127\.0\.0\.1:(\d+)\s*$", re.MULTILINE
)
TWISTD_VERSIONS = re.compile(r"twistd (\S+) \((\S+) (\S+)\) starting up")
FLOOR_VERSIONS = re.compile(r"floor starting up \(C, epoll, (.+)\)")

#: Log lines of a normal start and stop at --loglevel quiet; anything else in the
#: server's log is reported as something to look at.
NORMAL_LOG = re.compile(
    r"twistd .* starting up|reactor class:|\bstarting on \d+|Starting factory|"
    r"listening on|file descriptor limit raised|Received SIG(TERM|INT)|"
    r"\(TCP Port \d+ Closed\)|Stopping factory|Main loop terminated|Server Shut Down|"
    r"floor starting up|floor: closed 0 subscriber"
)


# -- what the issue asks for --------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An upper bound on one figure (all of the issue's targets are "at most")."""

    figure: str
    limit: float
    text: str

    def met(self, value) -> bool | None:
        return None if value is None else value <= self.limit


@dataclass(frozen=True)
class Load:
    key: str
    title: str
    kind: str  # "channels": 10 channels via the control port; "hold"; "broadcast"
    subscribers: int
    messages: int = 0
    rate: float = 0  # messages per second; 0: as fast as the socket takes them
    src_ips: int = 1
    targets: tuple = ()
    description: str = ""


ALL_STREAMING = Target("not_streaming", 0, "all")
NONE_LOST = Target("lost", 0, "=0")

LOADS = {
    "A": Load(
        "A",
        "many messages",
        "channels",
        subscribers=1000,
        messages=20000,
        rate=2000,
        targets=(
            Target("cpu_us_per_delivery", 4, "≤4"),
            Target("p99_ms", 5, "≤5"),
            NONE_LOST,
            ALL_STREAMING,
        ),
        description="1,000 subscribers on 10 channels, 2,000 msg/s for 10 s "
        "through one control connection, 64-byte payloads",
    ),
    "B": Load(
        "B",
        "wide fan-out",
        "channels",
        subscribers=10000,
        messages=1000,
        rate=100,
        src_ips=4,
        targets=(
            Target("cpu_us_per_delivery", 6, "≤6"),
            Target("p99_ms", 15, "≤15"),
            NONE_LOST,
            ALL_STREAMING,
        ),
        description="10,000 subscribers on 10 channels, 100 msg/s for 10 s, "
        "each message to 1,000 subscribers",
    ),
    "C": Load(
        "C",
        "hold",
        "hold",
        subscribers=19000,
        src_ips=4,
        targets=(
            Target("rss_per_conn_kib", 4, "≤4"),
            Target("headers_all_s", 5, "≤5"),
            ALL_STREAMING,
        ),
        description="19,000 idle subscribers: memory per connection and time "
        "until all are connected and streaming",
    ),
    "D": Load(
        "D",
        "burst",
        "broadcast",
        subscribers=19000,
        messages=1,
        src_ips=4,
        targets=(Target("last_delivery_ms", 100, "≤100"), NONE_LOST, ALL_STREAMING),
        description="one broadcast (*=...) to 19,000 subscribers: time from "
        "the publish to the last delivery",
    ),
}

#: The table: (heading, figure, format).
COLUMNS = (
    ("subs", "subscribers", "{:,}"),
    ("deliveries", "deliveries", "{:,}"),
    ("deliv/s", "deliveries_per_s", "{:,.0f}"),
    ("CPU µs/deliv", "cpu_us_per_delivery", "{:.2f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("max ms", "max_ms", "{:.2f}"),
    ("RSS KiB/conn", "rss_per_conn_kib", "{:.2f}"),
    ("lost", "lost", "{:,}"),
    ("connect s", "headers_all_s", "{:.2f}"),
    ("last deliv ms", "last_delivery_ms", "{:,.1f}"),
)


@dataclass
class Plan:
    """One load at the chosen scale, after the machine's limits were applied."""

    load: Load
    subscribers: int
    messages: int
    hold_s: float
    notes: list = field(default_factory=list)


def plan(load: Load, scale: float, max_connections: int, port_budget: int) -> Plan:
    """Scale a load, then shrink it to what the fd limit and port range allow."""
    subscribers = max(1, round(load.subscribers * scale))
    messages = max(1, round(load.messages * scale)) if load.messages else 0
    hold_s = max(1.0, 5.0 * min(scale, 1.0))
    result = Plan(load, subscribers, messages, hold_s)
    if subscribers > max_connections:
        result.notes.append(
            f"scaled down from {subscribers:,} to {max_connections:,} subscribers: "
            f"the hard fd limit ({resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,}) "
            f"leaves room for no more"
        )
        result.subscribers = subscribers = max_connections
    ports = port_budget * load.src_ips
    if subscribers > ports:
        result.notes.append(
            f"scaled down from {subscribers:,} to {ports:,} subscribers: the "
            f"ephemeral port range of {load.src_ips} source address(es) is too small"
        )
        result.subscribers = ports
    return result


def max_connections() -> int:
    """Connections the server (and the client) can hold: the hard fd limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 10**9
    return max(1, hard - FD_MARGIN)


def port_budget() -> int:
    """Ephemeral ports per source address, minus some for TIME_WAIT leftovers."""
    try:
        low, high = map(
            int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        )
    except (OSError, ValueError):
        return 28000
    return max(1, high - low + 1 - PORT_MARGIN)


# -- processes ----------------------------------------------------------------------


def pinning() -> tuple:
    """C{taskset} prefixes for the server and the load generator, and a note."""
    cpus = sorted(os.sched_getaffinity(0))
    if not shutil.which("taskset"):
        return [], [], "not pinned: taskset not found"
    if len(cpus) < 2:
        return [], [], f"not pinned: only CPU {cpus} available"
    return (
        ["taskset", "-c", str(cpus[0])],
        ["taskset", "-c", str(cpus[1])],
        f"server pinned to CPU {cpus[0]}, load generator to CPU {cpus[1]}",
    )


def stop_process(process: subprocess.Popen, timeout: float) -> bool:
    """SIGTERM, then SIGKILL after C{timeout}; True when it had to be killed."""
    if process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True


class Server:
    """
    The checkout's C{twistd -n sseserver} on free loopback ports (C{tcp:0}: the
    kernel picks them, the server logs what it bound, so no other process can take
    a port between choosing and binding it).  Its log goes to a file, not a pipe,
    so a chatty server can never block on a full pipe during a measurement.
    """

    def __init__(self, twistd: str, workdir: Path, pin: list, extra: tuple = ()):
        self.log_path = workdir / "server.log"
        self.sse_port = self.control_port = None
        self.stop_info: dict = {}
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        command = pin + [
            twistd,
            "-n",
            "--pidfile=",
            "sseserver",
            "--port",
            "tcp:0:interface=127.0.0.1:backlog=1024",
            "--control",
            "tcp:0:interface=127.0.0.1",
            "--admin",
            "none",
            "--loglevel",
            "quiet",
            "--heartbeat",
            "0",
            *extra,
        ]
        self._start(command, workdir, env)

    def _start(self, command: list, workdir: Path, env: dict) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid  # taskset execs the command: same pid

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def wait_listening(self) -> None:
        """Wait for the C{SSE listening on} and C{control listening on} lines."""
        deadline = time.monotonic() + START_TIMEOUT
        while self.sse_port is None or self.control_port is None:
            for kind, port in LISTENING.findall(self.log()):
                if kind == "SSE":
                    self.sse_port = int(port)
                else:
                    self.control_port = int(port)
            if self.sse_port and self.control_port:
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log()}")
            time.sleep(0.05)

    def versions(self) -> dict:
        match = TWISTD_VERSIONS.search(self.log())
        if not match:
            return {}
        return {"twisted": match[1], "python": match[3], "interpreter": match[2]}

    def stop(self) -> dict:
        """Clean stop with SIGTERM (the server ends every stream), then kill."""
        started = time.monotonic()
        killed = stop_process(self.process, STOP_TIMEOUT)
        self.stop_info = {
            "stop_s": round(time.monotonic() - started, 2),
            "killed": killed,
            "returncode": self.process.returncode,
        }
        return self.stop_info

    def problems(self) -> list:
        """Log lines that a quiet, healthy start-run-stop does not produce."""
        return [
            line
            for line in self.log().splitlines()
            if line.strip() and not NORMAL_LOG.search(line)
        ]


class FloorServer(Server):
    """
    C{bench/floor}: the same ports, log lines and stop as L{Server}, but no Python.
    It prints how many subscribers it dropped on a full socket; any but 0 is a
    log problem.
    """

    def __init__(self, binary: str, workdir: Path, pin: list):
        self.log_path = workdir / "server.log"
        self.sse_port = self.control_port = None
        self.stop_info: dict = {}
        command = pin + [binary, "--port", "0", "--control", "0"]
        self._start(command, workdir, dict(os.environ))

    def versions(self) -> dict:
        match = FLOOR_VERSIONS.search(self.log())
        return {"compiler": match[1]} if match else {}


def build_floor() -> str:
    """C{make} in bench/floor (a no-op when the binary is up to date)."""
    build = subprocess.run(
        ["make", "-C", str(FLOOR)], capture_output=True, text=True, check=False
    )
    binary = FLOOR / "floor"
    if build.returncode != 0 or not os.access(binary, os.X_OK):
        raise SystemExit(f"run.py: building {binary} failed:\n{build.stderr}")
    return str(binary)


@dataclass
class Loader:
    """The load generator: sseload, or the Python fallback with the same CLI."""

    kind: str
    command: list
    note: str = ""

    def run(self, args: list, pin: list, workdir: Path, limit: float) -> dict:
        """Run once; its stdout is one JSON object (also when the run failed)."""
        stderr_path = workdir / "loader.stderr"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                pin + self.command + args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
            try:
                out, _ = process.communicate(timeout=limit)
            finally:
                stop_process(process, 5)
        text = out.decode("utf-8", "replace").strip()
        try:
            return json.loads(text.splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(
                f"{self.kind} exited with {process.returncode} without a JSON "
                f"report:\n{stderr_path.read_text('utf-8', 'replace')[-2000:]}"
            ) from None


def find_loader(choice: str, sseload: Path) -> Loader:
    """sseload when it is there (built from source if need be), else pyload."""
    python = Loader(
        "python",
        [sys.executable, str(PYLOAD)],
        "Python fallback load client: latencies and times are upper "
        "bounds; CPU/delivery is not comparable with sseload's (a slow "
        "reader lets the server batch writes)",
    )
    if choice == "python":
        return python
    if not sseload.exists() and (sseload.parent / "Makefile").exists():
        build = subprocess.run(
            ["make", "-C", str(sseload.parent)],
            capture_output=True,
            text=True,
            check=False,
        )
        if build.returncode != 0:
            print(f"building sseload failed:\n{build.stderr}", file=sys.stderr)
    if os.access(sseload, os.X_OK):
        return Loader("sseload", [str(sseload)])
    if choice == "sseload":
        raise SystemExit(f"run.py: no sseload at {sseload}")
    python.note += f" (no sseload at {sseload})"
    return python


class OtherLoad:
    """
    CPU time that processes other than ours used while a load ran.  The figures
    are only comparable when the machine was otherwise idle, and a benchmark on a
    shared machine should say when it was not.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
        ours = [
            resource.getrusage(who)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ]
        return (
            time.monotonic(),
            busy / os.sysconf("SC_CLK_TCK"),
            sum(r.ru_utime + r.ru_stime for r in ours),
        )

    def cpus(self) -> float:
        """Other processes' CPU use since start, in CPUs (1.0: one core busy)."""
        end = self._sample()
        elapsed = end[0] - self.start[0]
        other = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, other / elapsed) if elapsed > 0 else 0.0


# -- one load -----------------------------------------------------------------------


def loader_timeout(p: Plan, loader: Loader) -> float:
    """The load generator's own time limit: generous, the slow fallback more so."""
    duration = p.messages / p.load.rate if p.load.rate else 0
    return duration + (60 if loader.kind == "sseload" else 600)


def loader_args(p: Plan, server: Server, timeout: float) -> list:
    """sseload's command line for one load (pyload takes the same)."""
    load = p.load
    options = {
        "--port": server.sse_port,
        "--clients": p.subscribers,
        "--server-pid": server.pid,
        "--timeout": timeout,
    }
    if load.src_ips > 1:
        options["--src-ips"] = load.src_ips
    if load.kind == "hold":
        options.update({"--path": "/sse/chan{i%10}", "--hold": p.hold_s})
    elif load.kind == "channels":
        options.update(
            {
                "--path": "/sse/{chan}",
                "--sub-chan": "chan{i%10}",
                "--control": server.control_port,
                "--line": "{chan}={payload}",
                "--channels": "chan{k%10}",
                "--messages": p.messages,
                "--rate": load.rate,
                "--payload-bytes": 64,
            }
        )
    else:  # a broadcast every subscriber receives, whatever its channel
        options.update(
            {
                "--path": "/sse/chan{i%10}",
                "--control": server.control_port,
                "--line": "*={payload}",
                "--messages": p.messages,
                "--expect": p.messages,
                "--payload-bytes": 64,
            }
        )
    return ["--quiet"] + [str(x) for pair in options.items() for x in pair]


def run_load(
    p: Plan, loader: Loader, program: str, pins: tuple, workdir: Path, kind=Server
) -> dict:
    """Start a fresh server, run the load generator against it, stop the server."""
    workdir.mkdir(parents=True, exist_ok=True)
    other = OtherLoad()
    server = kind(program, workdir, pins[0])
    try:
        server.wait_listening()
        timeout = loader_timeout(p, loader)
        args = loader_args(p, server, timeout)
        raw = loader.run(args, pins[1], workdir, timeout + p.hold_s + 60)
    finally:
        server.stop()
    other_cpus = other.cpus()
    notes = list(p.notes)
    if other_cpus > OTHER_LOAD_LIMIT:
        notes.append(
            f"other processes kept {other_cpus:.2f} CPUs busy during this "
            "load: its figures are disturbed"
        )
    return {
        "load": p.load.key,
        "title": p.load.title,
        "description": p.load.description,
        "parameters": {
            "subscribers": p.subscribers,
            "messages": p.messages,
            "rate": p.load.rate,
            "src_ips": p.load.src_ips,
            "hold_s": p.hold_s if p.load.kind == "hold" else None,
        },
        "loader_args": args,
        **evaluate(p.load, figures(raw)),
        "other_processes_cpus": round(other_cpus, 3),
        "notes": notes + observations(raw, server),
        "server": {
            "versions": server.versions(),
            **server.stop_info,
            "log_problems": server.problems(),
        },
        "raw": raw,
    }


#: Figures that must hold in every run: their worst run counts, not the median.
WORST_OF_RUNS = ("lost", "not_streaming")


def combine(load: Load, results: list) -> dict:
    """
    Several runs of one load as one result: the median of each figure (of a
    count, the lower middle one; the worst run for L{WORST_OF_RUNS}), judged
    against the targets; every run's figures are kept under C{runs}.
    """
    if len(results) == 1:
        return results[0]
    values = {}
    for key, first in results[0]["figures"].items():
        numbers = [r["figures"][key] for r in results]
        if not all(isinstance(n, (int, float)) for n in numbers):
            values[key] = first
        elif key in WORST_OF_RUNS:
            values[key] = max(numbers)
        elif all(isinstance(n, int) for n in numbers):
            values[key] = statistics.median_low(numbers)
        else:
            values[key] = statistics.median(numbers)
    combined = dict(results[0], **evaluate(load, values))
    combined["runs"] = [r["figures"] for r in results]
    combined["notes"] = [
        f"run {number}: {note}"
        for number, r in enumerate(results, 1)
        for note in r["notes"]
    ]
    combined["server"] = dict(
        results[0]["server"],
        log_problems=[line for r in results for line in r["server"]["log_problems"]],
    )
    return combined


def figures(raw: dict) -> dict:
    """The table's figures from a load generator report (None: not measured)."""
    server = raw.get("server") or {}
    latency = raw.get("latency_ms") or {}
    hold = raw.get("mode") == "hold"
    requested = raw.get("clients_requested", 0)
    streaming = min(raw.get("http_ok", 0), raw.get("still_open", 0))
    window = raw.get("elapsed_publish_to_last_delivery_s")
    rss = server.get("rss_per_conn_bytes")
    lost = None
    if not hold and raw.get("expected_events_total") is not None:
        lost = raw["expected_events_total"] - raw.get("events_total", 0)
    return {
        "subscribers": requested,
        "not_streaming": requested - streaming,
        "deliveries": None if hold else raw.get("events_total"),
        "deliveries_per_s": None if hold else raw.get("deliveries_per_s"),
        "cpu_us_per_delivery": server.get("cpu_us_per_delivery"),
        "server_cpu_s": server.get("cpu_s_publish"),
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
        "max_ms": latency.get("max"),
        "rss_per_conn_kib": None if rss is None else round(rss / 1024, 2),
        "lost": lost,
        "headers_all_s": raw.get("headers_all_s"),
        "last_delivery_ms": None if window is None else round(window * 1000, 1),
        "loadgen_cpu_utilization": raw.get("loadgen_cpu_utilization"),
        "stop_reason": raw.get("stop_reason"),
    }


def evaluate(load: Load, values: dict) -> dict:
    """The figures, the targets and whether each target was met."""
    targets = {
        t.figure: {"limit": t.limit, "text": t.text, "met": t.met(values[t.figure])}
        for t in load.targets
    }
    return {
        "figures": values,
        "targets": targets,
        "all_met": all(t["met"] for t in targets.values()),
    }


def observations(raw: dict, server: Server) -> list:
    """Anything in a run that is not how a healthy run looks, in words."""
    notes = []
    if raw.get("stop_reason") not in ("complete", "hold_done"):
        notes.append(f"load generator stopped: {raw.get('stop_reason')}")
    if raw.get("connect_failed"):
        notes.append(
            f"{raw['connect_failed']} connects failed, first: "
            f"{raw.get('first_connect_error')}"
        )
    statuses = {k: v for k, v in (raw.get("http_statuses") or {}).items() if k != "200"}
    if statuses:
        notes.append(f"non-200 responses: {statuses}")
    for key, first in (
        ("disconnected_early", "first_disconnect"),
        ("protocol_errors", "first_protocol_error"),
        ("publish_errors", "first_publish_error"),
    ):
        if raw.get(key):
            notes.append(f"{key}: {raw[key]} ({raw.get(first)})")
    for key in (
        "events_extra",
        "read_errors",
        "control_bytes_received",
        "not_event_stream_content_type",
    ):
        if raw.get(key):
            notes.append(f"{key}: {raw[key]}")
    if raw.get("loadgen_saturated"):
        notes.append("load generator saturated (figures include its own queueing)")
    if server.stop_info.get("killed"):
        notes.append(f"server ignored SIGTERM for {STOP_TIMEOUT:.0f} s and was killed")
    problems = server.problems()
    if problems:
        notes.append(
            f"{len(problems)} unexpected server log line(s), first: {problems[0][:300]}"
        )
    return notes


# -- the report ---------------------------------------------------------------------


def cell(result: dict, figure: str, fmt: str) -> str:
    """A figure, with its target and verdict when the load has one for it."""
    value = result["figures"].get(figure)
    text = "-" if value is None else fmt.format(value)
    target = result["targets"].get(figure)
    if target is not None:
        verdict = {True: "ok", False: "MISS", None: "?"}[target["met"]]
        text += f" ({target['text']} {verdict})"
    return text


def table(results: list) -> str:
    headings = ["load"] + [c[0] for c in COLUMNS]
    rows = [
        [f"{r['load']} {r['title']}"] + [cell(r, f, fmt) for _, f, fmt in COLUMNS]
        for r in results
    ]
    for r, row in zip(results, rows):
        if (
            r["targets"].get("not_streaming")
            and not r["targets"]["not_streaming"]["met"]
        ):
            row[1] += f" ({r['figures']['not_streaming']:,} not streaming)"
    widths = [max(len(x[i]) for x in [headings] + rows) for i in range(len(headings))]

    def line(values):
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths))
        ).rstrip()

    out = [line(headings), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def machine() -> dict:
    """What the figures were measured on."""
    model = ""
    try:
        lscpu = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout
        model = next(
            (
                l.split(":", 1)[1].strip()
                for l in lscpu.splitlines()
                if l.startswith("Model name")
            ),
            "",
        )
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "fd_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def commit(code: tuple = ("sseserver", "twisted")) -> str:
    """The checkout's short commit, with C{+dirty} when the server code changed."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--",
                *code,
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the checkout's sseserver (loads A-D of the issue)."
    )
    parser.add_argument(
        "--loads",
        default="A,B,C,D",
        help="comma-separated loads to run (default A,B,C,D)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply subscriber and message counts (e.g. 0.05)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="run each load this many times; the table shows the medians",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--loader",
        choices=("auto", "sseload", "python"),
        default="auto",
        help="load generator (auto: sseload when available)",
    )
    parser.add_argument(
        "--sseload",
        type=Path,
        default=DEFAULT_SSELOAD,
        help=f"sseload binary (default {DEFAULT_SSELOAD})",
    )
    parser.add_argument(
        "--twistd",
        default=str(Path(sys.executable).with_name("twistd")),
        help="twistd to run the server with (default: next to python)",
    )
    parser.add_argument(
        "--server",
        choices=("sseserver", "floor"),
        default="sseserver",
        help="server to measure (floor: the minimal C server in bench/floor)",
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        help="keep server logs and loader stderr in this directory",
    )
    args = parser.parse_args(argv)
    args.loads = [k.strip().upper() for k in args.loads.split(",") if k.strip()]
    unknown = [k for k in args.loads if k not in LOADS]
    if unknown or not args.loads:
        parser.error(f"--loads: unknown load(s) {unknown}; choose from A,B,C,D")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if not Path(args.twistd).exists():
        found = shutil.which("twistd")
        if not found:
            parser.error(f"no twistd at {args.twistd}; give --twistd")
        args.twistd = found
    return args


def _terminate(signum, frame):
    """SIGTERM to run.py unwinds like Ctrl-C, so every child gets stopped."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    loader = find_loader(args.loader, args.sseload)
    server_pin, loader_pin, pin_note = pinning()
    plans = [
        plan(LOADS[k], args.scale, max_connections(), port_budget()) for k in args.loads
    ]
    if args.server == "floor":
        program, kind, code = build_floor(), FloorServer, ("bench/floor",)
    else:
        program, kind, code = args.twistd, Server, ("sseserver", "twisted")
    report = {
        "server": args.server,
        "commit": commit(code),
        "scale": args.scale,
        "loader": loader.kind,
        "machine": machine(),
        "pinning": pin_note,
        "notes": [n for n in (loader.note,) if n],
        "loads": [],
    }
    workroot = args.keep_logs or Path(tempfile.mkdtemp(prefix="sseserver-bench-"))
    try:
        for p in plans:
            print(
                f"load {p.load.key} ({p.load.title}): {p.subscribers:,} subscribers"
                f"{f', {p.messages:,} message(s)' if p.messages else ''} ...",
                file=sys.stderr,
                flush=True,
            )
            results = [
                run_load(
                    p,
                    loader,
                    program,
                    (server_pin, loader_pin),
                    workroot / f"{p.load.key}{number}",
                    kind,
                )
                for number in range(1, args.runs + 1)
            ]
            result = combine(p.load, results)
            report["loads"].append(result)
            report.setdefault("versions", result["server"]["versions"])
    finally:
        if args.keep_logs is None:
            shutil.rmtree(workroot, ignore_errors=True)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def heading(key: str) -> str:
    return next((h for h, k, _ in COLUMNS if k == key), key)


def run_summary(result: dict, figures: dict) -> str:
    """One run's figures that have a target, for the lines under the table."""
    formats = {key: fmt for _, key, fmt in COLUMNS}
    return ", ".join(
        formats.get(key, "{}").format(figures[key])
        for key in result["targets"]
        if figures.get(key) is not None
    )


def print_report(report: dict) -> None:
    versions = report.get("versions", {})
    m = report["machine"]
    if report.get("server") == "floor":
        server = "floor (bench/floor, minimal C epoll server)"
        built = f"cc {versions.get('compiler', '?')}"
    else:
        server = "sseserver"
        built = (
            f"Python {versions.get('python', '?')}, "
            f"Twisted {versions.get('twisted', '?')}"
        )
    print(
        f"{server} {report['commit']}, scale {report['scale']}, loader "
        f"{report['loader']}; {m['nproc']} CPUs ({m['cpu_model']}), {built}; "
        f"{report['pinning']}"
    )
    print()
    print(table(report["loads"]))
    spread = [r for r in report["loads"] if len(r.get("runs", ())) > 1]
    if spread:
        print()
    for r in spread:
        names = ", ".join(heading(key) for key in r["targets"])
        print(
            f"{r['load']}: medians of {len(r['runs'])} runs; {names} in each run:",
            " | ".join(run_summary(r, figures) for figures in r["runs"]),
        )
    notes = list(report["notes"])
    for r in report["loads"]:
        notes += [f"{r['load']}: {n}" for n in r["notes"]]
    if notes:
        print()
        for n in notes:
            print(f"note: {n}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; server and load generator stopped", file=sys.stderr)
        sys.exit(130)
