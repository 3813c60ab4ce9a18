"""
The runtime log level of SPEC §7, shared by every part of the server.

Code asks before it logs (C{if verbosity.normal: log.info(...)}), so a level change
from the C{loglevel_*} commands takes effect at once, whatever twistd's log observer.
"""

from __future__ import annotations

QUIET, NORMAL, DEBUG = 0, 1, 2
LEVEL_NAMES = ("quiet", "normal", "debug")


class Verbosity:
    """quiet: errors and command output; normal: plus traffic; debug: plus events."""

    def __init__(self, level: int = NORMAL):
        self.level = level

    @classmethod
    def named(cls, name: str) -> "Verbosity":
        return cls(LEVEL_NAMES.index(name))

    @property
    def name(self) -> str:
        return LEVEL_NAMES[self.level]

    @property
    def normal(self) -> bool:
        return self.level >= NORMAL

    @property
    def debug(self) -> bool:
        return self.level >= DEBUG
