"""
Line framing for the control port and the FIFO (SPEC §5.1), with no I/O.

Why not L{twisted.protocols.basic.LineReceiver}: it re-splits its whole buffer for
every line (quadratic over a 1 MiB batch of short lines) and drops the connection
on an over-long line, where SPEC §5.1 wants an error and the rest of the input.
"""

from __future__ import annotations

from sseserver.grammar import MAX_LINE_BYTES


class TooLong:
    """Stands in the line sequence where an over-long line was skipped."""

    def __init__(self, size: int):
        self.size = size

    def __repr__(self) -> str:
        return f"<TooLong {self.size}>"


class LineSplitter:
    """
    Split a byte stream at LF, dropping one trailing CR.  Lines longer than
    C{limit} bytes (without CR LF) become a L{TooLong} and are skipped up to the
    next newline, holding at most C{limit} + 1 bytes meanwhile.
    """

    def __init__(self, limit: int = MAX_LINE_BYTES):
        self.limit = limit
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._skipping = 0  # bytes of an over-long line skipped so far

    def feed(self, data: bytes) -> list:
        """The complete lines (and L{TooLong}s) that C{data} finishes."""
        pieces = data.split(b"\n")
        lines = []
        for piece in pieces[:-1]:
            if self._skipping:
                lines.append(TooLong(self._skipping + len(piece)))
                self._skipping = 0
                continue
            if self._pending:
                piece = b"".join(self._pending) + piece
                self._pending, self._pending_size = [], 0
            lines.append(self._checked(piece))
        self._keep(pieces[-1])
        return lines

    def close(self) -> list:
        """The writer is gone: its unterminated last line counts."""
        if self._skipping:
            lines = [TooLong(self._skipping)]
        elif self._pending:
            lines = [self._checked(b"".join(self._pending))]
        else:
            lines = []
        self._pending, self._pending_size, self._skipping = [], 0, 0
        return lines

    def _checked(self, line: bytes):
        if line.endswith(b"\r"):
            line = line[:-1]
        return TooLong(len(line)) if len(line) > self.limit else line

    def _keep(self, rest: bytes) -> None:
        if not rest:
            return
        if self._skipping:
            self._skipping += len(rest)
            return
        self._pending.append(rest)
        self._pending_size += len(rest)
        # One byte more than the limit may still be a CR before the LF.
        if self._pending_size > self.limit + 1:
            self._skipping = self._pending_size
            self._pending, self._pending_size = [], 0
