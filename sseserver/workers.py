"""
C{--workers N}: N worker processes share the SSE ports (SPEC §11).

The parent makes the listening sockets: for each C{tcp:}/C{ssl:} port, N sockets
bound to the same address with C{SO_REUSEPORT}, so that the kernel spreads new
connections evenly over the workers, one socket each.  Each worker inherits its
sockets (C{--inherit-fd}), adopts them, and serves its subscribers; all of them
read the cluster's Redis stream.  The parent serves the control port, the FIFO
and the admin listener, publishes into Redis, relays its workers' logs, and
restarts a worker that exits.  A worker whose parent goes away (its standard
input closes) stops.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, eventFromJSON, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory

from sseserver.web import address_text

log = Logger(namespace="sseserver.workers")

#: Seconds before restarting a worker; doubled while it keeps dying young.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 10.0
#: A worker that ran this long was healthy: its next restart is quick again.
HEALTHY_AFTER = 10.0
#: Seconds a stopping worker gets to end its streams before it is killed.
STOP_GRACE = 10.0


class NotShareable(ValueError):
    """A port kind that workers cannot share."""


def listen_parameters(description: str) -> dict:
    """
    What a C{tcp:}/C{ssl:} endpoint string asks for: port, interface, backlog and,
    for TLS, the context factory.  Read by letting the endpoint listen on a
    L{MemoryReactor}, which records the call instead of binding anything, so
    that every option Twisted's parser knows keeps its meaning.
    """
    recorder = MemoryReactor()
    serverFromString(recorder, description).listen(Factory())
    if recorder.tcpServers:
        port, _, backlog, interface = recorder.tcpServers[0]
        return {"port": port, "backlog": backlog, "interface": interface, "tls": None}
    if recorder.sslServers:
        port, _, context, backlog, interface = recorder.sslServers[0]
        return {
            "port": port,
            "backlog": backlog,
            "interface": interface,
            "tls": context,
        }
    raise NotShareable(
        f"{description!r}: workers share tcp: and ssl: ports only"
        " (for unix: or systemd: sockets, run one process per socket)"
    )


def shared_sockets(description: str, count: int) -> list:
    """C{count} listening sockets on one address, with C{SO_REUSEPORT}."""
    params = listen_parameters(description)
    interface = params["interface"]
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    port = params["port"]
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface, port))
            sock.listen(params["backlog"])
            sock.setblocking(False)  # the workers' reactors accept on it
            sock.set_inheritable(True)
            port = sock.getsockname()[1]  # port 0: the others bind the one chosen
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class AdoptedListener(Service):
    """A worker's side of a shared port: adopt the inherited socket and serve."""

    def __init__(self, description: str, fd: int, factory, reactor, worker: int):
        self.description = description
        self.fd = fd
        self.factory = factory
        self.reactor = reactor
        self.worker = worker
        self.port = None

    def startService(self) -> None:
        super().startService()
        sock = socket.socket(fileno=self.fd)
        family = sock.family
        sock.detach()
        factory = self.factory
        context = listen_parameters(self.description)["tls"]
        if context is not None:
            factory = TLSMemoryBIOFactory(context, False, factory)
        self.port = self.reactor.adoptStreamPort(self.fd, family, factory)
        os.close(self.fd)  # adoptStreamPort took a duplicate
        log.info(
            "SSE accepting on {address} (worker {worker})",
            worker=self.worker,
            address=address_text(self.port.getHost()),
        )

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


class ParentWatch(protocol.Protocol):
    """A worker's standard input, a pipe from the parent: when it closes, stop."""

    def __init__(self, reactor):
        self.reactor = reactor

    def connectionLost(self, reason) -> None:
        if self.reactor.running:
            log.warn("the parent process is gone: stopping")
            self.reactor.stop()


#: How a worker's log event is written into the parent's log, by level.
_RELAY = {"error": log.error, "critical": log.critical, "warn": log.warn}


