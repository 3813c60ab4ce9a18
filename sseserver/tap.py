"""
C{twistd sseserver}: command-line options and the service tree (SPEC §1).
"""

from __future__ import annotations

import os
import resource as rlimit
import shlex
import sys
import time
from typing import Optional

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address
from twisted.logger import Logger
from twisted.python import usage

from sseserver.admin import DEFAULT_ADMIN, AdminResource, AdminSite
from sseserver.cluster import Cluster
from sseserver.commands import Commands, ServerState
from sseserver.control import ControlFactory
from sseserver.dispatch import Dispatcher
from sseserver.fifo import FifoReader, check_fifo_path
from sseserver.flow import Congestion
from sseserver.grammar import DIALECTS, HASSES
from sseserver.hub import HISTORY, Hub
from sseserver.listeners import ListeningService
from sseserver.registry import MAX_CLIENT_BUFFER, Registry
from sseserver.resp import parse_redis_url
from sseserver.verbosity import LEVEL_NAMES, Verbosity
from sseserver.web import SSEResource, SSESite, address_text
from sseserver.workers import (
    AdoptedListener,
    NotShareable,
    ParentWatch,
    WorkerPool,
    listen_parameters,
    shared_sockets,
)

DEFAULT_PORT = "tcp:8080"
DEFAULT_CONTROL = "tcp:8085:interface=127.0.0.1"

log = Logger(namespace="sseserver")


