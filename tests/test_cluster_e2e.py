"""
End-to-end tests of the Redis cluster (SPEC §11): real C{twistd sseserver}
nodes, a real redis-server, raw-socket subscribers and redis-cli.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import urllib.error
import urllib.request

from conftest import END, TIMEOUT, ControlClient, Stream, fifo_write, until_marker
from forwarding import Forwarder

LOADED = r"cluster: \d+ events loaded from the stream"


def start_node(start_server, redis_url: str, *args: str):
    node = start_server("--redis", redis_url, *args)
    node.wait_for_log(LOADED)
    return node


def publish(node, line: str) -> None:
    """One control line, on its own connection; nothing replied."""
    node.control(line.encode("utf-8") + b"\n")


def json_publish(client: ControlClient, data: str, target: str = "a") -> dict:
    client.send(
        b"json " + json.dumps({"target": target, "data": data}).encode() + b"\n"
    )
    return client.reply()


def post(node, path: str, body: dict) -> tuple:
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get(node, path: str) -> tuple:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{node.port}{path}", timeout=TIMEOUT
        ) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def events(stream: Stream) -> list:
    """(id, data) of each event up to the END marker, END excluded."""
    found = []
    for block in until_marker(stream):
        fields = dict(line.split(b": ", 1) for line in bytes(block).split(b"\n"))
        found.append((fields[b"id"].decode(), fields[b"data"].decode()))
    assert found[-1][1] == END.decode()
    return found[:-1]


def cut_off(node, link: Forwarder) -> int:
    """
    Cut a node off from Redis: the forwarder between them drops its
    connections and holds new ones unanswered.  Returns the node's log mark.
    """
    mark = node.mark()
    link.hold()
    link.cut()
    node.wait_for_log(r"unavailable", start=mark)
    return mark


def wait_figures(node, command: bytes, expected: dict) -> dict:
    """Poll a tcp command until its reply contains C{expected}."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        reply = node.command(command)
        if all(reply.get(key) == value for key, value in expected.items()):
            return reply
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)


def test_a_publish_on_either_node_reaches_both_once(
    start_server, redis_server, tmp_path
):
    redis = redis_server()
    fifo = tmp_path / "node2.fifo"
    node1 = start_node(start_server, redis.url)
    node2 = start_node(start_server, redis.url, "--http-publish", "--fifo", str(fifo))
    streams = [
        Stream(node1.port, "/sse/a"),
        Stream(node1.port, "/sse/"),  # all channels
        Stream(node2.port, "/sse/a"),
        Stream(node2.port, "/sse/a/b"),  # reached once by an event to both
    ]
    node1.wait_subscribed("a", 1)
    node2.wait_subscribed("a", 2)

    publish(node1, "a=from control on node 1")
    # Each event is in the stream before the next one goes in on the other node.
    wait_figures(node1, b"tcpstatus", {"msgproccnt": 1})
    status, body = post(node2, "/sse/a/b", {"data": "from HTTP on node 2"})
    assert status == 200, body
    reply = json.loads(body)
    fifo_write(fifo, b"a=from the FIFO of node 2\n")
    wait_figures(node2, b"tcpstatus", {"msgproccnt": 2})
    publish(node1, f"a={END.decode()}")

    expected = [
        "from control on node 1",
        "from HTTP on node 2",
        "from the FIFO of node 2",
    ]
    got = [events(stream) for stream in streams]
    for received in got:
        assert [data for _, data in received] == expected
    # Every stream saw the same ids, and they are the Redis stream's own ids.
    assert got[0] == got[1] == got[2] == got[3]
    ids = [event_id for event_id, _ in got[0]]
    assert redis.stream_ids()[:3] == ids
    assert reply == {"accepted": 1, "ids": [ids[1]], "delivered": 2}


