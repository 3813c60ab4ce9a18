"""
Failover of a browser between cluster nodes, with real peers: a real
redis-server, two C{twistd -n sseserver --redis} nodes, Debian's nginx running
the shipped cluster example (C{etc/nginx/sseserver-cluster.conf}: C{least_conn}
upstream of both nodes, unbuffered, C{proxy_next_upstream error timeout}) on
loopback, and headless Chromium whose own C{EventSource} subscribes through
nginx.  The node that serves the browser dies; the browser reconnects by itself
through nginx to the other node with its C{Last-Event-ID} and gets what it
missed from the other node's copy of the Redis stream: every event once, in
order, with the stream's ids.

The node is frozen (SIGSTOP) before it is killed, so that some events are
certainly published while the browser gets nothing, whatever the timing of
its reconnection (half a second, C{--retry 500}).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import ROOT, TIMEOUT, ControlClient
from test_browser_e2e import browser  # noqa: F401 (fixture: a Browser)
from test_cluster_e2e import json_publish, start_node
from test_nginx_e2e import NGINX, Nginx, free_port

CLUSTER_CONF = ROOT / "etc" / "nginx" / "sseserver-cluster.conf"
#: The example's upstream servers, the nodes of README.rst's example.
EXAMPLE_NODES = ("server 10.0.0.1:8080 ", "server 10.0.0.2:8080 ")
CHANNEL = "failover"

pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="needs nginx")

#: The browser's page, served by nginx itself (same origin as the streams): its
#: EventSource records every event, and each open and error.
PAGE = """<!DOCTYPE html>
<meta charset="utf-8"><title>failover</title>
<script>
"use strict";
window.__got = [];
window.__log = [];
var source = new EventSource("/sse/__CHANNEL__");
source.onopen = function () { window.__log.push("open"); };
source.onerror = function () { window.__log.push("error:" + source.readyState); };
source.onmessage = function (e) {
  window.__got.push({id: e.lastEventId, data: e.data});
};
</script>
""".replace("__CHANNEL__", CHANNEL)


class ClusterNginx(Nginx):
    """
    nginx in the foreground with the shipped cluster example, its upstream
    pointed at this test's nodes and listening on a free loopback port, plus
    the browser's page.  The access log tells, for each request, which
    upstream node(s) nginx tried and the C{Last-Event-ID} it passed on.
    """

    def __init__(self, workdir: Path, sse_ports: list):
        self.workdir = workdir
        self.port = free_port()
        www = workdir / "www"
        www.mkdir(parents=True)
        (www / "failover.html").write_text(PAGE)
        conf = CLUSTER_CONF.read_text()
        replacements = [
            (example, f"server 127.0.0.1:{port} ")
            for example, port in zip(EXAMPLE_NODES, sse_ports)
        ]
        replacements += [
            ("listen 80;", f"listen 127.0.0.1:{self.port};"),
            (
                "    location /sse {",
                (
                    f"    location = /failover.html {{ root {www}; }}\n"
                    "    location /sse {"
                ),
            ),
        ]
        for old, new in replacements:
            assert conf.count(old) == 1, (old, conf)
            conf = conf.replace(old, new)
        (workdir / "cluster.conf").write_text(conf)
        self.start(
            f"    include {workdir}/cluster.conf;\n",
            log_format="'$request_uri $status upstream=$upstream_addr"
            ' last-event-id="$http_last_event_id"\'',
        )

    def access_log(self) -> list:
        path = self.workdir / "logs" / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def wait_streams(self, count: int) -> list:
        """The access log's lines of C{count} ended streams (C{/sse/...})."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            lines = self.access_log()
            streams = [line for line in lines if line.startswith("/sse/")]
            if len(streams) >= count:
                return streams
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)


@pytest.fixture
def cluster_nginx(tmp_path):
    """Start nginx in front of nodes; stopped after the test."""
    started = []

    def start(nodes: list) -> ClusterNginx:
        nginx = ClusterNginx(tmp_path / "nginx", [node.port for node in nodes])
        started.append(nginx)
        return nginx

    yield start
    for nginx in started:
        nginx.stop()


def subscriber_lines(node, start: int = 0) -> list:
    """The node's log lines saying a subscriber of the channel connected."""
    pattern = re.compile(r"subscriber <\d+> \S+ connected: " + CHANNEL + " ")
    return [line for line in node.lines[start:] if pattern.search(line)]


