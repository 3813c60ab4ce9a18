"""
The FIFO input (SPEC §5.1): the control-port grammar through a named pipe, read by
the reactor with non-blocking reads (no thread).

The pipe signals end-of-file when its last writer closes.  Then the writer's
unterminated last line counts, and the FIFO is reopened — the new read end before
the old one is closed, so a writer never finds the FIFO without a reader and
nothing in the pipe is lost.
"""

from __future__ import annotations

import os
import stat

from twisted.application.service import Service
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from zope.interface import implementer

from sseserver.commands import FIFO
from sseserver.dispatch import Dispatcher
from sseserver.flow import NO_CONGESTION
from sseserver.framing import LineSplitter
from sseserver.pump import LinePump

FIFO_MODE = 0o620
READ_SIZE = 65536
READS_PER_CALL = 16


def check_fifo_path(path: str) -> None:
    """Raise L{ValueError} if C{path} exists and is not a FIFO."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISFIFO(mode):
        raise ValueError(f"not a FIFO: {path}")


def ensure_fifo(path: str) -> None:
    """Create the FIFO with mode 0620 whatever the umask, unless it exists."""
    check_fifo_path(path)
    if not os.path.exists(path):
        os.mkfifo(path)
        os.chmod(path, FIFO_MODE)


@implementer(IReadDescriptor)
class _ReadEnd:
    """One open read end of the FIFO, as the reactor sees it."""

    def __init__(self, fd: int, owner: "FifoReader"):
        self.fd = fd
        self.owner = owner

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "fifo"

    def doRead(self):
        """
        Read until the pipe is empty.  A read on an empty pipe without writers
        says end-of-file even when epoll does not (a read end opened after the
        last writer left never reports a hang-up), so draining is how a writer
        that came and went during a reopen is noticed.
        """
        for _ in range(READS_PER_CALL):
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return None
            if not data:
                return CONNECTION_DONE
            self.owner.received(data)
            if self.owner.paused:  # the pump holds its input
                return None
        return None

    def connectionLost(self, reason) -> None:
        self.owner.writers_gone(self)


class FifoReader(Service):
    log = Logger()

    def __init__(self, path: str, dispatcher: Dispatcher, reactor, flow=NO_CONGESTION):
        self.path = path
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.flow = flow
        self._lines = LineSplitter()
        self._end: _ReadEnd | None = None
        self.paused = False
        self._pump = LinePump(dispatcher, FIFO, reactor, flow, self)

    def startService(self) -> None:
        ensure_fifo(self.path)
        self._end = self._open()
        self.flow.add_input(self._pump)
        self.log.info("FIFO reading {path}", path=self.path)
        super().startService()

    def stopService(self):
        self.flow.remove_input(self._pump)
        end, self._end = self._end, None
        if end is not None:
            self.reactor.removeReader(end)
            os.close(end.fd)
        return super().stopService()

    def _open(self) -> _ReadEnd:
        end = _ReadEnd(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK), self)
        if not self.paused:
            self.reactor.addReader(end)
        return end

    # pausing the reads, for the pump

    def pauseProducing(self) -> None:
        self.paused = True
        if self._end is not None:
            self.reactor.removeReader(self._end)

    def resumeProducing(self) -> None:
        self.paused = False
        if self._end is not None:
            self.reactor.addReader(self._end)

    def stopProducing(self) -> None:
        pass

    def received(self, data: bytes) -> None:
        # The FIFO has no way back: errors (and tcp... replies) are logged only.
        self._pump.push(self._lines.feed(data))

    def writers_gone(self, end: _ReadEnd) -> None:
        """The last writer closed: reopen, then finish its line."""
        if end is self._end:
            self._end = self._open()
            os.close(end.fd)
        self._pump.push(self._lines.close())
