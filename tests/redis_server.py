"""
A real redis-server (the Debian package) for the cluster tests, on a free
loopback port, with its append-only file in the test's directory so that it can
be killed and restarted without losing what it acknowledged.  redis-cli, an
independent client, reads what sseserver wrote.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import TIMEOUT

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, workdir: Path, *extra: str):
        self.dir = workdir / f"redis-{id(self)}"
        self.dir.mkdir()
        self.port = free_port()
        self.extra = list(extra)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            REDIS_SERVER,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT
        while not self._answers():
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as when a host dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(TIMEOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def cli(self, *args: str) -> list:
        """A command through redis-cli; its output lines (--raw)."""
        result = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), "--raw", *args],
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )
        return result.stdout.decode("utf-8").splitlines()

    def stream_ids(self) -> list:
        """The ids in the cluster's stream, oldest first."""
        lines = self.cli("XRANGE", "sseserver:events", "-", "+")
        # --raw prints each entry as its id, then its field/value lines.
        return [line for line in lines if _is_id(line)]


def _is_id(line: str) -> bool:
    ms, dash, seq = line.partition("-")
    return bool(dash) and ms.isdigit() and seq.isdigit() and len(ms) >= 13
