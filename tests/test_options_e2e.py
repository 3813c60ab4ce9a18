"""
End-to-end tests of C{twistd sseserver}'s command line (SPEC §1) against the real
twistd.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from conftest import (
    END,
    ROOT,
    TIMEOUT,
    TWISTD,
    Stream,
    assert_events,
    expect,
    until_marker,
)

LOOPBACK = "tcp:0:interface=127.0.0.1"


def run_twistd(args: list, cwd) -> tuple:
    """Run twistd to completion; return (exit status, output lines)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [TWISTD, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=TIMEOUT * 3,
    )
    return result.returncode, result.stdout.decode("utf-8", "replace").splitlines()


def test_help_lists_sseserver(tmp_path):
    status, lines = run_twistd(["--help"], tmp_path)
    assert status == 0
    assert any(re.match(r"\s+sseserver\s+\S", line) for line in lines), lines


def test_sseserver_help(tmp_path):
    status, lines = run_twistd(["sseserver", "--help"], tmp_path)
    assert status == 0
    text = "\n".join(lines)
    for option in (
        "--port",
        "--control",
        "--fifo",
        "--prefix",
        "--dialect",
        "--separator",
        "--allow-commands",
        "--heartbeat",
        "--loglevel",
        "--config",
    ):
        assert re.search(rf"^\s+(-\w, )?{option}\b", text, re.M), option


@pytest.mark.parametrize(
    "args, error",
    [
        (["--heartbeat", "x"], "--heartbeat: not a number: 'x'"),
        (["--prefix", "sse"], "--prefix: "),
        (["--port", "nonsense:1"], "--port: "),
        (["--dialect", "foo"], "--dialect: "),
        (["--max-clients", "many"], "--max-clients: not a number: 'many'"),
        (["--retry", "soon"], "--retry: not a number: 'soon'"),
        (["--control", "bogus:2"], "--control: "),
        (["--loglevel", "loud"], "--loglevel: "),
    ],
)
def test_bad_option_is_a_one_line_error(tmp_path, args, error):
    base = ["--port", LOOPBACK, "--control", LOOPBACK]
    status, lines = run_twistd(
        ["-n", "--pidfile=", "sseserver", *base, *args], tmp_path
    )
    assert status != 0
    errors = [line for line in lines if error in line]
    assert len(errors) == 1, lines
    # the error is the last thing said, and names the option and the bad value
    assert [line for line in lines if line.strip()][-1] == errors[0]
    assert repr(args[1]) in errors[0]
    assert not any("listening on" in line for line in lines)


def test_control_none_starts_no_control_listener(start_server):
    server = start_server("--control", "none", control=0)
    room = Stream(server.port, "/sse/room")
    mark = server.mark()
    room_port = room.sock.getsockname()[1]
    room.close()
    server.wait_for_log(rf"127\.0\.0\.1:{room_port}\b.*disconnected", start=mark)
    assert server.control_ports == []
    assert not any("control listening" in line for line in server.lines)
    assert len(server.sse_ports) == 1
    assert server.process.poll() is None


def test_config_file_is_honoured(start_server, tmp_path):
    config = tmp_path / "sseserver.conf"
    config.write_text(
        "# sseserver settings\n"
        "\n"
        f"--port {LOOPBACK}\n"
        "   # an indented comment\n"
        f"--control {LOOPBACK}\n"
        "--prefix /fromfile\n"
        "\n"
        "--dialect hasses\n"
    )
    server = start_server("--config", str(config), ports=False)
    u17 = Stream(server.port, "/fromfile?subscribe=room&id=u17")
    u18 = Stream(server.port, "/fromfile?subscribe=room&id=u18")
    default_prefix = Stream(server.port, "/sse/room", wait_open=False)
    assert default_prefix.status == 404
    server.control(b"room-u17=x;room=y\n*=END\n")
    expect(u17, [(b"y", None)])
    expect(u18, [(b"x", None), (b"y", None)])


def test_command_line_wins_over_config_file(start_server, tmp_path):
    socket_path = tmp_path / "from-file.sock"
    config = tmp_path / "sseserver.conf"
    config.write_text(
        f"--port unix:{socket_path}\n"
        "--prefix /fromfile\n"
        "--dialect hasses\n"
        "--heartbeat 3600\n"
    )
    server = start_server(
        "--config", str(config), "--prefix", "/cli", "--port", LOOPBACK
    )
    room = Stream(server.port, "/cli?subscribe=room&id=u17")
    other = Stream(server.port, "/cli/room")
    assert Stream(server.port, "/fromfile/room", wait_open=False).status == 404
    # the file's dialect still applies: the command line did not set one
    server.control(b"room-u17=x;room=y\n*=END\n")
    expect(room, [(b"y", None)])
    expect(other, [(b"x", None), (b"y", None)])
    assert len(server.sse_ports) == 1
    assert sum("SSE listening" in line for line in server.lines) == 1
    assert not socket_path.exists()


def test_missing_config_file_is_an_error(tmp_path):
    missing = tmp_path / "missing.conf"
    status, lines = run_twistd(
        ["-n", "--pidfile=", "sseserver", "--config", str(missing)], tmp_path
    )
    assert status != 0
    last = [line for line in lines if line.strip()][-1]
    assert "--config" in last and str(missing) in last, lines


def test_two_ports_share_one_registry(start_server):
    server = start_server("--port", LOOPBACK, "--port", LOOPBACK, sse=2)
    assert len(server.sse_ports) == 2 and len(set(server.sse_ports)) == 2
    first = Stream(server.sse_ports[0], "/sse/room")
    second = Stream(server.sse_ports[1], "/sse?subscribe=room")
    everything = Stream(server.sse_ports[1], "/sse")
    elsewhere = Stream(server.sse_ports[0], "/sse/hall")
    server.control(b"room=once\n*=END\n")
    ids = [
        assert_events(until_marker(s), [(b"once", None), (END, None)])
        for s in (first, second, everything)
    ]
    assert ids[0] == ids[1] == ids[2]  # the same event, published once
    expect(elsewhere, [])
    status = server.command(b"tcpstatus")
    assert (status["sseconncli"], status["allconncli"]) == (4, 4)
    assert (status["msgproccnt"], status["msgsendcnt"]) == (2, 7)
