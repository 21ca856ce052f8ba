"""The access log: one line per request answered, or per stream opened (``access_log = true``).

Written to the ``tidings.access`` logger at ``info`` with the fields of
tidings/logs.py: ``client``, ``method``, ``path`` (the request target; a
``token=`` in it is scrubbed like every credential), ``status``, ``bytes``,
``duration_ms``, ``technique`` and ``channel`` where they apply. Off, it costs
an attribute test per request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tidings.errors import ProtocolError
from tidings.logs import ACCESS_LOGGER

if TYPE_CHECKING:
    from tidings.server.request import Request

logger = logging.getLogger(ACCESS_LOGGER)

#: The longest request target written, in characters.
MAX_LOGGED_TARGET = 300
CHANNEL_PREFIX = "/channels/"


def technique_of(request: Request) -> str | None:
    """Which technique a request uses (``publish`` for a POST), or ``None`` for other URLs."""
    if not (request.path.startswith(CHANNEL_PREFIX) or request.path == "/subscribe"):
        return None
    if request.method == "POST":
        return "publish"
    if request.wants_websocket:
        return "websocket"
    if request.wants_event_stream:
        return "sse"
    try:
        return "poll" if request.wait_seconds() is None else "longpoll"
    except ProtocolError:
        return "poll"


def log_request(request: Request, client: str | None, status: int, size: int,
                seconds: float) -> None:
    """Write the access-log line of ``request``, answered with ``status`` and ``size`` bytes
    after ``seconds`` (a stream: opened after them)."""
    target = request.target.decode("latin-1")[:MAX_LOGGED_TARGET]
    extra: dict[str, Any] = {
        "client": client, "method": request.method, "path": target, "status": status,
        "bytes": size, "duration_ms": round(seconds * 1000, 1),
        "technique": technique_of(request),
    }
    if request.path.startswith(CHANNEL_PREFIX):
        extra["channel"] = request.path[len(CHANNEL_PREFIX):][:200]
    logger.info("%s %s %d", request.method, target, status, extra=extra)


def peer_host(transport: Any) -> str | None:
    """The client's address (without the port) of an asyncio transport, if known."""
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None
