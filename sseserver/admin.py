"""
The admin listener (SPEC §9): C{/metrics} in the Prometheus text format,
C{/healthz}, C{/status} and C{/clients} as JSON, on its own twisted.web Site.

The metrics are read from the live counters of the hub, the registry and the
dispatcher when scraped (a custom collector): nothing is counted per delivery for
them.
"""

from __future__ import annotations

import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from sseserver import __version__
from sseserver.commands import Commands
from sseserver.dispatch import Dispatcher
from sseserver.hub import DISCONNECT_REASONS, INPUTS, Hub
from sseserver.registry import Registry
from sseserver.verbosity import Verbosity
from sseserver.web import SERVER_HEADER, address_text

DEFAULT_ADMIN = "tcp:8086:interface=127.0.0.1"


class SSECollector:
    """sseserver's metrics, read from the live counters at each scrape."""

    def __init__(self, registry: Registry, hub: Hub, dispatcher: Dispatcher):
        self.registry = registry
        self.hub = hub
        self.dispatcher = dispatcher

    def describe(self) -> list:
        return []  # no pre-registration check: collect() is cheap, but not free

    def collect(self):
        registry, hub = self.registry, self.hub
        yield GaugeMetricFamily(
            "sseserver_subscribers",
            "Open SSE streams (sseconncli).",
            value=len(registry),
        )
        yield GaugeMetricFamily(
            "sseserver_connections",
            "Open connections on the SSE ports, subscribers or not (allconncli).",
            value=registry.connections,
        )
        subscriptions = GaugeMetricFamily(
            "sseserver_subscriptions",
            "Subscriptions by kind: one per channel held by a subscriber"
            ' (kind="channel"), one per all-channel subscriber (kind="all").',
            labels=["kind"],
        )
        by_kind = registry.subscription_counts()
        for kind in ("channel", "all"):
            subscriptions.add_metric([kind], by_kind[kind])
        yield subscriptions
        yield GaugeMetricFamily(
            "sseserver_channels",
            "Channels with at least one subscriber.",
            value=by_kind["channels"],
        )
        events = CounterMetricFamily(
            "sseserver_events",
            "Events accepted, by the input they came from.",
            labels=["input"],
        )
        for name in INPUTS:
            events.add_metric([name], hub.accepted_by_input.get(name, 0))
        yield events
        yield CounterMetricFamily(
            "sseserver_deliveries",
            "Events handed to subscribers, event x subscriber, replays included"
            " (msgsendcnt).",
            value=hub.deliveries,
        )
        yield CounterMetricFamily(
            "sseserver_bytes_sent",
            "Bytes of the events delivered (SSE fields, without HTTP chunk framing,"
            " stream openings and heartbeats).",
            value=hub.bytes_sent,
        )
        disconnects = CounterMetricFamily(
            "sseserver_disconnects",
            "Subscribers gone: closed by their peer (client), dropped for reading"
            " too slowly (slow), ended by the server (server).",
            labels=["reason"],
        )
        for reason in DISCONNECT_REASONS:
            disconnects.add_metric([reason], hub.disconnects[reason])
        yield disconnects
        yield CounterMetricFamily(
            "sseserver_slow_client_drops",
            "Subscribers dropped for more unsent data than --max-client-buffer.",
            value=hub.disconnects["slow"],
        )
        yield CounterMetricFamily(
            "sseserver_replay_requests",
            "Subscriptions with a well-formed Last-Event-ID (or lastEventId).",
            value=hub.replay_requests,
        )
        yield CounterMetricFamily(
            "sseserver_replay_gaps",
            "Replays that began with an sseserver-gap event.",
            value=hub.replay_gaps,
        )
        yield CounterMetricFamily(
            "sseserver_replays_cut",
            "Replays too big for the subscriber's buffer: the stream ended after a"
            " part, to go on when the client reconnects.",
            value=hub.replays_cut,
        )
        yield CounterMetricFamily(
            "sseserver_control_errors",
            "Control-port and FIFO lines refused with an error.",
            value=self.dispatcher.errors,
        )
        history = hub.history
        yield GaugeMetricFamily(
            "sseserver_history_events",
            "Events held for Last-Event-ID replay.",
            value=0 if history is None else len(history),
        )
        cluster = self.dispatcher.cluster
        if cluster is not None:
            yield GaugeMetricFamily(
                "sseserver_redis_up",
                "1 while the cluster's Redis takes publishes, else 0.",
                value=int(cluster.available),
            )
            totals = cluster.totals()
            yield GaugeMetricFamily(
                "sseserver_cluster_nodes",
                "Nodes of the cluster reporting their figures, this one included.",
                value=totals["nodes"],
            )
            yield GaugeMetricFamily(
                "sseserver_cluster_subscribers",
                "Subscribers of all nodes (sseconncli of the cluster).",
                value=totals["sseconncli"],
            )
            yield GaugeMetricFamily(
                "sseserver_cluster_connections",
                "Connections to the SSE ports of all nodes (allconncli of the"
                " cluster).",
                value=totals["allconncli"],
            )
            yield CounterMetricFamily(
                "sseserver_publishes_refused",
                "Events refused because Redis could not take them.",
                value=cluster.refused_total,
            )
        info = GaugeMetricFamily(
            "sseserver_build_info", "sseserver version.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info


def metrics_registry(collector: SSECollector) -> CollectorRegistry:
    """A registry of its own: sseserver's metrics, plus the process's and Python's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def listener_info(services: list) -> list:
    """What the listening services are bound to, for C{/status}."""
    listeners = []
    for service in services:
        port = service.port
        listeners.append(
            {
                "kind": service.kind,
                "endpoint": service.description,
                "address": None if port is None else address_text(port.getHost()),
            }
        )
    return listeners


class AdminResource(Resource):
    isLeaf = True

    def __init__(
        self,
        registry: Registry,
        hub: Hub,
        dispatcher: Dispatcher,
        commands: Commands,
        listeners: list,
    ):
        super().__init__()
        self.registry = registry
        self.commands = commands
        self.listeners = listeners
        self.metrics = metrics_registry(SSECollector(registry, hub, dispatcher))
        self.pages = {
            b"/metrics": self._metrics,
            b"/healthz": self._healthz,
            b"/status": self._status,
            b"/clients": self._clients,
        }

    def render(self, request):
        request.setHeader(b"server", SERVER_HEADER)
        request.setHeader(b"cache-control", b"no-cache")
        page = self.pages.get(request.path)
        if page is None:
            return self._text(request, 404, "not found")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._text(request, 405, "method not allowed")
        return page(request)

    def _text(self, request, code: int, text: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return text.encode("utf-8") + b"\n"

    def _json(self, request, value) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode("utf-8") + b"\n"

    def _metrics(self, request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.metrics)

    def _healthz(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok"

    def _status(self, request) -> bytes:
        status = self.commands.status_object()
        status["listeners"] = listener_info(self.listeners)
        status["uptime_s"] = int(self.registry.clock() - self.registry.started_at)
        return self._json(request, status)

    def _clients(self, request) -> bytes:
        now = self.registry.clock()
        clients = [
            {
                "id": s.number,
                "peer": s.peer,
                "channels": list(s.channels),
                "all": s.all_channels,
                "agent": s.agent,
                "connected_s": int(now - s.connected_at),
                "messages": s.messages,
                "ssl": s.ssl,
            }
            for s in self.registry
        ]
        return self._json(request, {"clients": clients})


class AdminSite(Site):
    """The admin listener's Site: access lines only at the C{debug} log level."""

    displayTracebacks = False
    access_log = Logger()

    def __init__(self, resource: AdminResource, verbosity: Verbosity):
        super().__init__(resource)
        self.verbosity = verbosity

    def log(self, request) -> None:
        if self.verbosity.debug:
            line = self._logFormatter(self._logDateTime, request)
            self.access_log.info("admin: {line}", line=line)