def _number(option: str, text: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{option}: not a number: {text!r}") from None
    if value < minimum:
        raise usage.UsageError(f"--{option}: must be at least {minimum}: {text!r}")
    return value


def _check_endpoint(option: str, description: str) -> str:
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except Exception as error:  # the parser raises several types
        reason = str(error)
        if description.startswith("systemd:") and isinstance(error, LookupError):
            reason = "no socket passed by systemd (LISTEN_FDS, LISTEN_FDNAMES)"
        raise usage.UsageError(
            f"--{option}: bad endpoint {description!r}: {reason}"
        ) from None
    return description


def read_config(path: str) -> list:
    """A config file: one option per line as on the command line; # comments."""
    try:
        with open(path, encoding="utf-8") as config:
            lines = config.read().splitlines()
    except OSError as error:
        raise usage.UsageError(f"--config: {error.strerror}: {path!r}") from None
    args = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            args.extend(shlex.split(line))
    return args


def _given(args: list) -> set:
    """The long option names present in an argument list."""
    return {a[2:].split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2}


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A Server-Sent Events notification server, a drop-in replacement for "
        "hasses and SSE-Server.  Browsers subscribe on --port; backends publish "
        "through --control, --fifo or (with --http-publish) HTTP."
    )

    optFlags = [
        ["http-publish", None, "Allow publishing with HTTP GET queries on --port."],
        ["allow-commands", None, "Accept halt on the control port and HTTP commands."],
        ["reinit", None, "hasses -ra: a new GET on an open stream re-initialises it."],
        ["no-demo", None, "Do not serve the demo page at /."],
    ]
    optParameters = [
        ["prefix", None, "/sse", "URL path of subscriptions and HTTP publishing."],
        ["dialect", None, "sse-server", "Control line dialect: sse-server or hasses."],
        ["separator", None, None, "Also split control lines at this character."],
        ["fifo", None, None, "Named pipe accepting control lines."],
        ["publish-token", None, None, "Secret required for HTTP publishing."],
        [
            "heartbeat",
            None,
            "15",
            "Seconds between heartbeats to idle streams; 0: off.",
        ],
        ["retry", None, None, "Send 'retry: MS' at the start of each stream."],
        [
            "history",
            None,
            str(HISTORY),
            "Events kept for Last-Event-ID replay; 0: no replay.",
        ],
        [
            "admin",
            None,
            DEFAULT_ADMIN,
            "Admin HTTP endpoint (/metrics, /healthz, /status, /clients); 'none'.",
        ],
        ["max-clients", None, "0", "Open subscribers allowed (0: no limit)."],
        [
            "max-client-buffer",
            None,
            str(MAX_CLIENT_BUFFER),
            "Unsent bytes allowed per subscriber before it is dropped.",
        ],
        ["loglevel", None, "normal", "Start-up log level: quiet, normal or debug."],
        ["config", None, None, "Read options from FILE; the command line wins."],
        ["redis", None, None, "Cluster through Redis: redis://host:port/db."],
        [
            "workers",
            None,
            "1",
            "Worker processes sharing the SSE ports (needs --redis).",
        ],
        ["worker", None, None, "Internal (set by --workers): this worker's number."],
    ]

    _lists = {
        "port": [DEFAULT_PORT],
        "control": [DEFAULT_CONTROL],
        "cors-origin": ["*"],
    }

    def __init__(self):
        super().__init__()
        for name in self._lists:
            self[name] = []
        self["inherit-fd"] = []
        #: The arguments given, the config file's included (for the workers).
        self.arguments: list = []

    def opt_port(self, endpoint: str) -> None:
        """Where browsers connect: a Twisted endpoint string (repeatable)."""
        self["port"].append(endpoint)

    def opt_control(self, endpoint: str) -> None:
        """Control port endpoint (repeatable); 'none' disables it."""
        self["control"].append(endpoint)

    def opt_inherit_fd(self, fd: str) -> None:
        """Internal (set by --workers): serve --port on this inherited socket."""
        self["inherit-fd"].append(_number("inherit-fd", fd))

    def opt_cors_origin(self, origin: str) -> None:
        """Allowed browser origin (repeatable); default '*'."""
        self["cors-origin"].append(origin)

    def parseOptions(self, options: Optional[list] = None) -> None:
        args = sys.argv[1:] if options is None else list(options)
        config = Options._config_path(args)
        if config is not None:
            from_file = read_config(config)
            given = _given(args)
            # The command line wins: drop what the file says about options it sets.
            kept = []
            for arg in Options._pairs(from_file):
                if _given([arg[0]]) & given:
                    continue
                kept.extend(arg)
            args = kept + args
        self.arguments = args
        super().parseOptions(args)

    @staticmethod
    def _config_path(args: list) -> Optional[str]:
        path = None
        for index, arg in enumerate(args):
            if arg == "--config" and index + 1 < len(args):
                path = args[index + 1]
            elif arg.startswith("--config="):
                path = arg.split("=", 1)[1]
        return path

    @staticmethod
    def _pairs(args: list) -> list:
        """Group a config file's arguments as [option, value?] lists."""
        flags = {"--" + flag[0] for flag in Options.optFlags}
        pairs, index = [], 0
        while index < len(args):
            arg = args[index]
            if arg in flags or "=" in arg or not arg.startswith("--"):
                pairs.append([arg])
                index += 1
            else:
                pairs.append(args[index : index + 2])
                index += 2
        return pairs

    def postOptions(self) -> None:
        for name, default in self._lists.items():
            if not self[name]:
                self[name] = list(default)
        if "none" in self["control"]:
            self["control"] = []
        for endpoint in self["port"]:
            _check_endpoint("port", endpoint)
        for endpoint in self["control"]:
            _check_endpoint("control", endpoint)
        if self["admin"] == "none":
            self["admin"] = None
        else:
            _check_endpoint("admin", self["admin"])
        if not self["prefix"].startswith("/"):
            raise usage.UsageError(f"--prefix: must start with '/': {self['prefix']!r}")
        if self["dialect"] not in DIALECTS:
            raise usage.UsageError(
                f"--dialect: not one of {', '.join(DIALECTS)}: {self['dialect']!r}"
            )
        if self["separator"] is None and self["dialect"] == HASSES:
            self["separator"] = ";"
        separator = self["separator"]
        if separator is not None and (len(separator) != 1 or separator in "= \t"):
            raise usage.UsageError(f"--separator: not one character: {separator!r}")
        if self["loglevel"] not in LEVEL_NAMES:
            raise usage.UsageError(
                f"--loglevel: not one of {', '.join(LEVEL_NAMES)}: {self['loglevel']!r}"
            )
        self["heartbeat"] = _number("heartbeat", self["heartbeat"])
        self["max-clients"] = _number("max-clients", self["max-clients"])
        self["history"] = _number("history", self["history"])
        self["max-client-buffer"] = _number(
            "max-client-buffer", self["max-client-buffer"], minimum=1
        )
        if self["retry"] is not None:
            self["retry"] = _number("retry", self["retry"])
        if self["redis"] is not None:
            try:
                self["redis"] = parse_redis_url(self["redis"])
            except ValueError as error:
                raise usage.UsageError(f"--redis: {error}") from None
        self["workers"] = _number("workers", self["workers"], minimum=1)
        if self["workers"] > 1 and self["redis"] is None:
            raise usage.UsageError(
                "--workers: needs --redis (the workers share events through it)"
            )
        if self["workers"] > 1:
            for endpoint in self["port"]:
                try:
                    listen_parameters(endpoint)
                except NotShareable as error:
                    raise usage.UsageError(f"--workers: {error}") from None
        if self["inherit-fd"] and len(self["inherit-fd"]) != len(self["port"]):
            raise usage.UsageError("--inherit-fd: one per --port")
        if self["worker"] is not None:
            self["worker"] = _number("worker", self["worker"], minimum=1)
        if self["fifo"] is not None:
            try:
                check_fifo_path(self["fifo"])
            except ValueError as error:
                raise usage.UsageError(f"--fifo: {error}") from None

    def worker_arguments(self) -> list:
        """A worker's arguments: ours, but for what only the parent serves."""
        parent_only = {"workers", "control", "admin", "fifo", "config"}
        arguments = []
        for pair in Options._pairs(self.arguments):
            if not _given(pair[:1]) & parent_only:
                arguments.extend(pair)
        return arguments + ["--control", "none", "--admin", "none"]


def stream_mode(ports: list) -> str:
    """The C{mode} of C{tcpstatus}: which kinds the SSE listeners are."""
    secure = {p.split(":", 1)[0] in ("ssl", "tls") for p in ports}
    if secure == {True}:
        return "SSL encrypted (https)"
    if secure == {False}:
        return "unencrypted (http)"
    return "mixed"


