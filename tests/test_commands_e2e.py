"""
End-to-end tests of the run-time commands (SPEC §6, §7) and of shutting down,
against the real C{twistd -n sseserver} process.
"""

from __future__ import annotations

import re
import signal
import time

from conftest import TIMEOUT, ControlClient, Stream, assert_events

FINAL_CHUNK = b"0\r\n\r\n"


def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def texts(server, start: int) -> list:
    return [line.split("] ", 1)[1] for line in server.lines[start:] if "] " in line]


def event_id(block: bytes) -> str:
    return re.match(rb"id: (\d+-\d+)\n", block)[1].decode("ascii")


def test_halt_on_control_port_with_allow_commands(start_server):
    server = start_server("--allow-commands")
    room = Stream(server.port, "/sse/room")
    everything = Stream(server.port, "/sse")
    old = Stream(server.port, "/sse/room", version="HTTP/1.0")
    server.control(b"room=before halt\n")
    for stream in (room, everything, old):
        stream.read_events(1)
    mark = server.mark()
    with ControlClient(server.control_port) as client:
        client.send(b"halt\n")
        for stream in (room, everything):
            stream.read_to_end()
            assert stream.raw.endswith(b"\r\n" + FINAL_CHUNK), stream.raw[-40:]
            assert stream.finished
            assert_events(stream.data_events(), [(b"before halt", None)])
        old.read_to_end()
        assert old.body.endswith(b"data: before halt\n\n")
        assert server.process.wait(TIMEOUT) == 0
    assert not any(
        "Traceback" in line or "Unhandled" in line for line in server.lines[mark:]
    ), server.lines[mark:]


def test_sigterm_ends_streams_with_the_final_chunk(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    nothing = Stream(server.port, "/sse?subscribe=")
    server.control(b"room=hello\n")
    room.read_events(1)
    server.process.send_signal(signal.SIGTERM)
    room.read_to_end()
    nothing.read_to_end()
    assert room.raw.endswith(b"\r\n" + FINAL_CHUNK), room.raw[-40:]
    assert nothing.raw.endswith(b"\r\n" + FINAL_CHUNK), nothing.raw[-40:]
    assert_events(room.data_events(), [(b"hello", None)])
    assert nothing.body == b":ok\n\n"


def test_sigterm_ends_streams_and_dies_by_the_signal(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    server.process.send_signal(signal.SIGTERM)
    room.read_to_end()
    assert room.raw.endswith(b"\r\n" + FINAL_CHUNK), room.raw[-40:]
    # twistd re-raises the signal that stopped it, after the clean shutdown;
    # systemd counts death by SIGTERM as a clean stop (README, "Stopping").
    assert server.process.wait(TIMEOUT) == -signal.SIGTERM


def test_loglevel_debug_logs_every_event(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    everything = Stream(server.port, "/sse")
    # normal: no line per event
    mark = server.mark()
    server.control(b"room=normal\nnumberofclients\n")
    server.wait_for_log(r"\] Number of connected clients: 2$", start=mark)
    room.read_events(1)
    assert not any(re.search(r"\bevent \d+-\d+\b", t) for t in texts(server, mark))

    mark = server.mark()
    with ControlClient(server.control_port) as client:
        client.send(b"loglevel_debug\n")
        server.wait_for_log(r"\] Loglevel set to debug \(2\)$", start=mark)
        client.send(b"room=debug one\n*=debug two\nnobody/kind=debug three\n")
        events = room.read_events(3)
        assert server.command(b"tcpstatus")["loglevel"] == 2
    first, second = event_id(events[1]), event_id(events[2])
    everything_events = everything.read_events(4)
    third = event_id(everything_events[3])
    server.wait_for_log(
        rf"\] event {first} type=message to room: delivered to 2$", start=mark
    )
    server.wait_for_log(
        rf"\] event {second} type=message to \*: delivered to 2$", start=mark
    )
    server.wait_for_log(
        rf"\] event {third} type=kind to nobody: delivered to 1$", start=mark
    )


def test_loglevel_quiet_and_back_to_normal(start_server):
    server = start_server()
    room = Stream(server.port, "/sse/room")
    mark = server.mark()
    server.control(b"loglevel_quiet\n")
    server.wait_for_log(r"\] Loglevel set to quiet \(0\)$", start=mark)
    assert server.command(b"tcpstatus")["loglevel"] == 0

    quiet_mark = server.mark()
    newcomer = Stream(server.port, "/sse/room", headers={"User-Agent": "quiet-agent"})
    room.close()
    wait_for(lambda: server.command(b"tcpnumberofclients") == {"numberofclients": 1})
    server.control(b"room=in quiet\nbogus\n")
    newcomer.read_events(1)
    # a command's output is still logged, and marks the end of what we look at
    server.control(b"numberofclients\n")
    server.wait_for_log(r"\] Number of connected clients: 1$", start=quiet_mark)
    logged = texts(server, quiet_mark)
    assert logged == ["Number of connected clients: 1"], logged

    mark = server.mark()
    server.control(b"loglevel_normal\n")
    server.wait_for_log(r"\] Loglevel set to normal \(1\)$", start=mark)
    assert server.command(b"tcpstatus")["loglevel"] == 1
    mark = server.mark()
    port = Stream(server.port, "/sse/room").sock.getsockname()[1]
    server.wait_for_log(rf"127\.0\.0\.1:{port}\b.*connected", start=mark)


def test_quiet_from_the_command_line(start_server):
    server = start_server("--loglevel", "quiet")
    assert server.command(b"tcpstatus")["loglevel"] == 0
    mark = server.mark()
    room = Stream(server.port, "/sse/room")
    server.control(b"room=x\n")
    room.read_events(1)
    server.control(b"subscribedclients:room\n")
    server.wait_for_log(r'\] Client count subscribed for "room": 1$', start=mark)
    assert texts(server, mark) == ['Client count subscribed for "room": 1']


def test_reinit_enable_and_disable(start_server):
    server = start_server()
    mark = server.mark()
    server.control(b"reinit_enable\nstatus\n")
    server.wait_for_log(r"\] Reinit enabled$", start=mark)
    server.wait_for_log(r"\] Reinit allowed: yes$", start=mark)
    mark = server.mark()
    server.control(b"reinit_disable\nstatus\n")
    server.wait_for_log(r"\] Reinit disabled$", start=mark)
    server.wait_for_log(r"\] Reinit allowed: no$", start=mark)


def test_commands_reply_nothing_on_the_control_port(start_server):
    server = start_server()
    with ControlClient(server.control_port) as client:
        client.send(
            b"status\nclientlist\nnumberofclients\nsubscribedclients:room\n"
            b"loglevel_debug\nloglevel_normal\nreinit_enable\nreinit_disable\n"
            b"tcpnumberofclients\n"
        )
        assert client.reply() == {"numberofclients": 0}


def test_loglevel_in_status_report(start_server):
    server = start_server()
    mark = server.mark()
    server.control(b"loglevel_debug\nstatus\n")
    server.wait_for_log(r"\] Loglevel: 2$", start=mark)
    assert server.command(b"tcpstatus")["loglevel"] == 2
