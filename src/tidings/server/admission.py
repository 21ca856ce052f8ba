"""Who may come in and how fast: connection counts and publish rates (docs/security.md)."""

from __future__ import annotations

import asyncio
from collections import Counter

from tidings.core.limits import ConnectionCounts, RateLimiter
from tidings.errors import ProtocolError, ServerBusy, TooManyRequests
from tidings.settings import Settings


class Admission:
    """Counts connections per client address and publishes per bucket.

    Every connection is admitted once (:meth:`admit`) when it is accepted and
    released once (:meth:`release`) when it closes, by whichever driver owns
    its socket then (HTTP, SSE or WebSocket).
    """

    __slots__ = ("_counts", "_limiter", "_loop", "_peers", "_settings", "_stats")

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop,
                 stats: Counter[str]) -> None:
        self._settings = settings
        self._loop = loop
        self._stats = stats
        self._counts = ConnectionCounts(settings.max_connections,
                                        settings.max_connections_per_ip)
        #: The client address of every admitted connection.
        self._peers: dict[asyncio.BaseTransport, str] = {}
        self._limiter = (
            RateLimiter(settings.max_publish_rate, max(1, settings.publish_burst))
            if settings.max_publish_rate > 0 else None)

    def admit(self, transport: asyncio.BaseTransport) -> ProtocolError | None:
        """Count a new connection; return the error to answer if it is over a limit."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        refused = self._counts.admit(address)
        if refused is None:
            self._peers[transport] = address
            return None
        self._stats["connections_refused"] += 1
        if refused == "total":
            return ServerBusy(f"the server holds its limit of {self._settings.max_connections} "
                              "connections; try again later")
        return TooManyRequests(
            f"more than {self._settings.max_connections_per_ip} connections from {address}",
            code="too_many_connections")

    def release(self, transport: asyncio.BaseTransport | None) -> None:
        """An admitted connection closed (safe to call more than once)."""
        address = self._peers.pop(transport, None) if transport is not None else None
        if address is not None:
            self._counts.release(address)

    def check_publish_rate(self, transport: asyncio.BaseTransport | None,
                           key: str | None = None, address: str | None = None) -> None:
        """Raise :class:`TooManyRequests` if the client on ``transport`` publishes too fast.

        The bucket is ``key`` if given (a verified identity, such as a token's
        subject), else ``address`` (the client's, from a trusted proxy), else the
        connection's address.
        """
        limiter = self._limiter
        if limiter is None or transport is None:
            return
        bucket = key or address or self._peers.get(transport, "")
        wait = limiter.take(bucket, self._loop.time())
        if wait:
            self._stats["publishes_rate_limited"] += 1
            settings = self._settings
            raise TooManyRequests(
                f"more than {settings.max_publish_rate:g} publishes per second "
                f"(burst {settings.publish_burst}); retry in {wait:.2f} s",
                retry_after=wait)

    def statistics(self) -> dict[str, object]:
        """Open connections in all and per client address (for tests and ``/healthz``)."""
        return {"connections": self._counts.total, "by_address": dict(self._counts.by_address),
                "peers": len(self._peers)}