def test_json_publish_counts_this_nodes_deliveries(start_server, redis_server):
    redis = redis_server()
    node1 = start_node(start_server, redis.url)
    node2 = start_node(start_server, redis.url)
    streams = [Stream(node2.port, "/sse/a") for _ in range(3)]
    node2.wait_subscribed("a", 3)
    with ControlClient(node1.control_port) as client:
        first = json_publish(client, "one")
        assert re.fullmatch(r"\d{13}-\d+", first["id"])
        assert first["delivered"] == 0  # node 1 has no subscriber of a
    with ControlClient(node2.control_port) as client:
        second = json_publish(client, "two")
        assert second["delivered"] == 3
    publish(node1, f"a={END.decode()}")
    for stream in streams:
        assert events(stream) == [(first["id"], "one"), (second["id"], "two")]


def test_a_subscriber_moving_to_another_node_gets_what_it_missed(
    start_server, redis_server
):
    redis = redis_server()
    node1 = start_node(start_server, redis.url)
    node2 = start_node(start_server, redis.url)
    first = Stream(node1.port, "/sse/a")
    node1.wait_subscribed("a", 1)
    publish(node1, "a=one")
    (block,) = first.read_events(1)
    last_id = block.split(b"\n")[0].split(b": ")[1].decode()
    first.close()
    for data in ("two", "three"):
        publish(node1, f"a={data}")
    wait_figures(node1, b"tcpsubscribedclients:a", {"subscribedclients": 0})

    moved = Stream(node2.port, "/sse/a", headers={"Last-Event-ID": last_id})
    publish(node2, "a=four")
    publish(node2, f"a={END.decode()}")
    assert [data for _, data in events(moved)] == ["two", "three", "four"]


def test_replay_survives_a_node_restart(start_server, redis_server):
    redis = redis_server()
    node1 = start_node(start_server, redis.url)
    for data in ("one", "two", "three"):
        publish(node1, f"a={data}")
    wait_figures(node1, b"tcpstatus", {"msgproccnt": 3})
    ids = redis.stream_ids()
    assert len(ids) == 3
    node1.stop()

    node2 = start_server("--redis", redis.url)
    node2.wait_for_log(
        r"cluster: 3 events loaded from the stream; reading after " + ids[2]
    )
    stream = Stream(node2.port, "/sse/a", headers={"Last-Event-ID": ids[0]})
    publish(node2, f"a={END.decode()}")
    assert events(stream) == [(ids[1], "two"), (ids[2], "three")]


def test_counts_add_up_across_the_cluster(start_server, redis_server):
    redis = redis_server()
    node1 = start_node(start_server, redis.url, "--admin", "tcp:0:interface=127.0.0.1")
    node2 = start_node(start_server, redis.url)
    streams = [Stream(node1.port, "/sse/a") for _ in range(2)]
    streams += [Stream(node2.port, "/sse/a"), Stream(node2.port, "/sse/b")]
    node1.wait_subscribed("a", 2)
    node2.wait_subscribed("b", 1)

    cluster = {"nodes": 2, "sseconncli": 4, "allconncli": 4}
    status = wait_figures(node1, b"tcpstatus", {"cluster": cluster})
    assert (status["sseconncli"], status["allconncli"]) == (2, 2)
    assert node1.command(b"tcpnumberofclients") == {
        "numberofclients": 2,
        "cluster": {"nodes": 2, "numberofclients": 4},
    }
    assert node1.command(b"tcpsubscribedclients:a") == {
        "subscribedclients": 2,
        "subscribedfor": "a",
        "cluster": {"nodes": 2, "subscribedclients": 3},
    }
    with urllib.request.urlopen(
        f"http://127.0.0.1:{node1.admin_port}/status", timeout=TIMEOUT
    ) as response:
        assert json.load(response)["cluster"] == cluster
    with urllib.request.urlopen(
        f"http://127.0.0.1:{node1.admin_port}/metrics", timeout=TIMEOUT
    ) as response:
        metrics = response.read().decode()
    for line in (
        "sseserver_redis_up 1.0",
        "sseserver_cluster_nodes 2.0",
        "sseserver_cluster_subscribers 4.0",
        "sseserver_cluster_connections 4.0",
        "sseserver_publishes_refused_total 0.0",
        "sseserver_subscribers 2.0",
    ):
        assert line in metrics.splitlines(), line

    # A node that dies stops counting once its figures expire.
    node2.process.kill()
    wait_figures(
        node1, b"tcpstatus", {"cluster": {"nodes": 1, "sseconncli": 2, "allconncli": 2}}
    )
    for stream in streams:
        stream.close()