def serving_node(nodes: list, marks: list) -> int:
    """The index of the one node that logged the browser's subscription."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = [i for i, n in enumerate(nodes) if subscriber_lines(n, marks[i])]
        if found:
            assert len(found) == 1, [n.lines for n in nodes]
            return found[0]
        assert time.monotonic() < deadline, [n.lines for n in nodes]
        time.sleep(0.05)


def publish(node, data: str) -> dict:
    """A C{json} publish on the node's control port; replied once read back."""
    with ControlClient(node.control_port) as client:
        reply = json_publish(client, data, CHANNEL)
    assert set(reply) == {"id", "delivered"}, reply
    return reply


def test_browser_fails_over_through_nginx_and_gets_what_it_missed(
    start_server,
    redis_server,
    cluster_nginx,
    browser,  # noqa: F811
):
    redis = redis_server()
    # "retry: 500": the browser reconnects half a second after losing its node.
    nodes = [start_node(start_server, redis.url, "--retry", "500") for _ in range(2)]
    nginx = cluster_nginx(nodes)
    marks = [node.mark() for node in nodes]
    browser.get(f"http://127.0.0.1:{nginx.port}/failover.html")
    browser.wait("source.readyState === 1")
    # nginx sent the stream to one node; the other one has no subscriber.
    index = serving_node(nodes, marks)
    served, survivor = nodes[index], nodes[1 - index]
    served.wait_subscribed(CHANNEL, 1)
    survivor.wait_subscribed(CHANNEL, 0)

    # Live: published on either node, delivered by the browser's node.
    replies = [publish(served, "one"), publish(survivor, "two")]
    assert [r["delivered"] for r in replies] == [1, 0]
    browser.wait("window.__got.length >= 2")

    # The browser's node hangs (SIGSTOP), then dies (SIGKILL).  Events published
    # on the survivor meanwhile cannot reach the browser: it is not the
    # survivor's subscriber ("delivered": 0) and its own node is frozen.
    served.process.send_signal(signal.SIGSTOP)
    try:
        missed = [publish(survivor, f"missed {n}") for n in (1, 2, 3)]
    finally:
        served.process.kill()
        served.process.wait(TIMEOUT)
    assert [r["delivered"] for r in missed] == [0, 0, 0]
    # The stream through nginx breaks; the EventSource says so and retries.
    browser.wait("window.__log.indexOf('error:0') >= 0")
    survivor_mark = survivor.mark()
    # Published while the browser is disconnected (its reconnection may be on
    # its way: the event reaches it by replay or live, once either way).
    while_away = publish(survivor, "while reconnecting")

    # The EventSource reconnects by itself, through nginx, to the survivor.
    browser.wait("window.__log.filter(e => e === 'open').length === 2")
    survivor.wait_for_log(
        r"subscriber <\d+> \S+ connected: " + CHANNEL + " ", start=survivor_mark
    )
    survivor.wait_subscribed(CHANNEL, 1)
    back = publish(survivor, "back")
    assert back["delivered"] == 1
    end = publish(survivor, "END")
    assert end["delivered"] == 1
    got = browser.wait("window.__got.some(e => e.data === 'END') && window.__got")

    # Every event exactly once, in order, with the Redis stream's own ids.
    published = replies + missed + [while_away, back, end]
    assert [e["data"] for e in got] == [
        "one",
        "two",
        "missed 1",
        "missed 2",
        "missed 3",
        "while reconnecting",
        "back",
        "END",
    ]
    ids = [e["id"] for e in got]
    assert ids == [r["id"] for r in published]
    assert ids == redis.stream_ids()
    assert browser.eval("window.__log") == ["open", "error:0", "open"]

    # The browser sent the id of the last event it had before the failover.
    sent = [h["last-event-id"] for h in browser.sent_headers() if "last-event-id" in h]
    assert sent == [replies[-1]["id"]]
    # nginx: the first stream was served by the dead node, the second by the
    # survivor (after the dead node, if nginx tried it first), carrying the id.
    # (nginx logs a request when it ends: the browser closes its stream.)
    browser.eval("source.close(), true")
    streams = nginx.wait_streams(2)
    assert len(streams) == 2, streams
    dead, alive = (f"127.0.0.1:{node.port}" for node in (served, survivor))
    assert streams[0] == f'/sse/{CHANNEL} 200 upstream={dead} last-event-id="-"'
    assert re.fullmatch(
        rf"/sse/{CHANNEL} 200 upstream=({re.escape(dead)}, )?{re.escape(alive)}"
        rf' last-event-id="{re.escape(replies[-1]["id"])}"',
        streams[1],
    ), streams