class WorkerProcess(protocol.ProcessProtocol):
    """One worker as the parent sees it: its log relayed, its exit reported."""

    def __init__(self, pool: WorkerPool, number: int):
        self.pool = pool
        self.number = number
        self.pid = None
        self._partial: dict = {}  # child fd -> its unfinished last line
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Standard output carries one JSON log event per line (after a record
        separator, \x1e); standard error, what Python writes before the log is
        set up.  Each is split into lines on its own.
        """
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self._relay(line.lstrip(b"\x1e"))

    def _relay(self, record: bytes) -> None:
        text = record.strip().decode("utf-8", "replace")
        if not text:
            return
        try:
            event = eventFromJSON(text)
            message = formatEvent(event)
            level = event.get("log_level")
        except (ValueError, KeyError, TypeError):
            message, level = text, None
        emit = _RELAY.get(getattr(level, "name", None), log.info)
        for line in message.splitlines() or [""]:
            emit("worker {number}: {line}", number=self.number, line=line)

    def processEnded(self, reason) -> None:
        for rest in self._partial.values():
            self._relay(rest.lstrip(b"\x1e"))
        self._partial = {}
        self.ended.callback(None)
        self.pool.worker_ended(self, reason)


class WorkerPool(Service):
    """The parent's workers: started, relayed, restarted, stopped."""

    def __init__(self, count: int, arguments: list, sockets: list, reactor):
        #: The sseserver arguments every worker gets (no --workers, --control...).
        self.count = count
        self.arguments = arguments
        #: Per SSE port, one socket per worker.
        self.sockets = sockets
        self.reactor = reactor
        self.workers: dict = {}  # number -> WorkerProcess
        self._started_at: dict = {}
        self._delays: dict = {}
        self._restarts: dict = {}

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        fds = [per_port[number - 1].fileno() for per_port in self.sockets]
        child_fds = {0: "w", 1: "r", 2: "r"}
        inherit = []
        for index, fd in enumerate(fds):
            child_fds[3 + index] = fd
            inherit += ["--inherit-fd", str(3 + index)]
        args = [
            sys.executable,
            "-m",
            "twisted",
            "--log-format=json",
            "sseserver",
            *self.arguments,
            "--worker",
            str(number),
            *inherit,
        ]
        worker = WorkerProcess(self, number)
        self.reactor.spawnProcess(
            worker, sys.executable, args, env=os.environ, childFDs=child_fds
        )
        self.workers[number] = worker
        self._started_at[number] = self.reactor.seconds()
        log.info("worker {number} started (pid {pid})", number=number, pid=worker.pid)

    def worker_ended(self, worker: WorkerProcess, reason) -> None:
        number = worker.number
        if self.workers.get(number) is not worker:
            return
        del self.workers[number]
        if not self.running:
            log.info(
                "worker {number} (pid {pid}) stopped", number=number, pid=worker.pid
            )
            return
        lived = self.reactor.seconds() - self._started_at.get(number, 0)
        delay = RESTART_DELAY
        if lived < HEALTHY_AFTER:
            delay = min(
                self._delays.get(number, RESTART_DELAY / 2) * 2, MAX_RESTART_DELAY
            )
        self._delays[number] = delay
        log.error(
            "worker {number} (pid {pid}) exited ({reason}); restarting it in {delay} s",
            number=number,
            pid=worker.pid,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._restarts[number] = self.reactor.callLater(delay, self._spawn, number)

    def stopService(self):
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        waiting = []
        for worker in list(self.workers.values()):
            waiting.append(worker.ended)
            self._signal(worker, signal.SIGTERM)
            kill = self.reactor.callLater(
                STOP_GRACE, self._signal, worker, signal.SIGKILL
            )
            worker.ended.addBoth(
                lambda result, kill=kill: kill.active() and kill.cancel()
            )
        done = defer.gatherResults(waiting, consumeErrors=True)
        done.addBoth(lambda _: self._close_sockets())
        return done

    @staticmethod
    def _signal(worker: WorkerProcess, signum: int) -> None:
        try:
            worker.transport.signalProcess(signum)
        except ProcessExitedAlready:
            pass

    def _close_sockets(self) -> None:
        for per_port in self.sockets:
            for sock in per_port:
                sock.close()
        self.sockets = []
