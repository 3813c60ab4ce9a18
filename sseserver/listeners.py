"""
Listening on endpoints: one service per endpoint, a log line with the address
actually bound, and one log line per incident when accepting fails for want of
file descriptors.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from sseserver.web import address_text

log = Logger(namespace="sseserver")

#: Seconds without accept errors that end an incident.
INCIDENT_QUIET = 5.0
#: Seconds a port stops accepting when it cannot even refuse connections.
PAUSE = 0.5


@implementer(ILogObserver)
class AcceptErrors:
    """
    Twisted's listening port survives running out of file descriptors (it
    accepts and closes the waiting connections with a reserved descriptor), but
    it logs every refused connection.  This observer stands between one port and
    the log: accept errors become one line when an incident starts and one when
    it ends; everything else passes through.
    """

    def __init__(self, kind: str, reactor, downstream=globalLogPublisher):
        self.kind = kind
        self.reactor = reactor
        self.downstream = downstream
        self.port = None
        self.refused = 0
        self._quiet = None
        self._resume = None

    def __call__(self, event: dict) -> None:
        text = event.get("log_format") or ""
        if not text.startswith(("EMFILE", "Could not accept", "Re-reserving")):
            self.downstream(event)
            return
        if self._quiet is None:
            log.error(
                "{kind}: out of file descriptors; refusing new connections",
                kind=self.kind,
            )
            self._quiet = self.reactor.callLater(INCIDENT_QUIET, self._over)
        else:
            self._quiet.reset(INCIDENT_QUIET)
        if text.startswith("EMFILE recovery: Closed"):
            self.refused += 1
        if text.startswith("Could not accept"):
            self._pause()

    def _pause(self) -> None:
        """
        Without a spare descriptor the waiting connection stays in the backlog and
        the port stays readable: stop accepting for a moment, not to spin.
        """
        if self.port is None or self._resume is not None:
            return
        self.port.stopReading()
        self._resume = self.reactor.callLater(PAUSE, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        if self.port is not None:
            self.port.startReading()

    def _over(self) -> None:
        self._quiet = None
        log.warn(
            "{kind}: accepting again; {refused} connections were refused",
            kind=self.kind,
            refused=self.refused,
        )
        self.refused = 0

    def stop(self) -> None:
        for call in (self._quiet, self._resume):
            if call is not None and call.active():
                call.cancel()
        self._quiet = self._resume = None
        self.port = None


class ListeningService(Service):
    """
    Listen on one endpoint while running and log the address actually bound.  A
    failure to listen at start-up stops twistd with a one-line error.
    """

    def __init__(self, kind: str, description: str, endpoint, factory, reactor):
        self.kind = kind
        self.reactor = reactor
        self.accept_errors = AcceptErrors(kind, reactor)
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port = None

    def startService(self) -> None:
        super().startService()
        outcome = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            raise SystemExit(
                f"sseserver: cannot listen on {self.description!r} ({self.kind}): "
                f"{outcome[0].getErrorMessage()}"
            )
        self.port = outcome[0]
        # Twisted's ports log accept errors through their own _logger (private,
        # but the only place to see them); route it through AcceptErrors.
        if hasattr(self.port, "_logger"):
            self.accept_errors.port = self.port
            self.port._logger = Logger(
                namespace=f"sseserver.{self.kind}", observer=self.accept_errors
            )
        log.info(
            "{kind} listening on {address}",
            kind=self.kind,
            address=address_text(self.port.getHost()),
        )

    def stopService(self):
        super().stopService()
        self.accept_errors.stop()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
