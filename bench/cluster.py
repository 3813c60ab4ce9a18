"""
Cluster benchmark (the scale-out issue): load B (or D) of C{bench/run.py} on

    standalone   one process, no Redis
    redis        one process with --redis
    workers 2    --redis --workers 2 (a parent and two workers)

    python bench/cluster.py [--runs 3] [--scale 1.0] [--load B|D] [--json out.json]

It prints deliveries/s, p50/p99 latency, lost events and the time to the last
delivery (from sseload), and the
CPU of the whole server (the parent and its workers) and of redis-server during
the publish window, per delivery and per event; the cost Redis adds per event
is the difference with standalone.  A private redis-server runs on a free
loopback port (no persistence: the figure is the cluster's own cost, not the
disk's).

sseload's own CPU figure follows one pid (the parent, idle with workers), so the
tree's CPU is sampled here every 20 ms and read over sseload's publish window
(from the end of its connect phase plus its 200 ms settle to the last delivery).
One process is pinned to CPU 0 and sseload to CPU 1, as in run.py; with two
workers only sseload is pinned (the workers need both CPUs), so they share a core
with it on a 2-CPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py, beside this file)

SETTLE_S = 0.2  # sseload's default --settle-ms
TICK = os.sysconf("SC_CLK_TCK")
CONFIGS = ("standalone", "redis", "workers 2")
#: Log lines of a healthy cluster start and stop, beyond run.NORMAL_LOG's.
CLUSTER_LOG = re.compile(
    r"worker \d+ started \(pid|worker \d+ \(pid \d+\) stopped|SSE port .* shared by"
    r"|SSE accepting on|Starting reactor|cluster node \S+ connected to redis"
    r"|cluster: \d+ events loaded"
)
WORKER_PREFIX = re.compile(r"worker \d+: ")


def unexpected(server) -> list:
    """The server's log lines that a healthy cluster run does not produce."""
    return [
        line
        for line in server.problems()
        if not CLUSTER_LOG.search(line)
        and not run.NORMAL_LOG.search(WORKER_PREFIX.split(line, 1)[-1])
    ]


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


class Sampler(threading.Thread):
    """(time, CPU of the server's process tree, CPU of redis-server), every 20 ms."""

    def __init__(self, server_pid: int, redis_pid: int | None):
        super().__init__(daemon=True)
        self.server_pid, self.redis_pid = server_pid, redis_pid
        self.samples: list = []
        self.running = True
        self._seen: dict = {}  # pid -> last CPU seen (a worker may exit)

    def run(self) -> None:
        while self.running:
            for pid in [self.server_pid, *children(self.server_pid)]:
                self._seen[pid] = max(self._seen.get(pid, 0.0), cpu_seconds(pid))
            redis = cpu_seconds(self.redis_pid) if self.redis_pid else 0.0
            self.samples.append((time.monotonic(), sum(self._seen.values()), redis))
            time.sleep(0.02)

    def between(self, start: float, end: float) -> tuple:
        def at(t: float) -> tuple:
            return min(self.samples, key=lambda sample: abs(sample[0] - t))

        first, last = at(start), at(end)
        return last[1] - first[1], last[2] - first[2]


def start_redis(workdir: Path) -> tuple:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def one_run(config: str, p, loader, twistd: str, redis: tuple, workdir: Path):
    """One run of one configuration; C{redis} is (process, port)."""
    workdir.mkdir(parents=True, exist_ok=True)
    server_pin, loader_pin, _ = run.pinning()
    extra: list = []
    if config != "standalone":
        extra += ["--redis", f"redis://127.0.0.1:{redis[1]}/0", "--history", "0"]
    if config == "workers 2":
        extra += ["--workers", "2"]
        server_pin = []
    server = run.Server(twistd, workdir, server_pin, tuple(extra))
    redis_pid = redis[0].pid if config != "standalone" else None
    try:
        server.wait_listening()
        if config == "workers 2":
            wait_log(server, ["worker 1: cluster:", "worker 2: cluster:"])
        sampler = Sampler(server.pid, redis_pid)
        sampler.start()
        timeout = run.loader_timeout(p, loader)
        args = run.loader_args(p, server, timeout)
        started = time.monotonic()
        raw = loader.run(args, loader_pin, workdir, timeout + 60)
        sampler.running = False
        sampler.join()
    finally:
        server.stop()
    values = run.figures(raw)
    begin = started + (raw.get("connect_all_s") or 0) + SETTLE_S
    window = raw.get("elapsed_publish_to_last_delivery_s") or 0
    server_cpu, redis_cpu = sampler.between(begin, begin + window)
    deliveries = values["deliveries"] or 0
    events = raw.get("messages_published") or 0
    return {
        "config": config,
        "deliveries_per_s": values["deliveries_per_s"],
        "p50_ms": values["p50_ms"],
        "p99_ms": values["p99_ms"],
        "lost": values["lost"],
        "last_delivery_ms": values["last_delivery_ms"],
        "server_cpu_s": round(server_cpu, 2),
        "redis_cpu_s": round(redis_cpu, 2),
        "cpu_us_per_delivery": round(1e6 * (server_cpu + redis_cpu) / deliveries, 2)
        if deliveries
        else None,
        "cpu_ms_per_event": round(1e3 * (server_cpu + redis_cpu) / events, 3)
        if events
        else None,
        "sseload_cpu_us_per_delivery": values["cpu_us_per_delivery"],
        "log_problems": unexpected(server)[:5],
    }