def test_killing_a_node_leaves_the_other_nodes_subscribers_alone(
    start_server, redis_server
):
    redis = redis_server()
    node1 = start_node(start_server, redis.url)
    node2 = start_node(start_server, redis.url)
    stream = Stream(node2.port, "/sse/a")
    node2.wait_subscribed("a", 1)
    publish(node1, "a=before")
    stream.read_events(1)
    node1.process.kill()
    node1.process.wait(TIMEOUT)
    publish(node2, "a=after")
    publish(node2, f"a={END.decode()}")
    assert [data for _, data in events(stream)] == ["before", "after"]


def test_redis_killed_and_restarted_during_a_publish_loop(start_server, redis_server):
    """
    Every publish is answered: an id (accepted) or "redis unavailable".  Every
    accepted event reaches the subscribers of both nodes once, in order; a
    refused one may only appear if Redis stored it as it died (its answer was
    lost with it), never twice.
    """
    redis = redis_server()
    node1 = start_node(start_server, redis.url)
    node2 = start_node(start_server, redis.url)
    streams = [Stream(node1.port, "/sse/a"), Stream(node2.port, "/sse/a")]
    node1.wait_subscribed("a", 1)
    node2.wait_subscribed("a", 1)
    mark1 = node1.mark()

    accepted, refused = [], []
    with ControlClient(node1.control_port) as client:
        for number in range(300):
            if number == 100:
                redis.kill()
            if number == 200:
                redis.start()
            reply = json_publish(client, str(number))
            if "id" in reply:
                accepted.append((reply["id"], str(number)))
            else:
                assert reply == {"error": "redis unavailable"}
                refused.append(str(number))
            time.sleep(0.005)
        # Redis is back: wait until node 1 accepts again, then end.
        deadline = time.monotonic() + TIMEOUT
        while "id" not in json_publish(client, END.decode()):
            assert time.monotonic() < deadline
            time.sleep(0.05)

    assert len(accepted) >= 100 and len(refused) >= 50, (len(accepted), len(refused))
    accepted_data = {data for _, data in accepted}
    for stream in streams:
        received = events(stream)
        assert len({data for _, data in received}) == len(received)  # none twice
        assert [e for e in received if e[1] in accepted_data] == accepted
        assert {data for _, data in received} - accepted_data <= set(refused)
    # The outage is logged once, and its end.
    log = node1.lines[mark1:]
    assert len([line for line in log if "unavailable (" in line]) == 1, log
    assert len([line for line in log if "is back after" in line]) == 1, log


def test_http_publish_is_refused_with_503_while_redis_is_down(
    start_server, redis_server
):
    redis = redis_server()
    node = start_node(start_server, redis.url, "--http-publish")
    stream = Stream(node.port, "/sse/a")
    node.wait_subscribed("a", 1)
    redis.kill()
    node.wait_for_log(r"redis at redis://127.0.0.1:\d+/0 unavailable")
    status, body = post(node, "/sse/a", {"data": "lost?"})
    assert (status, body) == (503, b"redis unavailable\n")
    assert get(node, "/sse/a?x=y") == (503, b"redis unavailable\n")
    with ControlClient(node.control_port) as client:
        client.send(b"a=lost?\n")
        assert client.reply() == {"error": "redis unavailable"}
    # The subscriber is still connected, and gets what comes once Redis is back.
    redis.start()
    node.wait_for_log(r"is back after")
    status, body = post(node, "/sse/a", {"data": END.decode()})
    assert status == 200
    assert events(stream) == []


