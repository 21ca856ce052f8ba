"""The server: listening socket, connections, and the tasks it owns.

Use it as an async context manager::

    async with Server(Settings(port=0)) as server:
        print(server.url)
        await server.wait_closed()

Every task the server starts is tracked and cancelled or awaited by
:meth:`Server.aclose`; nothing runs after it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from tidings.brokers import make_broker
from tidings.brokers.base import Broker
from tidings.core.cursor import Start
from tidings.core.limits import ConnectionCounts, RateLimiter
from tidings.errors import ProtocolError, ServerBusy, ShuttingDown, TooManyRequests
from tidings.server.auth import Authenticator
from tidings.server.connection import HttpConnection
from tidings.server.cors import Cors
from tidings.server.longpoll import Expiries, Waiter
from tidings.server.routes import Router
from tidings.server.static import StaticFiles
from tidings.server.stream import Stream
from tidings.settings import Settings

logger = logging.getLogger("tidings.server")

#: Seconds between retention sweeps of the broker.
MAINTENANCE_INTERVAL = 1.0
#: Seconds :meth:`Server.aclose` lets closing streams flush before cutting them.
SHUTDOWN_FLUSH_SECONDS = 1.0


class Server:
    """The server; ``pages`` maps URL paths to files served as they are (read once, here).

    ``/tidings.js`` (the browser client) is always served; ``pages`` may add
    to it or replace it. Raises :class:`~tidings.errors.UsageError` if a page
    cannot be read or its path belongs to the protocol.
    """

    def __init__(self, settings: Settings | None = None, broker: Broker | None = None,
                 pages: Mapping[str, Path] | None = None) -> None:
        self.settings = settings or Settings()
        self.static = StaticFiles(pages)
        self.broker: Broker = broker or make_broker(self.settings)
        self.broker.on_status = self._broker_status
        self.cors = Cors(self.settings.cors_origins)
        #: Credentials and the access policy (server/auth.py); open unless configured.
        self.auth = Authenticator(self.settings.auth)
        self.router = Router(self)
        self.http_connections: set[HttpConnection] = set()
        self.streams: set[Stream] = set()
        self.waiters: set[Waiter] = set()
        #: Streams sent a backlog over their output limit (see server/stream.py).
        self.catching_up: set[Stream] = set()
        #: Closed streams still flushing, with the loop time at which they are aborted.
        self.draining: dict[asyncio.Transport, float] = {}
        self.stats: Counter[str] = Counter()
        self.connection_counts = ConnectionCounts(self.settings.max_connections,
                                                  self.settings.max_connections_per_ip)
        #: The client address of every admitted connection, whichever protocol object owns it.
        self.peers: dict[asyncio.BaseTransport, str] = {}
        self.publish_limiter = (
            RateLimiter(self.settings.max_publish_rate, max(1, self.settings.publish_burst))
            if self.settings.max_publish_rate > 0 else None)
        #: More sections of ``/healthz``: name -> function returning a JSON value (e.g. bridges).
        self.health_extra: dict[str, Callable[[], object]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Server | None = None
        #: Tasks that never end by themselves; :meth:`aclose` cancels them first.
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        #: Set when :meth:`aclose` begins: requests waiting for the broker are refused.
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self.expiries = Expiries(self.loop)
        self.port = self.settings.port

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen; :attr:`port` is the real port (useful with ``port=0``)."""
        await self.broker.start()
        self._listener = await self.loop.create_server(
            lambda: HttpConnection(self), self.settings.host, self.settings.port,
            reuse_address=True, backlog=4096,
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        self.spawn(self._housekeeping(), background=True)
        logger.info("tidings serving on %s", self.url)

    @property
    def url(self) -> str:
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        elif host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def aclose(self) -> None:
        """Stop listening, say goodbye to every client, and end every task."""
        if self._closed.is_set():
            return
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        for waiter in list(self.waiters):
            waiter.expire()
        for stream in list(self.streams):
            stream.close_with("shutdown", "the server is shutting down; reconnect and resume")
        for conn in list(self.http_connections):
            if not conn.busy:
                conn.close()
        for task in self._background:
            task.cancel()  # they never end by themselves: do not wait for them
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            # Publishes in flight finish (their messages are accepted); housekeeping is cancelled.
            _done, still = await asyncio.wait(pending, timeout=5)
            for task in still:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*still, return_exceptions=True)
        for conn in list(self.http_connections):
            conn.close()
        # Streams told to go away get a moment to flush their last words; then they are cut.
        deadline = self.loop.time() + SHUTDOWN_FLUSH_SECONDS
        while self.draining and self.loop.time() < deadline:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.01)
        for transport in list(self.draining):
            transport.abort()
        self.draining.clear()
        if self._listener is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._listener.wait_closed(), 5)
        await self.broker.aclose()
        self._closed.set()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *,
              background: bool = False) -> asyncio.Task[Any]:
        """Run ``coroutine`` as a task the server owns.

        At :meth:`aclose`, tasks are given up to 5 seconds to finish (a
        publish in flight completes) and then cancelled; ``background`` tasks
        (loops that never end by themselves, such as a feed) are cancelled at once.
        """
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        if background:
            self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task failed", exc_info=task.exception())

    async def _housekeeping(self) -> None:
        """Request deadlines, retention sweeps and heartbeats, from one task.

        It wakes every ``tick`` seconds; deadlines are therefore enforced to
        within a tick, and no request pays for a timer of its own.
        """
        settings = self.settings
        tick = min(MAINTENANCE_INTERVAL, settings.heartbeat_interval,
                   settings.header_timeout / 4, settings.keep_alive_timeout / 4)
        heartbeat_due = self.loop.time() + settings.heartbeat_interval
        maintenance_due = 0.0
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            for conn in [c for c in self.http_connections if 0 < c.deadline < now]:
                conn.timed_out()
            for transport in [t for t, deadline in self.draining.items() if deadline < now]:
                del self.draining[transport]
                transport.abort()
            self.catching_up.difference_update(
                [stream for stream in self.catching_up if stream.backlog_drained()])
            if now >= maintenance_due:
                maintenance_due = now + MAINTENANCE_INTERVAL
                self.broker.maintain()
            if self.auth.enabled:
                self._end_expired_tokens()
            if now >= heartbeat_due:
                heartbeat_due = now + self.settings.heartbeat_interval
                for stream in list(self.streams):
                    stream.heartbeat(now)

    def _end_expired_tokens(self) -> None:
        """Close streams and end long polls whose token has expired (within a tick)."""
        wall = time.time()
        for stream in [s for s in self.streams if 0 < s.expires <= wall]:
            stream.token_expired()
        for waiter in [w for w in self.waiters if 0 < w.expires <= wall]:
            waiter.token_expired()

    # client limits (docs/security.md) -----------------------------------------

    def admit(self, transport: asyncio.BaseTransport) -> ProtocolError | None:
        """Count a new connection; return the error to answer if it is over a limit.

        An admitted transport must be released (:meth:`release`) when it closes, by
        whichever protocol object owns it then (HTTP, SSE or WebSocket).
        """
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        refused = self.connection_counts.admit(address)
        if refused is None:
            self.peers[transport] = address
            return None
        self.stats["connections_refused"] += 1
        if refused == "total":
            return ServerBusy(f"the server holds its limit of {self.settings.max_connections} "
                              "connections; try again later")
        return TooManyRequests(
            f"more than {self.settings.max_connections_per_ip} connections from {address}",
            code="too_many_connections")

    def release(self, transport: asyncio.BaseTransport | None) -> None:
        """An admitted connection closed (safe to call more than once)."""
        address = self.peers.pop(transport, None) if transport is not None else None
        if address is not None:
            self.connection_counts.release(address)

    def check_publish_rate(self, transport: asyncio.BaseTransport | None,
                           key: str | None = None) -> None:
        """Raise :class:`TooManyRequests` if the client on ``transport`` publishes too fast.

        The bucket is ``key`` if given (a verified identity, such as a token's
        subject), else the client address.
        """
        limiter = self.publish_limiter
        if limiter is None or transport is None:
            return
        wait = limiter.take(key or self.peers.get(transport, ""), self.loop.time())
        if wait:
            self.stats["publishes_rate_limited"] += 1
            raise TooManyRequests(
                f"more than {self.settings.max_publish_rate:g} publishes per second "
                f"(burst {self.settings.publish_burst}); retry in {wait:.2f} s",
                retry_after=wait)

    # introspection -----------------------------------------------------------

    async def prepare(self, starts: Mapping[str, Start]) -> None:
        """Wait until the broker can read ``starts`` (see ``Broker.ready``).

        Raises ``BrokerError`` if it cannot, and :class:`ShuttingDown` if the
        server began closing meanwhile (it must not start streams any more).
        """
        await self.broker.prepare(starts)
        if self.closing:
            raise ShuttingDown("the server is shutting down; retry (on another node)")

    def _broker_status(self, available: bool, detail: str) -> None:
        """Tell every stream that the broker went away or came back (docs/protocol.md)."""
        status: dict[str, object]
        if available:
            status = {"broker": "ok", "message": "the message store is back; what was "
                      "published meanwhile follows, or a gap if it was lost"}
        else:
            status = {"broker": "unavailable", "message": "the message store is unreachable "
                      f"({detail}): nothing new arrives and publishing is refused, but "
                      "nothing is lost yet; stay connected"}
        for stream in list(self.streams):
            stream.notice(status)

    def health(self) -> dict[str, object]:
        hub = self.broker.hub
        broker = self.broker.health()
        health: dict[str, object] = {
            "status": "ok" if broker.get("status", "ok") == "ok" else "degraded",
            "time": int(time.time() * 1000),
            "transports": list(self.settings.transports),
            "connections": {
                "http": len(self.http_connections),
                "streams": len(self.streams),
                "long_polls": len(self.waiters),
            },
            "channels_with_subscribers": hub.channels(),
            "published": self.stats["published"],
            "delivered": hub.delivered,
            "slow_consumers_cut_off": self.stats["slow_consumers"],
            "broker": broker,
        }
        for name, section in self.health_extra.items():
            health[name] = section()
        return health

