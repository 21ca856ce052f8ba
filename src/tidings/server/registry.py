"""The open connections of a server, and the sweep that keeps them honest.

The server's one housekeeping task calls :meth:`Registry.sweep` every tick:
request deadlines of HTTP connections, streams that stopped reading, token
expiry, heartbeats, and streams still flushing after they were closed. Each
step for each connection is guarded on its own: whatever one connection
raises is logged, that connection is closed, and the sweep goes on with the
others (a failure stays with its client).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from tidings.errors import INTERNAL_ERROR, SHUTDOWN

if TYPE_CHECKING:
    from tidings.server.connection import HttpConnection
    from tidings.server.longpoll import Waiter
    from tidings.server.stream import Stream

logger = logging.getLogger("tidings.server")

T = TypeVar("T")


class Registry:
    """HTTP connections, open streams (SSE, WebSocket) and parked long polls."""

    __slots__ = ("_loop", "connections", "draining", "streams", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.connections: set[HttpConnection] = set()
        self.streams: set[Stream] = set()
        self.waiters: set[Waiter] = set()
        #: Closed streams still flushing, with the loop time at which they are aborted.
        self.draining: dict[asyncio.Transport, float] = {}

    # the sweep -----------------------------------------------------------------

    def sweep(self, now: float, wall: float, *, heartbeat: bool, check_tokens: bool) -> None:
        """One tick of housekeeping at loop time ``now`` and Unix time ``wall``."""
        _each([c for c in self.connections if 0 < c.deadline < now],
              lambda conn: conn.timed_out(), _abort_http)
        for transport in [t for t, deadline in self.draining.items() if deadline < now]:
            del self.draining[transport]
            transport.abort()
        _each(list(self.streams), lambda stream: stream.check_progress(now), _abort_stream)
        if check_tokens:
            _each([s for s in self.streams if 0 < s.expires <= wall],
                  lambda stream: stream.token_expired(), _abort_stream)
            _each([w for w in self.waiters if 0 < w.expires <= wall],
                  lambda waiter: waiter.token_expired(), _abort_waiter)
        if heartbeat:
            _each(list(self.streams), lambda stream: stream.heartbeat(now), _abort_stream)

    # shutdown ------------------------------------------------------------------

    def say_goodbye(self) -> None:
        """End parked long polls, tell every stream to go away, close idle connections."""
        _each(list(self.waiters), lambda waiter: waiter.expire(), _abort_waiter)
        _each(list(self.streams), lambda stream: stream.close_with(SHUTDOWN), _abort_stream)
        _each([c for c in self.connections if not c.busy], lambda conn: conn.close(),
              _abort_http)

    def close_connections(self) -> None:
        _each(list(self.connections), lambda conn: conn.close(), _abort_http)

    async def wait_flushed(self, seconds: float) -> None:
        """Give closing streams ``seconds`` to flush their last words, then cut them."""
        deadline = self._loop.time() + seconds
        while self.draining and self._loop.time() < deadline:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.01)
        for transport in list(self.draining):
            transport.abort()
        self.draining.clear()

    def statistics(self) -> dict[str, int]:
        return {"http": len(self.connections), "streams": len(self.streams),
                "long_polls": len(self.waiters), "draining": len(self.draining),
                "buffered_bytes": sum(s.buffered() for s in self.streams)}


def _each(items: Iterable[T], step: Callable[[T], object], abort: Callable[[T], object]) -> None:
    """Run ``step`` on each item; one that raises is logged and aborted, the rest go on."""
    for item in items:
        try:
            step(item)
        except Exception:
            logger.exception("housekeeping failed for %r; closing it", item)
            try:
                abort(item)
            except Exception:
                logger.exception("could not close %r", item)


def _abort_http(conn: HttpConnection) -> None:
    conn.abort()


def _abort_stream(stream: Stream) -> None:
    stream.close_with(INTERNAL_ERROR)


def _abort_waiter(waiter: Waiter) -> None:
    waiter.abort()
