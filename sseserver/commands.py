"""
The commands of SPEC §6.  Reports go to the log, C{tcp...} replies back to the
sender as JSON objects; both are formatted here, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from twisted.logger import Logger

from sseserver import __version__
from sseserver.grammar import Command, ProtocolError
from sseserver.hub import Hub
from sseserver.registry import Registry
from sseserver.verbosity import LEVEL_NAMES, Verbosity

CONTROL, FIFO, HTTP = "control", "fifo", "http"


@dataclass
class ServerState:
    """Settings the commands report and change."""

    mode: str = "unencrypted (http)"
    cors_origins: tuple = ("*",)
    allow_commands: bool = False
    reinit: bool = False
    reinits: int = 0
    halt: Callable[[], object] = field(default=lambda: None)


def clock_text(seconds: float) -> str:
    """HH:MM:SS, hours unbounded."""
    seconds = max(0, int(seconds))
    return "%02d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


class Commands:
    log = Logger()

    def __init__(
        self, registry: Registry, hub: Hub, verbosity: Verbosity, state: ServerState
    ):
        self.registry = registry
        self.hub = hub
        self.verbosity = verbosity
        self.state = state
        #: In a cluster (L{sseserver.cluster.Cluster}): the totals are added.
        self.cluster = None

    def run(self, command: Command, source: str) -> Optional[dict]:
        """
        Run a command from C{source} (control, fifo or http).  Returns the JSON
        reply of a C{tcp...} command, else C{None}; raises L{ProtocolError} for a
        command not allowed there.
        """
        name = command.name
        if name.startswith("tcp") and source == FIFO:
            raise ProtocolError(f"{name}: the FIFO cannot carry a reply")
        if name == "halt":
            if source != FIFO and not self.state.allow_commands:
                raise ProtocolError("halt: not allowed here (see --allow-commands)")
            self.log.info("halt requested ({source})", source=source)
            self.state.halt()
            return None
        return getattr(self, "_" + name)(command)

    # reports to the log

    def _lines(self, lines: list) -> None:
        for line in lines:
            self.log.info("{line}", line=line)

    def _status(self, command: Command) -> None:
        registry = self.registry
        self._lines(
            [
                "------- status of sseserver -------",
                f"Version: {__version__}",
                f"Pid: {os.getpid()}",
                f"Uid: {os.getuid()}",
                f"Running time: {clock_text(registry.clock() - registry.started_at)}",
                f"Mode: {self.state.mode}",
                f"Loglevel: {self.verbosity.level}",
                f"Reinit allowed: {'yes' if self.state.reinit else 'no'}",
                f"CORS-base url: {' '.join(self.state.cors_origins)}",
                f"Count of connected clients: {registry.connections}",
                f"Current registred SSE clients: {len(registry)}",
                f"Maximum number of connections: {registry.max_subscribers}",
                f"Total client handshaked: {registry.handshaked}",
                f"Total reinit connection: {self.state.reinits}",
                f"Total message processed: {self.hub.accepted}",
                f"Total message sent: {self.hub.deliveries}",
                "------------- end --------------",
            ]
        )

    def _clientlist(self, command: Command) -> None:
        now = self.registry.clock()
        lines = ["------- requested client list -------", "List of clients:"]
        for position, s in enumerate(self.registry, 1):
            subscribes = "*" if s.all_channels else " ".join(s.channels)
            lines += [
                f"#{position} - <{s.number}> info: {s.peer} S:SSE Err: {s.errors}"
                f" Messages: {s.messages} Reinit: 0 SSL:{'Yes' if s.ssl else 'No'}",
                f"  Connection time: {clock_text(now - s.connected_at)}"
                f"  Handshaked time: {clock_text(now - s.handshaked_at)}"
                f" UniqId:{s.client_id or ''}",
                f"  Agent: {s.agent}",
                f"  Subscribes: {subscribes}",
            ]
        lines.append("---------------- end ----------------")
        self._lines(lines)

    def _numberofclients(self, command: Command) -> None:
        self._lines([f"Number of connected clients: {self.registry.connections}"])

    def _subscribedclients(self, command: Command) -> None:
        count = self.registry.count_channel(command.argument)
        self._lines([f'Client count subscribed for "{command.argument}": {count}'])

    def _set_level(self, level: int) -> None:
        self.verbosity.level = level
        self._lines([f"Loglevel set to {LEVEL_NAMES[level]} ({level})"])

    def _loglevel_quiet(self, command: Command) -> None:
        self._set_level(0)

    def _loglevel_normal(self, command: Command) -> None:
        self._set_level(1)

    def _loglevel_debug(self, command: Command) -> None:
        self._set_level(2)

    def _reinit_enable(self, command: Command) -> None:
        self.state.reinit = True
        self._lines(["Reinit enabled"])

    def _reinit_disable(self, command: Command) -> None:
        self.state.reinit = False
        self._lines(["Reinit disabled"])

    # replies to the sender

    def status_object(self) -> dict:
        registry = self.registry
        return {
            "version": __version__,
            "runningtime": clock_text(registry.clock() - registry.started_at),
            "mode": self.state.mode,
            "loglevel": self.verbosity.level,
            "allconncli": registry.connections,
            "sseconncli": len(registry),
            "maxconncli": registry.max_subscribers,
            "msgproccnt": self.hub.accepted,
            "msgsendcnt": self.hub.deliveries,
            "reinitcnt": self.state.reinits,
        } | self._cluster_figures()

    def _cluster_figures(self) -> dict:
        """SPEC §11: C{"cluster": {"nodes", "sseconncli", "allconncli"}}."""
        if self.cluster is None:
            return {}
        return {"cluster": self.cluster.totals()}

    def _tcpstatus(self, command: Command) -> dict:
        return self.status_object()

    def _tcpnumberofclients(self, command: Command) -> dict:
        reply = {"numberofclients": self.registry.connections}
        if self.cluster is not None:
            totals = self.cluster.totals()
            reply["cluster"] = {
                "nodes": totals["nodes"],
                "numberofclients": totals["allconncli"],
            }
        return reply

    def _tcpsubscribedclients(self, command: Command) -> dict:
        here = self.registry.count_channel(command.argument)
        reply = {"subscribedclients": here, "subscribedfor": command.argument}
        if self.cluster is not None:
            reply["cluster"] = {
                "nodes": self.cluster.totals()["nodes"],
                "subscribedclients": self.cluster.channel_total(command.argument, here),
            }
        return reply
