"""
Unit tests of the control port's reply order when some replies come later (a
cluster's publishes wait for Redis): L{sseserver.control.ControlProtocol}.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from sseserver.control import ControlFactory
from sseserver.flow import NO_CONGESTION
from sseserver.verbosity import Verbosity


class Dispatcher:
    """Answers each line with what the test queued for it."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.hub = type("Hub", (), {"deliveries": 0})()

    def line(self, line, source, sender=""):
        return self.answers[bytes(line)]


def connect(answers: dict):
    factory = ControlFactory(
        Dispatcher(answers), Verbosity(0), NO_CONGESTION, task.Clock()
    )
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_later_reply_holds_back_the_ones_after_it():
    publish = defer.Deferred()
    protocol, transport = connect(
        {b"a=1": [publish], b"tcpnumberofclients": [{"numberofclients": 0}]}
    )
    protocol.dataReceived(b"a=1\ntcpnumberofclients\n")
    assert transport.value() == b""
    publish.callback({"error": "redis unavailable"})
    assert transport.value() == (
        b'{"error": "redis unavailable"}\n{"numberofclients": 0}\n'
    )


def test_an_accepted_publish_adds_no_reply():
    publishes = [defer.Deferred(), defer.Deferred()]
    protocol, transport = connect(
        {b"a=1": [publishes[0]], b"a=2": [publishes[1]], b"tcpx": [{"error": "x"}]}
    )
    protocol.dataReceived(b"a=1\na=2\ntcpx\n")
    publishes[1].callback(None)  # the second is answered first: it waits its turn
    assert transport.value() == b""
    publishes[0].callback(None)
    assert transport.value() == b'{"error": "x"}\n'


def test_replies_already_known_go_out_at_once():
    protocol, transport = connect({b"tcpx": [{"error": "x"}]})
    protocol.dataReceived(b"tcpx\n")
    assert transport.value() == b'{"error": "x"}\n'