def raise_fd_limit() -> None:
    """Raise the soft file-descriptor limit to the hard one (SPEC §1)."""
    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    if hard != rlimit.RLIM_INFINITY and soft < hard:
        rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (hard, hard))
        log.info(
            "file descriptor limit raised from {soft} to {hard}", soft=soft, hard=hard
        )


class StreamsService(Service):
    """Ends every stream cleanly (final chunk, close) when the server stops."""

    def __init__(self, sites: list, hub: Optional[Hub] = None):
        self.sites = sites
        self.hub = hub

    def stopService(self):
        from twisted.internet.defer import gatherResults

        super().stopService()
        if self.hub is not None:
            self.hub.stopping = True  # the disconnects that follow are ours
        return gatherResults([site.end_all_streams() for site in self.sites])


def makeService(config: Options, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    raise_fd_limit()
    verbosity = Verbosity.named(config["loglevel"])
    registry = Registry(clock=reactor.seconds)
    hub = Hub(registry, verbosity, clock=time.time, history=config["history"])

    def halt() -> None:
        if reactor.running:
            reactor.callLater(0, reactor.stop)

    state = ServerState(
        mode=stream_mode(config["port"]),
        cors_origins=tuple(config["cors-origin"]),
        allow_commands=config["allow-commands"],
        reinit=config["reinit"],
        halt=halt,
    )
    flow = Congestion(registry, verbosity)
    commands = Commands(registry, hub, verbosity, state)
    dispatcher = Dispatcher(
        hub, commands, verbosity, config["dialect"], config["separator"]
    )
    resource = SSEResource(
        registry,
        dispatcher,
        verbosity,
        prefix=config["prefix"],
        cors_origins=tuple(config["cors-origin"]),
        http_publish=config["http-publish"],
        publish_token=config["publish-token"],
        allow_commands=config["allow-commands"],
        demo=not config["no-demo"],
        retry=config["retry"],
        max_clients=config["max-clients"],
        max_client_buffer=config["max-client-buffer"],
        flow=flow,
    )

    service = MultiService()
    sites = [SSESite(resource, state=state) for _ in config["port"]]
    # Added first, so stopped last: streams end after the listeners have closed.
    StreamsService(sites, hub).setServiceParent(service)
    listeners = []  # for the admin's /status

    def listen(kind: str, description: str, factory) -> None:
        endpoint = endpoints.serverFromString(reactor, description)
        listener = ListeningService(kind, description, endpoint, factory, reactor)
        listener.setServiceParent(service)
        listeners.append(listener)

    if config["workers"] > 1:
        share_ports(config, reactor, service)
    elif config["inherit-fd"]:
        become_worker(config, sites, reactor, service)
    else:
        for description, site in zip(config["port"], sites):
            listen("SSE", description, site)
    control = ControlFactory(dispatcher, verbosity, flow, reactor)
    for description in config["control"]:
        listen("control", description, control)
    if config["admin"] is not None:
        admin = AdminResource(registry, hub, dispatcher, commands, listeners)
        listen("admin", config["admin"], AdminSite(admin, verbosity))
    if config["fifo"] is not None:
        fifo = FifoReader(os.path.abspath(config["fifo"]), dispatcher, reactor, flow)
        fifo.setServiceParent(service)
    if config["heartbeat"]:
        heartbeat = TimerService(config["heartbeat"], registry.heartbeat)
        heartbeat.clock = reactor
        heartbeat.setServiceParent(service)
    if config["redis"] is not None:
        cluster = Cluster(
            config["redis"],
            hub,
            reactor,
            flow,
            history=config["history"],
            figures=lambda: (
                len(registry),
                registry.connections,
                registry.channel_counts(),
            ),
        )
        dispatcher.cluster = commands.cluster = cluster
        cluster.setServiceParent(service)
    return service


def share_ports(config: Options, reactor, service: MultiService) -> None:
    """The parent of --workers: make the shared sockets, start the workers."""
    count = config["workers"]
    sockets = []
    for description in config["port"]:
        try:
            per_port = shared_sockets(description, count)
        except OSError as error:
            raise SystemExit(
                f"sseserver: cannot listen on {description!r} (SSE): {error}"
            ) from None
        sockets.append(per_port)
        host, port = per_port[0].getsockname()[:2]
        address = address_text(IPv4Address("TCP", host, port))
        log.info("SSE listening on {address}", address=address)
        log.info(
            "SSE port {address}: shared by {count} workers",
            address=address,
            count=count,
        )
    pool = WorkerPool(count, config.worker_arguments(), sockets, reactor)
    pool.setServiceParent(service)


def become_worker(config: Options, sites: list, reactor, service) -> None:
    """A worker of --workers: serve the inherited sockets; stop with the parent."""
    from twisted.internet.stdio import StandardIO

    number = config["worker"] or 0
    for description, fd, site in zip(config["port"], config["inherit-fd"], sites):
        AdoptedListener(description, fd, site, reactor, number).setServiceParent(
            service
        )
    # Only standard input is watched; the log goes to standard output as is.
    StandardIO(
        ParentWatch(reactor), stdout=os.open(os.devnull, os.O_WRONLY), reactor=reactor
    )