def test_a_node_cut_off_from_redis_resumes_after_its_last_id(
    start_server, redis_server
):
    redis = redis_server()
    with Forwarder(redis.port) as link:
        node1 = start_node(start_server, f"redis://127.0.0.1:{link.port}/0")
        node2 = start_node(start_server, redis.url)
        isolated = Stream(node1.port, "/sse/a")
        other = Stream(node2.port, "/sse/a")
        node1.wait_subscribed("a", 1)
        node2.wait_subscribed("a", 1)
        publish(node2, "a=one")
        isolated.read_events(1)

        mark = cut_off(node1, link)
        with ControlClient(node1.control_port) as client:
            client.send(b"a=refused\n")
            assert client.reply() == {"error": "redis unavailable"}
        publish(node2, "a=two")
        publish(node2, "a=three")
        assert [b.split(b"data: ")[1] for b in other.read_events(3)] == [
            b"one",
            b"two",
            b"three",
        ]
        assert len(isolated.data_events()) == 1  # nothing while cut off

        link.release()
        node1.wait_for_log(r"is back after", start=mark)
        publish(node2, f"a={END.decode()}")
        assert [data for _, data in events(isolated)] == ["one", "two", "three"]
        assert events(isolated) == events(other)


def test_redis_password_from_the_url(start_server, redis_server):
    redis = redis_server("--requirepass", "s3cret")
    node = start_node(start_server, f"redis://:s3cret@127.0.0.1:{redis.port}/0")
    stream = Stream(node.port, "/sse/a")
    node.wait_subscribed("a", 1)
    publish(node, f"a={END.decode()}")
    assert events(stream) == []

    wrong = start_server("--redis", f"redis://:wrong@127.0.0.1:{redis.port}/0")
    wrong.wait_for_log(r"unavailable \(.*WRONGPASS")
    assert "s3cret" not in "\n".join(node.lines)
    with ControlClient(wrong.control_port) as client:
        client.send(b"a=x\n")
        assert client.reply() == {"error": "redis unavailable"}


def test_a_subscriber_from_a_node_ahead_gets_nothing_twice(start_server, redis_server):
    """
    A browser moves from a node that has read further than its new node: the
    events up to its Last-Event-ID, which the new node delivers when it catches
    up, are not sent to it again.
    """
    redis = redis_server()
    with Forwarder(redis.port) as link:
        behind = start_node(start_server, f"redis://127.0.0.1:{link.port}/0")
        ahead = start_node(start_server, redis.url)
        early = Stream(behind.port, "/sse/a")
        behind.wait_subscribed("a", 1)
        mark = cut_off(behind, link)

        first = Stream(ahead.port, "/sse/a")
        ahead.wait_subscribed("a", 1)
        for data in ("one", "two", "three"):
            publish(ahead, f"a={data}")
        last_id = first.read_events(3)[-1].split(b"\n")[0].split(b": ")[1].decode()
        first.close()
        moved = Stream(behind.port, "/sse/a", headers={"Last-Event-ID": last_id})
        behind.wait_subscribed("a", 2)

        link.release()
        behind.wait_for_log(r"is back after", start=mark)
        publish(ahead, "a=four")
        publish(ahead, f"a={END.decode()}")
        assert [data for _, data in events(moved)] == ["four"]
        assert [data for _, data in events(early)] == ["one", "two", "three", "four"]


