"""
A TCP forwarder for the end-to-end tests: put between a client (a browser, a
Node EventSource) and the real server on another loopback port, it records
what the client sends and lets the test cut the connections it carries, or
hold new ones, to see the client reconnect by itself.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import threading
import time

from conftest import TIMEOUT


class Forwarder:
    """
    A TCP forwarder on another loopback port, in front of the server: what the
    browser sends is recorded, C{cut()} closes every connection it carries, and
    while C{hold()} is on, new connections are accepted but wait, unforwarded,
    until C{release()}.  One selector thread does all the work.
    """

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self._wake_read, self._wake = socket.socketpair()
        self._calls: queue.Queue = queue.Queue()
        self.changed = threading.Condition()
        self.held = False
        self.pending: list = []  # accepted, waiting for release()
        self.peers: dict = {}  # socket -> the other end of its link
        self.records: dict = {}  # client socket -> what it sent
        self.sent: list = []  # what each accepted client sent, in accept order
        self.running = True
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self._wake_read, selectors.EVENT_READ, self._run_calls)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    # the selector thread

    def _loop(self) -> None:
        while self.running:
            for key, _ in self.selector.select():
                key.data(key.fileobj)

    def _run_calls(self, wake) -> None:
        wake.recv(4096)
        while not self._calls.empty():
            self._calls.get()()

    def _accept(self, listener) -> None:
        client, _ = listener.accept()
        record = bytearray()
        with self.changed:
            self.sent.append(record)
            self.records[client] = record
            if self.held:
                self.pending.append(client)
            else:
                self._connect(client)
            self.changed.notify_all()

    def _connect(self, client) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream), TIMEOUT)
        except OSError:
            client.close()
            return
        self.peers[client] = upstream
        self.peers[upstream] = client
        self.selector.register(client, selectors.EVENT_READ, self._relay)
        self.selector.register(upstream, selectors.EVENT_READ, self._relay)

    def _relay(self, sock) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            record = self.records.get(sock)
            if record is not None:
                with self.changed:
                    record += data
            try:
                self.peers[sock].sendall(data)
                return
            except OSError:
                pass
        self._close_link(sock)

    def _close_link(self, sock) -> None:
        for end in (sock, self.peers.get(sock)):
            if end is None:
                continue
            self.peers.pop(end, None)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(end)
            end.close()

    def _in_loop(self, function):
        """Run C{function} in the selector thread; its result."""
        done = threading.Event()
        result = []

        def call():
            try:
                result.append(function())
            finally:
                done.set()

        self._calls.put(call)
        self._wake.send(b"x")
        assert done.wait(TIMEOUT), "forwarder thread stuck"
        return result[0] if result else None

    # the test's side

    def hold(self) -> None:
        with self.changed:
            self.held = True

    def release(self) -> None:
        def release():
            with self.changed:
                self.held = False
                waiting, self.pending = self.pending, []
            for client in waiting:
                self._connect(client)

        self._in_loop(release)

    def cut(self) -> int:
        """Close every forwarded connection (both ends); how many there were."""

        def cut():
            clients = [s for s in self.peers if s in self.records]
            for client in clients:
                self._close_link(client)
            return len(clients)

        return self._in_loop(cut)

    def wait_pending(self, count: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        with self.changed:
            while len(self.pending) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.pending)} connections waiting"
                self.changed.wait(left)

    def requests(self, target: str) -> list:
        """The headers of every request for C{target} that went through, in order."""
        found = []
        with self.changed:
            records = [bytes(r) for r in self.sent]
        for record in records:
            while b"\r\n\r\n" in record:
                head, _, record = record.partition(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                record = record[int(headers.get("content-length", 0)) :]
                if request_line.split()[1] == target:
                    found.append(headers)
        return found

    def __enter__(self) -> "Forwarder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        def stop():
            self.running = False
            for sock in list(self.peers) + self.pending:
                sock.close()

        self._in_loop(stop)
        self.thread.join(TIMEOUT)
        self.selector.close()
        for sock in (self.listener, self._wake_read, self._wake):
            sock.close()
