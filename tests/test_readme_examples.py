"""
The shell sessions of README.rst, run verbatim against the real server.

Every literal block of the README whose first line starts with C{$ } is a session:
each C{$ } command (with its backslash continuation lines) is run by bash, exactly
as written, and what it prints must be what the README shows under it (event ids,
which differ from run to run, are compared as placeholders).  The block after the
comment C{.. readme-test: setup} gives the server's options (its C{twistd} line)
and the subscriber to run in the background (its C{curl -N} line, run verbatim);
what that subscriber prints must be the block after
C{.. readme-test: subscriber-output}.

The examples use the default ports (8080, 8085, 8086); the server runs on free
ports, and curl is pointed at them by a C{.curlrc} (C{connect-to}) in C{CURL_HOME},
so that the commands themselves are not touched.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time

import pytest
from conftest import ROOT, TIMEOUT

README = ROOT / "README.rst"
MARKER = re.compile(r"^\.\. readme-test: (\S+)$")
EVENT_ID = re.compile(r"\b\d{10,}-\d+\b")
DEFAULT_PORTS = {"sse": 8080, "control": 8085, "admin": 8086}

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def literal_blocks(text: str) -> list:
    """(marker or None, block text) for every literal block, in order."""
    lines = text.splitlines()
    blocks = []
    marker = None
    index = 0
    while index < len(lines):
        line = lines[index]
        found = MARKER.match(line)
        if found:
            marker = found[1]
        if line.rstrip().endswith("::") and not line.startswith(".."):
            index += 1
            while index < len(lines) and not lines[index].strip():
                index += 1
            body = []
            while index < len(lines) and (
                not lines[index].strip() or lines[index].startswith("    ")
            ):
                body.append(lines[index][4:])
                index += 1
            while body and not body[-1].strip():
                body.pop()
            blocks.append((marker, "\n".join(body)))
            marker = None
            continue
        index += 1
    return blocks


def sessions(blocks: list) -> list:
    """(command, expected output) of every C{$ } line of the session blocks."""
    steps = []
    for _, block in blocks:
        if not block.startswith("$ "):
            continue
        lines = block.split("\n")
        index = 0
        while index < len(lines):
            assert lines[index].startswith("$ "), lines[index]
            command = [lines[index][2:]]
            while command[-1].endswith("\\"):
                index += 1
                command.append(lines[index])
            index += 1
            output = []
            while index < len(lines) and not lines[index].startswith("$ "):
                output.append(lines[index])
                index += 1
            steps.append(("\n".join(command), "\n".join(output)))
    return steps


def normal(text: str) -> str:
    return EVENT_ID.sub("<id>", text).rstrip()


def marked(blocks: list, name: str) -> str:
    (block,) = [b for m, b in blocks if m == name]
    return block


def test_the_readme_has_sessions():
    blocks = literal_blocks(README.read_text(encoding="utf-8"))
    assert len(sessions(blocks)) >= 8
    assert "twistd" in marked(blocks, "setup")
    assert marked(blocks, "subscriber-output").startswith(":ok")


def test_readme_sessions_run_verbatim(start_server, tmp_path):
    blocks = literal_blocks(README.read_text(encoding="utf-8"))
    setup = marked(blocks, "setup").split("\n")
    (twistd,) = [line for line in setup if "twistd" in line]
    (subscriber,) = [line for line in setup if line.startswith("curl -N")]
    words = shlex.split(twistd)
    options = words[words.index("sseserver") + 1 :]
    server = start_server(*options, "--admin", "tcp:0:interface=127.0.0.1")

    actual = {
        "sse": server.port,
        "control": server.control_port,
        "admin": server.admin_port,
    }
    curlrc = ['noproxy = "*"']
    for kind, port in DEFAULT_PORTS.items():
        for host in ("127.0.0.1", "localhost"):
            curlrc.append(f'connect-to = "{host}:{port}:127.0.0.1:{actual[kind]}"')
    (tmp_path / ".curlrc").write_text("\n".join(curlrc) + "\n")
    env = dict(os.environ, CURL_HOME=str(tmp_path))
    for proxy in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        env.pop(proxy, None)

    output_path = tmp_path / "subscriber.out"
    with open(output_path, "wb") as output:
        background = subprocess.Popen(
            ["bash", "-c", subscriber],
            stdout=output,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not output_path.read_bytes().startswith(b":ok"):
            assert background.poll() is None, "the subscriber's curl exited"
            assert time.monotonic() < deadline, "the subscriber did not connect"
            time.sleep(0.05)

        for command, expected in sessions(blocks):
            result = subprocess.run(
                ["bash", "-c", command],
                capture_output=True,
                env=env,
                timeout=TIMEOUT * 2,
                check=False,
            )
            shown = result.stdout.decode("utf-8")
            assert normal(shown) == normal(expected), (command, shown, result.stderr)

        expected = normal(marked(blocks, "subscriber-output"))
        deadline = time.monotonic() + TIMEOUT
        while normal(output_path.read_text()) != expected:
            if time.monotonic() > deadline:
                assert normal(output_path.read_text()) == expected
            time.sleep(0.05)
    finally:
        os.killpg(background.pid, signal.SIGTERM)
        background.wait(TIMEOUT)
