"""
End-to-end tests of the admin listener (SPEC §9) against the real
C{twistd -n sseserver}: C{/metrics} read with prometheus_client's own parser and
checked against a known scenario, C{/healthz}, C{/status} and C{/clients} exactly.
"""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest
from conftest import END, TIMEOUT, ControlClient, Stream, fifo_write, until_marker
from prometheus_client.parser import text_string_to_metric_families

from sseserver import __version__

ADMIN = ("--admin", "tcp:0:interface=127.0.0.1")
LOOPBACK = "tcp:0:interface=127.0.0.1"


def get(server, path: str, method: str = "GET") -> httpx.Response:
    return httpx.request(
        method, f"http://127.0.0.1:{server.admin_port}{path}", timeout=TIMEOUT
    )


def scrape(server) -> dict:
    """Every sample of /metrics: {(name, (sorted label items)): value}."""
    response = get(server, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples[(sample.name, labels)] = sample.value
    return samples


def sseserver_samples(samples: dict) -> dict:
    return {k: v for k, v in samples.items() if k[0].startswith("sseserver_")}


def metric(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in sseserver_samples(after).items()}


def wire(block: bytes) -> int:
    """Bytes of an event as encoded (its block plus the blank line)."""
    return len(block) + 2


# --- /metrics ---------------------------------------------------------------------------


def test_metrics_of_a_fresh_server(start_server):
    server = start_server(*ADMIN)
    samples = scrape(server)
    zero = {
        ("sseserver_subscribers", ()): 0,
        ("sseserver_connections", ()): 0,
        ("sseserver_subscriptions", (("kind", "channel"),)): 0,
        ("sseserver_subscriptions", (("kind", "all"),)): 0,
        ("sseserver_channels", ()): 0,
        ("sseserver_events_total", (("input", "control"),)): 0,
        ("sseserver_events_total", (("input", "fifo"),)): 0,
        ("sseserver_events_total", (("input", "http"),)): 0,
        ("sseserver_events_total", (("input", "redis"),)): 0,
        ("sseserver_deliveries_total", ()): 0,
        ("sseserver_bytes_sent_total", ()): 0,
        ("sseserver_disconnects_total", (("reason", "client"),)): 0,
        ("sseserver_disconnects_total", (("reason", "slow"),)): 0,
        ("sseserver_disconnects_total", (("reason", "server"),)): 0,
        ("sseserver_slow_client_drops_total", ()): 0,
        ("sseserver_replay_requests_total", ()): 0,
        ("sseserver_replay_gaps_total", ()): 0,
        ("sseserver_replays_cut_total", ()): 0,
        ("sseserver_control_errors_total", ()): 0,
        ("sseserver_history_events", ()): 0,
        ("sseserver_build_info", (("version", __version__),)): 1,
    }
    assert sseserver_samples(samples) == zero
    # the process's own metrics come along
    assert samples[("process_open_fds", ())] > 0


def test_metrics_of_a_known_scenario(start_server, tmp_path):
    fifo = tmp_path / "sse.fifo"
    server = start_server(
        *ADMIN, "--http-publish", "--fifo", str(fifo), "--history", "5"
    )
    before = scrape(server)

    witness = Stream(server.port, "/sse")  # all channels: sees every event
    ab = Stream(server.port, "/sse/a/b")
    hasses = Stream(server.port, "/sse?subscribe=a&id=u1")
    old = Stream(server.port, "/sse/b", version="HTTP/1.0")

    # control: 3 events (3, 3 and 1 subscribers reached), 3 refused lines
    with ControlClient(server.control_port) as control:
        control.send(b'a=x\nb/t=yy\nc=z\nbogus\na/\x01=x\njson {"data": 1}\n')
        for _ in range(3):
            assert "error" in control.reply()
    # fifo: 1 event (3)
    fifo_write(fifo, b"a=from the fifo\n")
    until_marker(witness, b"from the fifo")
    # http: GET (3), POST with two broadcasts (4 each)
    base = f"http://127.0.0.1:{server.port}"
    assert httpx.get(f"{base}/sse/b?message=g").text == "OK\r\n"
    posted = httpx.post(
        f"{base}/sse",
        json=[{"data": "p1", "target": "*"}, {"data": "p2", "target": "*"}],
    )
    assert posted.json()["delivered"] == 8
    events = until_marker(witness, b"p2")
    reached = [3, 3, 1, 3, 3, 4, 4]
    assert len(events) == len(reached)
    sizes = [wire(block) for block in events]
    first_id = re.match(rb"id: (\S+)", events[0])[1].decode()

    # replay (the history keeps the last 5: the first two were evicted, so both
    # ids below are gaps): /sse/c after the first event gets the gap event, c=z
    # and the two broadcasts; /sse/none from 1-0 the gap event and the two
    # broadcasts; a malformed id is no replay request
    replayed = Stream(server.port, "/sse/c", headers={"Last-Event-ID": first_id})
    gap = Stream(server.port, "/sse/none", headers={"Last-Event-ID": "1-0"})
    fresh = Stream(server.port, "/sse/none", headers={"Last-Event-ID": "bad"})
    gap_event = b"event: sseserver-gap\ndata: " + events[2][4:].split(b"\n")[0]
    assert replayed.read_events(4) == [gap_event, events[2], events[5], events[6]]
    assert gap.read_events(3) == [gap_event, events[5], events[6]]
    replay_bytes = sizes[2] + 2 * (sizes[5] + sizes[6]) + 2 * wire(gap_event)

    # disconnects: one closed by its peer
    hasses.close()
    old.close()
    deadline = time.monotonic() + TIMEOUT
    while server.command(b"tcpstatus")["sseconncli"] != 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    after = scrape(server)
    changed = {k: v for k, v in delta(after, before).items() if v}
    assert changed == {
        ("sseserver_subscribers", ()): 5,
        ("sseserver_connections", ()): 5,
        # witness (all); ab (a, b); replayed (c); gap, fresh (none)
        ("sseserver_subscriptions", (("kind", "channel"),)): 5,
        ("sseserver_subscriptions", (("kind", "all"),)): 1,
        ("sseserver_channels", ()): 4,
        ("sseserver_events_total", (("input", "control"),)): 3,
        ("sseserver_events_total", (("input", "fifo"),)): 1,
        ("sseserver_events_total", (("input", "http"),)): 3,
        ("sseserver_deliveries_total", ()): sum(reached) + 3 + 2,
        ("sseserver_bytes_sent_total", ()): sum(
            size * count for size, count in zip(sizes, reached)
        )
        + replay_bytes,
        ("sseserver_disconnects_total", (("reason", "client"),)): 2,
        ("sseserver_replay_requests_total", ()): 2,
        ("sseserver_replay_gaps_total", ()): 2,
        ("sseserver_control_errors_total", ()): 3,
        ("sseserver_history_events", ()): 5,
    }
    status = server.command(b"tcpstatus")
    assert metric(after, "sseserver_subscribers") == status["sseconncli"]
    assert metric(after, "sseserver_connections") == status["allconncli"]
    assert metric(after, "sseserver_deliveries_total") == status["msgsendcnt"]
    assert status["msgproccnt"] == 7
    for stream in (witness, ab, replayed, gap, fresh):
        stream.close()


def test_slow_client_drop_is_counted(start_server):
    server = start_server(*ADMIN, "--max-client-buffer", "100000")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /sse/slow HTTP/1.1\r\nHost: x\r\n\r\n")  # never read
    server.wait_for_log(r"subscriber <\d+> \S+ connected: slow")
    mark = server.mark()
    chunk = b"slow=" + b"x" * 60000 + b"\n"
    deadline = time.monotonic() + TIMEOUT * 2
    while True:
        server.control(chunk * 20)
        try:
            server.wait_for_log(r"dropped: more unsent data", start=mark, timeout=0.2)
            break
        except AssertionError:
            assert time.monotonic() < deadline
    while metric(scrape(server), "sseserver_subscribers"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    samples = scrape(server)
    assert metric(samples, "sseserver_slow_client_drops_total") == 1
    assert metric(samples, "sseserver_disconnects_total", reason="slow") == 1
    assert metric(samples, "sseserver_disconnects_total", reason="client") == 0
    sock.close()


def test_replays_in_parts_are_server_disconnects(start_server):
    server = start_server(*ADMIN, "--max-client-buffer", "70000")
    first = Stream(server.port, "/sse/a")
    server.control(b"a=first\n")
    first_id = re.match(rb"id: (\S+)", first.read_events(1)[0])[1].decode()
    first.close()
    server.control(b"".join(b"a=%d %s\n" % (n, b"x" * 2000) for n in range(500)))
    stream = Stream(server.port, "/sse/a", headers={"Last-Event-ID": first_id})
    time.sleep(0.1)
    stream.read_to_end()
    assert stream.finished
    deadline = time.monotonic() + TIMEOUT
    while metric(scrape(server), "sseserver_subscribers"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    samples = scrape(server)
    assert metric(samples, "sseserver_replays_cut_total") == 1
    assert metric(samples, "sseserver_disconnects_total", reason="server") == 1
    assert metric(samples, "sseserver_disconnects_total", reason="client") == 1


# --- /healthz, /status, /clients ------------------------------------------------------------


def test_healthz(start_server):
    server = start_server(*ADMIN)
    response = get(server, "/healthz")
    assert response.status_code == 200
    assert response.content == b"ok"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert get(server, "/healthz", "HEAD").status_code == 200


def test_status(start_server):
    server = start_server(*ADMIN, "--port", LOOPBACK, "--port", LOOPBACK, sse=2)
    streams = [Stream(server.port, "/sse/a"), Stream(server.sse_ports[1], "/sse")]
    server.control(b"a=1\nb=2\n")
    for stream in streams:
        stream.read_events(1)
    response = get(server, "/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    status = response.json()
    assert set(status) == {
        "version",
        "runningtime",
        "mode",
        "loglevel",
        "allconncli",
        "sseconncli",
        "maxconncli",
        "msgproccnt",
        "msgsendcnt",
        "reinitcnt",
        "listeners",
        "uptime_s",
    }
    assert re.fullmatch(r"\d\d:\d\d:\d\d", status.pop("runningtime"))
    uptime = status.pop("uptime_s")
    assert isinstance(uptime, int) and 0 <= uptime < 60
    address = "127.0.0.1:%d"
    assert status == {
        "version": __version__,
        "mode": "unencrypted (http)",
        "loglevel": 1,
        "allconncli": 2,
        "sseconncli": 2,
        "maxconncli": 2,
        "msgproccnt": 2,
        "msgsendcnt": 3,
        "reinitcnt": 0,
        "listeners": [
            {
                "kind": "SSE",
                "endpoint": LOOPBACK,
                "address": address % server.sse_ports[0],
            },
            {
                "kind": "SSE",
                "endpoint": LOOPBACK,
                "address": address % server.sse_ports[1],
            },
            {
                "kind": "control",
                "endpoint": LOOPBACK,
                "address": address % server.control_port,
            },
            {
                "kind": "admin",
                "endpoint": LOOPBACK,
                "address": address % server.admin_port,
            },
        ],
    }
    tcpstatus = server.command(b"tcpstatus")
    del tcpstatus["runningtime"]
    assert {k: v for k, v in status.items() if k in tcpstatus} == tcpstatus


def test_clients(start_server):
    server = start_server(*ADMIN)
    assert get(server, "/clients").json() == {"clients": []}
    one = Stream(server.port, "/sse/a/b", headers={"User-Agent": "agent one"})
    two = Stream(server.port, "/sse?subscribe=*&id=u1")
    three = Stream(
        server.port, "/sse/x", version="HTTP/1.0", headers={"User-Agent": "\x7fodd"}
    )
    server.control(b"a=1\nx=2\n*=" + END + b"\n")
    for stream in (one, two, three):
        until_marker(stream)

    def peer(stream):
        host, port = stream.sock.getsockname()
        return f"{host}:{port}"

    response = get(server, "/clients")
    assert response.headers["content-type"] == "application/json"
    clients = response.json()["clients"]
    for client in clients:
        assert client.pop("connected_s") in (0, 1)
    assert clients == [
        {
            "id": 1,
            "peer": peer(one),
            "channels": ["a", "b"],
            "all": False,
            "agent": "agent one",
            "messages": 2,
            "ssl": False,
        },
        {
            "id": 2,
            "peer": peer(two),
            "channels": [],
            "all": True,
            "agent": "",
            "messages": 3,
            "ssl": False,
        },
        {
            "id": 3,
            "peer": peer(three),
            "channels": ["x"],
            "all": False,
            "agent": "?odd",
            "messages": 2,
            "ssl": False,
        },
    ]


def test_other_paths_and_methods(start_server):
    server = start_server(*ADMIN)
    assert get(server, "/").status_code == 404
    assert get(server, "/metrics/x").status_code == 404
    refused = get(server, "/metrics", "POST")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"


def test_admin_listener_log_line_and_none(start_server):
    server = start_server(*ADMIN)
    server.wait_for_log(r"\] admin listening on 127\.0\.0\.1:\d+$")
    quiet = start_server("--admin", "none")
    assert not any("admin listening" in line for line in quiet.lines)


def test_admin_default_endpoint_and_bad_endpoint(tmp_path):
    from twisted.python import usage

    from sseserver.tap import Options

    options = Options()
    options.parseOptions([])
    assert options["admin"] == "tcp:8086:interface=127.0.0.1"
    assert options["history"] == 1000
    options = Options()
    with pytest.raises(usage.UsageError, match="--admin: bad endpoint"):
        options.parseOptions(["--admin", "bogus:1"])
    with pytest.raises(usage.UsageError, match="--history: not a number"):
        Options().parseOptions(["--history", "x"])
