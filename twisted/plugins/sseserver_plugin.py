"""twistd dropin: C{twistd sseserver}."""

from twisted.application.service import ServiceMaker

sseserver = ServiceMaker(
    "sseserver",
    "sseserver.tap",
    "Server-Sent Events notification server (hasses and SSE-Server compatible)",
    "sseserver",
)
