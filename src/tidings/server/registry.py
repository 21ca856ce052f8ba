"""The open connections of a server, and the sweep that keeps them honest.

The server's one housekeeping task calls :meth:`Registry.sweep` every tick:
request deadlines of HTTP connections, streams that stopped reading, token
expiry, heartbeats, and streams still flushing after they were closed. Each
step for each connection is guarded on its own: whatever one connection
raises is logged, that connection is closed, and the sweep goes on with the
others (a failure stays with its client).

An HTTP connection's deadline is one attribute that a request sets without
telling anyone (a poll answered again files the server's keep-alive deadline,
one store). Looking at every connection every tick would cost the sweep as
many cache misses as there are connections, each second. Instead each
connection is filed under the tick at which it must be looked at next
(:meth:`Registry.watch`): its deadline, or ``recheck`` seconds on, whichever
comes first. A deadline set meanwhile cannot be nearer than that: every
deadline a connection sets itself is at least ``recheck`` away (the shortest
of ``header_timeout`` and ``keep_alive_timeout``, less a tick), and
:meth:`HttpConnection._arm` files a shorter one (a refused connection's
linger) at once. So a connection is looked at about once per ``recheck``,
not once per tick, and still closed by the first sweep after its deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

from tidings.errors import INTERNAL_ERROR, SHUTDOWN

if TYPE_CHECKING:
    from tidings.server.connection import HttpConnection
    from tidings.server.gathering import Gathering
    from tidings.server.longpoll import Waiter
    from tidings.server.stream import Stream

logger = logging.getLogger("tidings.server")

#: Seconds a cut-off or closing stream gets to flush before it is aborted.
CLOSE_GRACE = 5.0

T = TypeVar("T")


class Check:
    """The HTTP connections the sweep looks at once loop time reaches tick ``number``.

    A connection filed again for a sooner tick stays in the list it left; the one it is
    filed in is its ``checked_in`` (``None``: none, while the sweep looks at it, or gone).
    """

    __slots__ = ("connections", "number")

    def __init__(self, number: int) -> None:
        self.number = number
        self.connections: list[HttpConnection] = []


class Registry:
    """HTTP connections, open streams (SSE, WebSocket) and parked long polls."""

    __slots__ = ("_checks", "_connections", "_draining", "_gatherings", "_loop", "_next_check",
                 "_streams", "_tick", "_waiters", "recheck")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float, recheck: float) -> None:
        """``tick``: seconds between two sweeps; ``recheck``: the nearest deadline an HTTP
        connection sets itself, less a tick (see the module docstring)."""
        self._loop = loop
        self._tick = tick
        self.recheck = recheck
        self._connections: set[HttpConnection] = set()
        #: Tick number (loop time // tick) -> the HTTP connections to look at then.
        self._checks: dict[int, Check] = {}
        self._next_check = int(loop.time() // tick)  #: the first tick number not looked at
        self._streams: set[Stream] = set()
        self._waiters: set[Waiter] = set()
        #: Long polls parked together (server/gathering.py), armed.
        self._gatherings: set[Gathering] = set()
        #: Closed streams still flushing, with the loop time at which they are aborted.
        self._draining: dict[asyncio.Transport, float] = {}

    # what the drivers tell it ----------------------------------------------------

    def add_connection(self, conn: HttpConnection) -> None:
        """An HTTP connection opened; its :attr:`deadline` is watched from now on."""
        self._connections.add(conn)
        self._file(conn, self._loop.time(), conn.deadline)

    def discard_connection(self, conn: HttpConnection) -> None:
        """It closed, or handed its socket to a stream."""
        self._connections.discard(conn)
        conn.checked_in = None

    def watch(self, conn: HttpConnection) -> None:
        """``conn`` set a deadline that may be nearer than ``recheck``: look at it in time."""
        if conn.deadline > 0 and conn in self._connections:
            number = self._number(conn.deadline)
            if conn.checked_in is None or number < conn.checked_in.number:
                self._put(conn, number)

    def add_stream(self, stream: Stream) -> None:
        """A stream started: it gets heartbeats, token expiry, progress checks, shutdown."""
        self._streams.add(stream)

    def discard_stream(self, stream: Stream, flushing: asyncio.Transport | None = None) -> None:
        """A stream ended; ``flushing`` is its closed socket, aborted after ``CLOSE_GRACE``."""
        self._streams.discard(stream)
        if flushing is not None:
            self._draining[flushing] = self._loop.time() + CLOSE_GRACE

    def flushed(self, transport: asyncio.BaseTransport) -> None:
        """A closed socket is gone: nothing to abort."""
        self._draining.pop(transport, None)  # type: ignore[call-overload]

    def add_waiter(self, waiter: Waiter) -> None:
        """A long poll parked: its token expiry is watched, shutdown answers it."""
        self._waiters.add(waiter)

    def discard_waiter(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)

    def add_gathering(self, gathering: Gathering) -> None:
        """Long polls park together: as for a waiter, for each of them."""
        self._gatherings.add(gathering)

    def discard_gathering(self, gathering: Gathering) -> None:
        self._gatherings.discard(gathering)

    def streams(self) -> list[Stream]:
        """The open streams, as a list the caller may keep while they change."""
        return list(self._streams)

    # the sweep -----------------------------------------------------------------

    def sweep(self, now: float, wall: float, *, heartbeat: bool, check_tokens: bool) -> None:
        """One tick of housekeeping at loop time ``now`` and Unix time ``wall``."""
        due = self._connections_due(now)
        _each(due, lambda conn: conn.timed_out(), _abort_http)
        self._refile(due, now)
        for transport in [t for t, deadline in self._draining.items() if deadline < now]:
            del self._draining[transport]
            transport.abort()
        _each(list(self._streams), lambda stream: stream.check_progress(now), _abort_stream)
        if check_tokens:
            _each([s for s in self._streams if 0 < s.expires <= wall],
                  lambda stream: stream.token_expired(), _abort_stream)
            _each([w for w in self._waiters if 0 < w.expires <= wall],
                  lambda waiter: waiter.token_expired(), _abort_waiter)
            _each([g for g in self._gatherings if 0 < g.expires <= wall],
                  lambda gathering: gathering.token_expired(), _abort_gathering)
        if heartbeat:
            _each(list(self._streams), lambda stream: stream.heartbeat(now), _abort_stream)

    def _connections_due(self, now: float) -> list[HttpConnection]:
        """The HTTP connections past their deadline at ``now``; the others looked at
        are filed again (see the module docstring)."""
        due: list[HttpConnection] = []
        first, last = self._next_check, int(now // self._tick)
        self._next_check = max(first, last + 1)  # (what is filed again goes after these)
        for number in range(first, last + 1):
            check = self._checks.pop(number, None)
            if check is None:
                continue
            for conn in check.connections:
                if conn.checked_in is not check:
                    continue  # filed since for a sooner tick, or gone
                conn.checked_in = None
                deadline = conn.deadline
                if 0 < deadline < now:
                    due.append(conn)
                else:
                    self._file(conn, now, deadline)
        return due

    def _refile(self, conns: list[HttpConnection], now: float) -> None:
        """Connections the sweep found due and that are still open: look at them again."""
        for conn in conns:
            if conn.checked_in is None and conn in self._connections:
                self._file(conn, now, conn.deadline)

    def _file(self, conn: HttpConnection, now: float, deadline: float) -> None:
        """Look at ``conn`` again at ``deadline`` (its own) or ``recheck`` from ``now``,
        whichever comes first."""
        at = now + self.recheck
        if 0 < deadline < at:
            at = deadline
        self._put(conn, self._number(at))

    def _number(self, at: float) -> int:
        """The number of the tick in which loop time ``at`` falls, or of the next one the
        sweep will look at if that one was looked at already."""
        return max(int(at // self._tick), self._next_check)

    def _put(self, conn: HttpConnection, number: int) -> None:
        check = self._checks.get(number)
        if check is None:
            check = self._checks[number] = Check(number)
        check.connections.append(conn)
        conn.checked_in = check

    # shutdown ------------------------------------------------------------------

    def say_goodbye(self) -> None:
        """End parked long polls, tell every stream to go away, close idle connections."""
        _each(list(self._waiters), lambda waiter: waiter.expire(), _abort_waiter)
        _each(list(self._gatherings), lambda gathering: gathering.expire_all(),
              _abort_gathering)
        _each(list(self._streams), lambda stream: stream.close_with(SHUTDOWN), _abort_stream)
        _each([c for c in self._connections if not c.busy], lambda conn: conn.close(),
              _abort_http)

    def start_draining(self) -> None:
        """A rolling restart begins: answer parked long polls now (their connections close
        after the answer) and close idle connections; streams are closed one by one by
        ``Server.drain``."""
        _each(list(self._waiters), lambda waiter: waiter.expire(), _abort_waiter)
        _each(list(self._gatherings), lambda gathering: gathering.expire_all(),
              _abort_gathering)
        _each([c for c in self._connections if not c.busy], lambda conn: conn.close(),
              _abort_http)

    def close_connections(self) -> None:
        _each(list(self._connections), lambda conn: conn.close(), _abort_http)

    async def wait_flushed(self, seconds: float) -> None:
        """Give closing streams ``seconds`` to flush their last words, then cut them."""
        deadline = self._loop.time() + seconds
        while self._draining and self._loop.time() < deadline:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.01)
        for transport in list(self._draining):
            transport.abort()
        self._draining.clear()

    def statistics(self) -> dict[str, int]:
        """How many of each are open, and the bytes waiting in the streams' buffers."""
        return {"http": len(self._connections), "streams": len(self._streams),
                "long_polls": len(self._waiters) + sum(len(g.members) for g in self._gatherings),
                "draining": len(self._draining),
                "buffered_bytes": sum(s.buffered() for s in self._streams)}


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


def _abort_gathering(gathering: Gathering) -> None:
    gathering.abort()
