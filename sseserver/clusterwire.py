"""
What the nodes of a cluster write to Redis and read back (SPEC §11), as pure
functions: a published message as the fields of a stream entry, and a node's
figures as one JSON value.  No I/O, no Twisted.
"""

from __future__ import annotations

import json
from typing import Iterable, Tuple

from sseserver.grammar import Message, Target

#: The stream every node appends to and reads.
STREAM_KEY = "sseserver:events"
#: A set of the nodes' ids, and each node's figures under its own key.
NODES_KEY = "sseserver:nodes"
NODE_KEY_PREFIX = "sseserver:node:"


def entry_fields(message: Message, node: str) -> list:
    """The field/value pairs of the stream entry for C{message}."""
    target = message.target
    where = {}
    if target.everyone:
        where["everyone"] = True
    if target.channels:
        where["channels"] = sorted(target.channels)
    if target.prefixes:
        where["prefixes"] = list(target.prefixes)
    if target.exclude is not None:
        where["exclude"] = target.exclude
    return [
        "target",
        json.dumps(where, ensure_ascii=False, separators=(",", ":")),
        "type",
        message.type,
        "data",
        message.data,
        "node",
        node,
    ]


def parse_entry(fields: list) -> Tuple[Message, str]:
    """
    The message and the publishing node of a stream entry's fields (a flat list
    of bytes, as XREAD gives them); C{ValueError} when they are not ours.
    """
    if len(fields) % 2:
        raise ValueError("odd number of fields")
    values = {}
    for name, value in zip(fields[::2], fields[1::2]):
        values[bytes(name).decode("utf-8")] = bytes(value).decode("utf-8")
    try:
        where = json.loads(values["target"])
        target = Target(
            channels=frozenset(where.get("channels", ())),
            prefixes=tuple(where.get("prefixes", ())),
            everyone=bool(where.get("everyone", False)),
            exclude=where.get("exclude"),
        )
        message = Message(target, values["type"], values["data"])
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise ValueError(f"not an sseserver entry: {error!r}") from None
    return message, values.get("node", "")


def node_figures(sseconncli: int, allconncli: int, channels: dict) -> bytes:
    """What a node publishes of itself for the cluster totals."""
    figures = {"sseconncli": sseconncli, "allconncli": allconncli, "channels": channels}
    return json.dumps(figures, separators=(",", ":")).encode("utf-8")


def cluster_totals(values: Iterable) -> dict:
    """
    Sum the figures of the nodes alive (their JSON values; C{None} for a node
    whose key expired, skipped): C{{"nodes", "sseconncli", "allconncli",
    "channels"}}.
    """
    totals = {"nodes": 0, "sseconncli": 0, "allconncli": 0, "channels": {}}
    channels = totals["channels"]
    for value in values:
        if value is None:
            continue
        try:
            figures = json.loads(value)
            sse, conn = int(figures["sseconncli"]), int(figures["allconncli"])
            counts = {
                str(channel): int(count)
                for channel, count in dict(figures.get("channels", {})).items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        totals["nodes"] += 1
        totals["sseconncli"] += sse
        totals["allconncli"] += conn
        for channel, count in counts.items():
            channels[channel] = channels.get(channel, 0) + count
    return totals
