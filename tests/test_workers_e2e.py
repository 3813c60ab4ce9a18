"""
End-to-end tests of C{--workers N} (SPEC §11): the real C{twistd sseserver}
parent, its worker processes on the shared SSE port, a real redis-server.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter

import pytest
from conftest import END, TIMEOUT, Stream, until_marker
from test_options_e2e import LOOPBACK, run_twistd
from test_tls_e2e import ca, tls, tls_stream  # noqa: F401 (fixtures)


def start_pool(start_server, redis_url: str, *args: str, workers: int = 2):
    server = start_server("--redis", redis_url, "--workers", str(workers), *args)
    for number in range(1, workers + 1):
        server.wait_for_log(rf"worker {number}: cluster: \d+ events loaded")
    return server


def worker_pids(server) -> dict:
    """The pid of each worker, as the parent last started it."""
    pids = {}
    for line in server.lines:
        match = re.search(r"worker (\d+) started \(pid (\d+)\)", line)
        if match:
            pids[int(match[1])] = int(match[2])
    return pids


def subscribers_by_worker(server, start: int = 0) -> Counter:
    counts: Counter = Counter()
    for line in server.lines[start:]:
        match = re.search(r"worker (\d+): subscriber <\d+> \S+ connected", line)
        if match:
            counts[int(match[1])] += 1
    return counts


def wait_cluster_subscribers(server, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        status = server.command(b"tcpstatus")
        if status["cluster"]["sseconncli"] == count:
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def data_of(stream: Stream) -> list:
    return [block.split(b"data: ")[1] for block in until_marker(stream)]


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process {pid} still there"
        time.sleep(0.05)


def test_two_workers_share_the_port_and_all_subscribers_get_each_event(
    start_server, redis_server
):
    redis = redis_server()
    server = start_pool(start_server, redis.url)
    assert len(server.sse_ports) == 1
    streams = [Stream(server.port, "/sse/a") for _ in range(40)]
    wait_cluster_subscribers(server, 40)
    spread = subscribers_by_worker(server)
    assert sorted(spread) == [1, 2] and sum(spread.values()) == 40, spread
    assert server.command(b"tcpstatus")["cluster"]["nodes"] == 3  # parent + 2

    server.control(b"a=to everyone\na=" + END + b"\n")
    received = [bytes(b"\n\n".join(until_marker(stream))) for stream in streams]
    assert len(set(received)) == 1  # the same bytes, ids included, on every stream
    assert [data_of(stream) for stream in streams] == [[b"to everyone", END]] * 40


def test_a_crashed_worker_is_restarted_and_the_others_carry_on(
    start_server, redis_server
):
    redis = redis_server()
    server = start_pool(start_server, redis.url)
    streams = [Stream(server.port, "/sse/a") for _ in range(30)]
    wait_cluster_subscribers(server, 30)
    on_second = subscribers_by_worker(server)[2]
    assert 0 < on_second < 30

    crashed = worker_pids(server)[1]
    mark = server.mark()
    os.kill(crashed, signal.SIGKILL)
    server.wait_for_log(rf"worker 1 \(pid {crashed}\) exited .*; restarting it", mark)
    server.wait_for_log(r"worker 1: cluster: \d+ events loaded", mark)
    assert worker_pids(server)[1] != crashed

    server.control(b"a=after the crash\na=" + END + b"\n")
    alive = []
    for stream in streams:
        try:
            alive.append(data_of(stream))
        except AssertionError:
            assert stream.closed  # it was on the worker that died
    assert alive == [[b"after the crash", END]] * on_second

    # The new worker 1 takes new subscribers again.
    mark = server.mark()
    more = [Stream(server.port, "/sse/a") for _ in range(20)]
    wait_cluster_subscribers(server, on_second + 20)
    assert sorted(subscribers_by_worker(server, mark)) == [1, 2]
    server.control(b"a=" + END + b"\n")
    assert [data_of(stream) for stream in more] == [[END]] * 20


def test_workers_end_their_streams_when_the_parent_stops(start_server, redis_server):
    redis = redis_server()
    server = start_pool(start_server, redis.url)
    streams = [Stream(server.port, "/sse/a") for _ in range(10)]
    wait_cluster_subscribers(server, 10)
    pids = worker_pids(server)
    server.stop()
    for stream in streams:
        stream.read_to_end()
        assert stream.finished  # the final chunk, not a cut
    for pid in pids.values():
        wait_gone(pid)


def test_workers_stop_when_the_parent_is_killed(start_server, redis_server):
    redis = redis_server()
    server = start_pool(start_server, redis.url)
    pids = worker_pids(server)
    server.process.kill()
    server.process.wait(TIMEOUT)
    for pid in pids.values():
        wait_gone(pid)


@pytest.mark.parametrize(
    "args, error",
    [
        (["--workers", "2"], "--workers: needs --redis (the workers share events"),
        (
            ["--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--port", "unix:s"],
            "--workers: 'unix:s': workers share tcp: and ssl: ports only",
        ),
        (["--workers", "0"], "--workers: must be at least 1: '0'"),
        (["--redis", "http://x"], "--redis: not a redis:// or unix:// URL"),
    ],
)
def test_bad_cluster_option_is_a_one_line_error(tmp_path, args, error):
    status, lines = run_twistd(
        ["-n", "--pidfile=", "sseserver", "--control", LOOPBACK, *args], tmp_path
    )
    assert status != 0
    errors = [line for line in lines if error in line]
    assert len(errors) == 1, lines
    assert [line for line in lines if line.strip()][-1] == errors[0]
    assert not any("listening on" in line for line in lines)


def test_workers_share_a_tls_port_next_to_a_plain_one(start_server, redis_server, tls):
    endpoint, context = tls
    redis = redis_server()
    server = start_server(
        "--redis", redis.url, "--workers", "2",
        "--port", "tcp:0:interface=127.0.0.1", "--port", endpoint,
        sse=2,
    )  # fmt: skip
    for number in (1, 2):
        server.wait_for_log(rf"worker {number}: cluster: \d+ events loaded")
    plain_port, tls_port = server.sse_ports
    secure = [tls_stream(tls_port, context, "/sse/a") for _ in range(12)]
    plain = [Stream(plain_port, "/sse/a") for _ in range(12)]
    wait_cluster_subscribers(server, 24)
    assert sorted(subscribers_by_worker(server)) == [1, 2]
    server.control(b"a=over TLS and not\na=" + END + b"\n")
    # Read through verified TLS: a frame written to the socket in the clear
    # would have broken the TLS records of the secure streams.
    for stream in secure + plain:
        assert data_of(stream) == [b"over TLS and not", END]