def test_a_node_behind_a_trimmed_stream_says_what_it_missed(start_server, redis_server):
    redis = redis_server()
    with Forwarder(redis.port) as link:
        node1 = start_node(
            start_server, f"redis://127.0.0.1:{link.port}/0", "--history", "0"
        )
        node2 = start_node(start_server, redis.url, "--history", "0")
        stream = Stream(node1.port, "/sse/a")
        node1.wait_subscribed("a", 1)
        mark = cut_off(node1, link)
        # 1,500 events into a stream kept at about 1,000 (MAXLEN ~).
        node2.control(b"".join(b"a=%d\n" % n for n in range(1500)))
        wait_figures(node2, b"tcpstatus", {"msgproccnt": 1500})
        oldest = redis.cli("XRANGE", "sseserver:events", "-", "+", "COUNT", "1")
        first_kept = int(oldest[oldest.index("data") + 1])
        assert first_kept > 0

        link.release()
        match = node1.wait_for_log(
            r"the oldest entry left in the stream \((\S+)\) is newer than this"
            r" node's last id \((\S+)\) and (\d+) entries were trimmed",
            start=mark,
        )
        assert match[2] == "0-0"  # it had read nothing before the cut
        assert match[1] == redis.stream_ids()[0]
        assert int(match[3]) == first_kept  # 0 .. first_kept - 1 are gone
        publish(node2, f"a={END.decode()}")
        received = [int(data) for _, data in events(stream)]
        assert received == list(range(first_kept, 1500))  # the rest, in order


def test_a_redis_that_stops_answering_counts_as_down(start_server, redis_server):
    """
    A Redis that hangs (SIGSTOP) keeps its connections open: after 5 s without
    an answer the node gives up on it, answers the publish waiting for it as
    refused, and reconnects once it answers again.  Redis may still take the
    refused event when it wakes up (it was in its socket buffer): a publish
    refused in a failure may have been stored, never the other way round.
    """
    redis = redis_server()
    node = start_node(start_server, redis.url)
    stream = Stream(node.port, "/sse/a")
    node.wait_subscribed("a", 1)
    mark = node.mark()
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        with ControlClient(node.control_port) as client:
            assert json_publish(client, "stuck") == {"error": "redis unavailable"}
            client.send(b"a=refused at once\n")
            assert client.reply() == {"error": "redis unavailable"}
        node.wait_for_log(r"no answer for 5\.0 s; reconnecting", start=mark)
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
    node.wait_for_log(r"is back after", start=mark)
    publish(node, f"a={END.decode()}")
    assert [data for _, data in events(stream)] in ([], ["stuck"])


def test_a_flood_while_redis_is_slow_waits_and_loses_nothing(
    start_server, redis_server
):
    """
    More than 2,000 publishes waiting for Redis hold the inputs (what a publisher
    sends waits in its socket, not in the node's memory) until Redis catches up.
    """
    redis = redis_server()
    node = start_node(start_server, redis.url, "--loglevel", "debug")
    stream = Stream(node.port, "/sse/a")
    node.wait_subscribed("a", 1)
    mark = node.mark()
    lines = b"".join(b"a=%d\n" % n for n in range(5000)) + b"a=" + END + b"\n"
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        with ControlClient(node.control_port) as client:
            client.send(lines)
            node.wait_for_log(r"publishes wait for redis: inputs paused", start=mark)
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
    node.wait_for_log(r"redis caught up: inputs resumed", start=mark)
    assert [int(data) for _, data in events(stream)] == list(range(5000))


def test_a_node_reads_a_new_stream_when_redis_lost_the_old_one(
    start_server, redis_server
):
    """
    Redis comes back without its data, and the new stream's ids are below what
    the node had read (a Redis on a clock behind): the node reads the new
    stream from its start instead of waiting for ids to pass its old one.
    """
    redis = redis_server()
    node = start_node(start_server, redis.url)
    stream = Stream(node.port, "/sse/a")
    node.wait_subscribed("a", 1)
    publish(node, "a=before")
    stream.read_events(1)
    mark = node.mark()
    redis.kill()
    for leftover in redis.dir.iterdir():  # its data is lost
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    redis.start()
    # An entry from a publisher whose Redis clock is behind: a small id.
    redis.cli(
        "XADD", "sseserver:events", "1000-0", "target", '{"channels":["a"]}',
        "type", "message", "data", "after", "node", "elsewhere",
    )  # fmt: skip
    node.wait_for_log(r"Redis lost it; reading the new one from its start", mark)
    node.wait_for_log(r"is back after", mark)
    publish(node, f"a={END.decode()}")
    assert [data for _, data in events(stream)] == ["before", "after"]
