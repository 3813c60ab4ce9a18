"""sseserver: a Server-Sent Events notification server on Twisted."""

__version__ = "0.1.0"