def wait_log(server, needles: list) -> None:
    deadline = time.monotonic() + run.START_TIMEOUT
    while not all(needle in server.log() for needle in needles):
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start:\n{server.log()}")
        time.sleep(0.05)


def summary(results: list) -> list:
    """The median of each figure per configuration."""
    rows = []
    for config in CONFIGS:
        runs = [r for r in results if r["config"] == config]
        if not runs:
            continue
        row = {"config": config, "runs": len(runs)}
        for key in runs[0]:
            values = [r[key] for r in runs if isinstance(r[key], (int, float))]
            if key != "config" and values:
                row[key] = statistics.median(values)
        rows.append(row)
    standalone = next((r for r in rows if r["config"] == "standalone"), None)
    for row in rows:
        if standalone and row is not standalone and "cpu_ms_per_event" in row:
            row["redis_cost_ms_per_event"] = round(
                row["cpu_ms_per_event"] - standalone["cpu_ms_per_event"], 3
            )
    return rows


COLUMNS = (
    ("configuration", "config", "{}"),
    ("deliv/s", "deliveries_per_s", "{:,.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("lost", "lost", "{:,.0f}"),
    ("last deliv ms", "last_delivery_ms", "{:,.1f}"),
    ("server CPU s", "server_cpu_s", "{:.2f}"),
    ("redis CPU s", "redis_cpu_s", "{:.2f}"),
    ("µs/deliv (all)", "cpu_us_per_delivery", "{:.2f}"),
    ("ms/event", "cpu_ms_per_event", "{:.3f}"),
    ("Redis adds ms/event", "redis_cost_ms_per_event", "{:+.3f}"),
)


def table(rows: list) -> str:
    cells = [[h for h, _, _ in COLUMNS]] + [
        [fmt.format(r[k]) if r.get(k) is not None else "-" for _, k, fmt in COLUMNS]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--twistd", default=str(Path(sys.executable).with_name("twistd"))
    )
    parser.add_argument("--sseload", type=Path, default=run.DEFAULT_SSELOAD)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--load",
        choices=("B", "D"),
        default="B",
        help="B: wide fan-out (default); D: one broadcast to 19,000",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="messages per second (default: load B's 100; 0: as fast as taken)",
    )
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",")]
    loader = run.find_loader("auto", args.sseload)
    load = run.LOADS[args.load]
    if args.rate is not None:
        load = dataclasses.replace(load, rate=args.rate)
    p = run.plan(load, args.scale, run.max_connections(), run.port_budget())
    workroot = Path(tempfile.mkdtemp(prefix="sseserver-cluster-bench-"))
    redis = start_redis(workroot)
    results = []
    try:
        for number in range(args.runs):
            for config in configs:
                print(f"run {number + 1}: {config} ...", file=sys.stderr, flush=True)
                results.append(
                    one_run(
                        config,
                        p,
                        loader,
                        args.twistd,
                        redis,
                        workroot / f"{number}-{config.replace(' ', '')}",
                    )  # fmt: skip
                )
    finally:
        redis[0].terminate()
        redis[0].wait(10)
        shutil.rmtree(workroot, ignore_errors=True)
    rows = summary(results)
    print(
        f"load {args.load} at scale {args.scale}: {p.subscribers:,} subscribers, "
        f"{p.messages:,} messages at {p.load.rate:.0f}/s; loader {loader.kind}; "
        f"median of {args.runs} run(s)"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
