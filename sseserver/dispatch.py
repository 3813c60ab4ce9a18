"""
Turns what the inputs (control port, FIFO, HTTP) received into published events and
command runs, and their outcome into replies.  The inputs only frame bytes.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sseserver.commands import Commands
from sseserver.framing import TooLong
from sseserver.grammar import (
    MAX_LINE_BYTES,
    SSE_SERVER,
    Command,
    JsonPublish,
    ProtocolError,
    parse_line,
)
from sseserver.hub import Hub
from sseserver.verbosity import Verbosity


class Dispatcher:
    log = Logger()

    def __init__(
        self,
        hub: Hub,
        commands: Commands,
        verbosity: Verbosity,
        dialect: str = SSE_SERVER,
        separator: Optional[str] = None,
    ):
        self.hub = hub
        self.commands = commands
        self.verbosity = verbosity
        self.dialect = dialect
        self.separator = separator
        #: In a cluster: publishing goes through Redis (L{sseserver.cluster}).
        self.cluster = None
        #: Control and FIFO lines refused with an error.
        self.errors = 0

    def line(self, line, source: str, sender: str = "") -> list:
        """
        Handle one line (bytes, or a L{TooLong}) from C{source}; return the JSON
        replies for the sender: a C{tcp...} result or one C{{"error": ...}}.  In a
        cluster a reply may be a Deferred (of a reply, or of C{None}: no reply),
        as a publish is only accepted when Redis has taken it.
        """
        try:
            if isinstance(line, TooLong):
                raise ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
            items = parse_line(line, self.dialect, self.separator)
            return [
                reply for reply in self.run(items, source, sender) if reply is not None
            ]
        except ProtocolError as error:
            return [self.refused(error, source, sender)]

    def run(self, items, source: str, sender: str = "") -> list:
        """Publish the messages and run the commands, in order."""
        replies = []
        for item in items:
            if isinstance(item, Command):
                replies.append(self.commands.run(item, source))
            elif isinstance(item, JsonPublish):
                replies.append(self._json_reply(item, source, sender))
            elif self.cluster is not None:
                published = self.cluster.publish([item], source)
                published.addCallback(lambda _: None)
                replies.append(self._late_refusal(published, source, sender))
            else:
                self.hub.publish(item, source)
        return replies

    def _json_reply(self, item: JsonPublish, source: str, sender: str):
        def reply(outcome: tuple) -> dict:
            ids, delivered = outcome
            if item.single:
                return {"id": ids[0], "delivered": delivered}
            return {"ids": ids, "delivered": delivered}

        outcome = self.publish(item.messages, source)
        if isinstance(outcome, Deferred):
            return self._late_refusal(outcome.addCallback(reply), source, sender)
        return reply(outcome)

    def publish(self, messages, source: str):
        """
        Publish messages in order; their ids and the deliveries made here (in a
        cluster: a Deferred of them, once this node has delivered them).
        """
        if self.cluster is not None:
            return self.cluster.publish(messages, source, deliveries=True)
        hub = self.hub
        before = hub.deliveries
        ids = [hub.publish(message, source).id for message in messages]
        return ids, hub.deliveries - before

    def _late_refusal(self, published: Deferred, source: str, sender: str):
        """A publish that Redis did not take gets its error reply when known."""

        def refused(failure):
            failure.trap(ProtocolError)
            return self.refused(failure.value, source, sender)

        return published.addErrback(refused)

    def refused(self, error: ProtocolError, source: str, sender: str = "") -> dict:
        self.errors += 1
        if self.verbosity.normal:
            self.log.warn(
                "{source}{sender}: rejected: {reason}",
                source=source,
                sender=f" {sender}" if sender else "",
                reason=str(error),
            )
        return {"error": str(error)}
