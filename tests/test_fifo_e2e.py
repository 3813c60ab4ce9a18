"""
End-to-end tests of the FIFO input (SPEC §1, §5.1, §5.4, §6) against the real
C{twistd -n sseserver --fifo PATH} process.

Writers open the FIFO with C{O_NONBLOCK}: with the server holding the read end the
open succeeds at once, and without a reader it fails (ENXIO) instead of hanging.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
from conftest import (
    ROOT,
    TIMEOUT,
    TWISTD,
    Stream,
    assert_events,
    expect,
    fifo_write,
    open_writer,
    write_all,
)

CLOCK = r"\d\d:[0-5]\d:[0-5]\d"


def version() -> str:
    text = (ROOT / "sseserver" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text)[1]


def message(line: str) -> str:
    """The text of a log line, after its C{[namespace#level] }."""
    return line.split("] ", 1)[1]


def log_block(server, first: str, last: str, start: int) -> list:
    """The texts of the log lines from C{first} to C{last} (both exact, included)."""
    server.wait_for_log(r"\] " + re.escape(last) + "$", start=start)
    texts = [message(line) for line in server.lines[start:] if "] " in line]
    begin = texts.index(first)
    end = texts.index(last, begin)
    return texts[begin : end + 1]


def assert_lines(texts: list, patterns: list) -> None:
    assert len(texts) == len(patterns), "\n".join(texts)
    for text, pattern in zip(texts, patterns):
        assert re.fullmatch(pattern, text), (text, pattern)


@pytest.fixture
def fifo(tmp_path):
    return tmp_path / "sse.fifo"


def test_fifo_created_with_mode_0620_whatever_the_umask(start_server, fifo):
    old = os.umask(0o777)
    try:
        server = start_server("--fifo", str(fifo))
    finally:
        os.umask(old)
    mode = os.stat(fifo).st_mode
    assert stat.S_ISFIFO(mode)
    assert stat.S_IMODE(mode) == 0o620
    room = Stream(server.port, "/sse/room")
    fifo_write(fifo, b"room=hi\n*=END\n")
    expect(room, [(b"hi", None)])


def test_fifo_created_with_mode_0620_with_a_permissive_umask(start_server, fifo):
    old = os.umask(0)
    try:
        start_server("--fifo", str(fifo))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(fifo).st_mode) == 0o620


def test_existing_fifo_is_used(start_server, fifo):
    os.mkfifo(fifo)
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    fifo_write(fifo, b"room=hi\n*=END\n")
    expect(room, [(b"hi", None)])


def test_regular_file_at_fifo_path_is_a_startup_error(tmp_path, fifo):
    fifo.write_bytes(b"not a pipe\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "sseserver",
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--control",
            "tcp:0:interface=127.0.0.1",
            "--fifo",
            str(fifo),
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=TIMEOUT * 3,
    )
    assert result.returncode != 0
    lines = result.stdout.decode("utf-8", "replace").splitlines()
    errors = [line for line in lines if "--fifo" in line and str(fifo) in line]
    assert len(errors) == 1, lines
    assert [line for line in lines if line.strip()][-1] == errors[0]
    assert "listening on" not in result.stdout.decode("utf-8", "replace")
    assert fifo.read_bytes() == b"not a pipe\n"  # left alone


def test_line_without_newline_counts_when_the_writer_closes(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    fifo_write(fifo, b"room=hi")
    assert_events(room.read_events(1), [(b"hi", None)])
    fifo_write(fifo, b"*=END")
    expect(room, [(b"hi", None)])


def test_several_lines_in_one_write(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    other = Stream(server.port, "/sse/other")
    lines = b"".join(b"room=%d\n" % n for n in range(300))
    fifo_write(fifo, lines + b"room = a=b \r\nroom=last")
    # An unterminated line is complete once every writer has closed; a writer
    # opening before the server saw that would continue the line, so wait.
    room.read_events(302)
    fifo_write(fifo, b"*=END\n")
    expected = [(b"%d" % n, None) for n in range(300)]
    expect(room, expected + [(b"a=b", None), (b"last", None)])
    expect(other, [])


def test_two_writers_one_after_the_other(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    fifo_write(fifo, b"room=first\n")
    fifo_write(fifo, b"room=second\n")
    assert_events(room.read_events(2), [(b"first", None), (b"second", None)])
    # unterminated lines, each writer closing before the next opens: the FIFO is
    # reopened after each and keeps accepting writers
    for n in range(3):
        fifo_write(fifo, b"room=unterminated %d" % n)
        room.read_events(3 + n)
    fifo_write(fifo, b"*=END")
    expect(
        room,
        [(b"first", None), (b"second", None)]
        + [(b"unterminated %d" % n, None) for n in range(3)],
    )


def test_two_writers_open_at_the_same_time(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    one = open_writer(fifo)
    two = open_writer(fifo)
    try:
        write_all(one, b"room=from one\n")
        write_all(two, b"room=from two\n")
        write_all(one, b"room=one again\n")
        os.close(one)
        one = None
        # the other writer is still open: the FIFO keeps working
        write_all(two, b"room=two last")
    finally:
        if one is not None:
            os.close(one)
        os.close(two)
    room.read_events(4)
    fifo_write(fifo, b"*=END\n")
    expect(
        room,
        [
            (b"from one", None),
            (b"from two", None),
            (b"one again", None),
            (b"two last", None),
        ],
    )


def test_tcp_commands_on_the_fifo_are_rejected_and_logged(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    mark = server.mark()
    fifo_write(fifo, b"tcpstatus\ntcpnumberofclients\ntcpsubscribedclients:room\n")
    server.wait_for_log(r"rejected: tcpstatus: .*FIFO", start=mark)
    server.wait_for_log(r"rejected: tcpnumberofclients: .*FIFO", start=mark)
    server.wait_for_log(r"rejected: tcpsubscribedclients: .*FIFO", start=mark)
    fifo_write(fifo, b"room=still here\n*=END\n")
    expect(room, [(b"still here", None)])
    assert server.process.poll() is None
    assert server.command(b"tcpnumberofclients") == {"numberofclients": 1}


def test_bad_lines_on_the_fifo_are_logged_and_skipped(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    mark = server.mark()
    fifo_write(
        fifo,
        b"bogus\nroom=\xff\nroom=a\x00b\nroom=" + b"x" * 70000 + b"\nroom=ok\n*=END\n",
    )
    expect(room, [(b"ok", None)])
    server.wait_for_log(r"rejected: unknown command: 'bogus'$", start=mark)
    server.wait_for_log(r"rejected: invalid UTF-8 in line$", start=mark)
    server.wait_for_log(r"rejected: NUL byte in line$", start=mark)
    server.wait_for_log(r"rejected: line longer than 65536 bytes$", start=mark)


def test_status_report(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(
        server.port,
        "/sse?subscribe=room&id=u17",
        headers={"User-Agent": "pytest-agent/1.0"},
    )
    gone = Stream(server.port, "/sse/room9")
    idle = Stream(server.port, "/sse", method="HEAD")
    mark = server.mark()
    gone.close()
    server.wait_for_log(r"disconnected", start=mark)
    fifo_write(fifo, b"room=one\nroom=two\nnobody=three\n")
    room.read_events(2)
    mark = server.mark()
    fifo_write(fifo, b"status\n")
    block = log_block(
        server,
        "------- status of sseserver -------",
        "------------- end --------------",
        mark,
    )
    assert_lines(
        block,
        [
            re.escape("------- status of sseserver -------"),
            re.escape(f"Version: {version()}"),
            f"Pid: {server.process.pid}",
            f"Uid: {os.getuid()}",
            f"Running time: {CLOCK}",
            re.escape("Mode: unencrypted (http)"),
            "Loglevel: 1",
            "Reinit allowed: no",
            re.escape("CORS-base url: *"),
            "Count of connected clients: 2",
            "Current registred SSE clients: 1",
            "Maximum number of connections: 2",
            "Total client handshaked: 2",
            "Total reinit connection: 0",
            "Total message processed: 3",
            "Total message sent: 2",
            re.escape("------------- end --------------"),
        ],
    )
    assert idle.status == 200


def test_client_list(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(
        server.port,
        "/sse?subscribe=room&id=u17",
        headers={"User-Agent": "pytest-agent/1.0"},
    )
    fifo_write(fifo, b"room=one\nroom=two\n")
    room.read_events(2)
    port = room.sock.getsockname()[1]
    mark = server.mark()
    fifo_write(fifo, b"clientlist\n")
    block = log_block(
        server,
        "------- requested client list -------",
        "---------------- end ----------------",
        mark,
    )
    assert_lines(
        block,
        [
            re.escape("------- requested client list -------"),
            "List of clients:",
            rf"#1 - <\d+> info: 127\.0\.0\.1:{port} S:SSE Err: 0 Messages: 2"
            r" Reinit: 0 SSL:No",
            rf"  Connection time: {CLOCK}  Handshaked time: {CLOCK} UniqId:u17",
            re.escape("  Agent: pytest-agent/1.0"),
            "  Subscribes: room",
            re.escape("---------------- end ----------------"),
        ],
    )


def test_client_list_empty(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    mark = server.mark()
    fifo_write(fifo, b"clientlist\n")
    block = log_block(
        server,
        "------- requested client list -------",
        "---------------- end ----------------",
        mark,
    )
    assert block == [
        "------- requested client list -------",
        "List of clients:",
        "---------------- end ----------------",
    ]


def test_number_of_clients_and_subscribed_clients(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    streams = [
        Stream(server.port, "/sse/room"),
        Stream(server.port, "/sse?subscribe=room-hall&id=u1"),
        Stream(server.port, "/sse/roomx"),
        Stream(server.port, "/sse"),
    ]
    idle = Stream(server.port, "/sse", method="HEAD")
    mark = server.mark()
    fifo_write(
        fifo,
        b"numberofclients\nsubscribedclients:room\nsubscribedclients:hall\n"
        b"subscribedclients:nothing\n",
    )
    server.wait_for_log(r'\] Client count subscribed for "nothing": 0$', start=mark)
    texts = [message(line) for line in server.lines[mark:] if "] " in line]
    assert "Number of connected clients: 5" in texts
    assert 'Client count subscribed for "room": 2' in texts
    assert 'Client count subscribed for "hall": 1' in texts
    counted = [t for t in texts if t.startswith(("Number of", "Client count"))]
    assert counted == [
        "Number of connected clients: 5",
        'Client count subscribed for "room": 2',
        'Client count subscribed for "hall": 1',
        'Client count subscribed for "nothing": 0',
    ]
    assert idle.status == 200 and not any(s.closed for s in streams)


def test_halt_on_the_fifo(start_server, fifo):
    server = start_server("--fifo", str(fifo))
    room = Stream(server.port, "/sse/room")
    everything = Stream(server.port, "/sse?subscribe=*")
    fifo_write(fifo, b"room=before halt\n")
    room.read_events(1)
    everything.read_events(1)
    fifo_write(fifo, b"halt\n")
    for stream in (room, everything):
        stream.read_to_end()
        assert stream.raw.endswith(b"\r\n0\r\n\r\n"), stream.raw[-40:]
        assert stream.finished
        assert_events(stream.data_events(), [(b"before halt", None)])
    assert server.process.wait(TIMEOUT) == 0
    # the FIFO is not removed on exit
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
