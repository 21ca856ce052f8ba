"""The server: listening socket, connections, and the tasks it owns.

Use it as an async context manager::

    async with Server(Settings(port=0)) as server:
        print(server.url)
        await server.wait_closed()

It may be constructed anywhere, at import time too: what needs the event
loop is bound when it starts. Inside an application (docs/embedding.md),
``await server.publish(channel, data)`` publishes from code and
``server.asgi`` serves the whole HTTP interface as an ASGI application.

Every task the server starts is tracked and cancelled or awaited by
:meth:`Server.aclose`; nothing runs after it returns.

Its parts: :class:`Router` (server/routes.py) sends each request to the
driver of its technique (poll, longpoll, sse, websocket), each a thin driver
of the reader in ``tidings.session``; the :class:`Registry` holds the open
connections and runs the sweep; :class:`Admission` counts connections and
publishes. The broker keeps the logs and its hub hands messages to readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from tidings import logs
from tidings.brokers import make_broker
from tidings.brokers.base import Broker
from tidings.core.cursor import Start
from tidings.core.forwarded import client_address, parse_networks
from tidings.core.idempotency import check_idempotency_key
from tidings.core.message import Message
from tidings.errors import RESTART, BrokerError, ProtocolError, ShuttingDown, UsageError
from tidings.server import publish
from tidings.server.accesslog import peer_host
from tidings.server.admission import Admission
from tidings.server.asgi import AsgiApp
from tidings.server.auth import Authenticator
from tidings.server.connection import HttpConnection
from tidings.server.cors import Cors
from tidings.server.flush import Flusher
from tidings.server.hooks import Hook, Hooks
from tidings.server.hooks_http import HttpHooks
from tidings.server.longpoll import Expiries
from tidings.server.metrics import LatencyHistogram, make_registry, start_listener
from tidings.server.presence import PresenceTracker
from tidings.server.registry import Registry
from tidings.server.routes import Router
from tidings.server.static import StaticFiles
from tidings.server.status import StatusHistory
from tidings.server.subscriptions import UserChannels
from tidings.server.workermetrics import WorkerShare
from tidings.settings import FD_RESERVE, Settings, soft_file_limit
from tidings.wire import http

logger = logging.getLogger("tidings.server")

#: Seconds between retention sweeps of the broker.
MAINTENANCE_INTERVAL = 1.0
#: Seconds :meth:`Server.aclose` lets closing streams flush before cutting them.
SHUTDOWN_FLUSH_SECONDS = 1.0


class Server:
    """The server; ``pages`` maps URL paths to files served as they are (read once, here).

    ``/tidings.js`` (the browser client) is always served; ``pages`` may add
    to it or replace it. Raises :class:`~tidings.errors.UsageError` if a page
    cannot be read or its path belongs to the protocol. ``sock``, a bound listening
    socket, is served instead of binding ``settings``' host and port (``tidings serve
    --workers``, server/workers.py).
    """

    def __init__(self, settings: Settings | None = None, broker: Broker | None = None,
                 pages: Mapping[str, Path] | None = None, *, listen: bool = True,
                 sock: socket.socket | None = None) -> None:
        self.settings = settings or Settings()
        self.static = StaticFiles(pages)
        self.broker: Broker = broker or make_broker(self.settings)
        self.broker.on_status = self._broker_status
        self.cors = Cors(self.settings.cors_origins)
        #: Credentials and the access policy (server/auth.py); open unless configured.
        self.auth = Authenticator(self.settings.auth, self.cors.allows)
        self.router = Router(self)
        #: What the application decides (``on_connect`` and the others; server/hooks.py).
        self.hooks = Hooks()
        #: Users' server-side channels and the streams following them (server/subscriptions.py).
        self.subscriptions = UserChannels(self)
        #: Counters shown by ``/healthz`` (published, slow_consumers, refusals, ...).
        self.stats: Counter[str] = Counter()
        #: Whether :meth:`start` opens the native listener (``False``: only
        #: :meth:`publish` and :attr:`asgi` serve, in the application's loop).
        self.listen = listen
        self.loop: asyncio.AbstractEventLoop
        #: The open connections and the sweep (used by the drivers in this package).
        self.registry: Registry
        #: Connection counts and publish rates (used by the drivers in this package).
        self.admission: Admission
        self.expiries: Expiries
        self.flusher: Flusher
        self.started = False
        #: More sections of ``/healthz``: name -> function returning a JSON value (e.g. bridges).
        self.health_extra: dict[str, Callable[[], object]] = {}
        #: Parts still starting: name -> function, true while that part is not ready (e.g. a
        #: bridge whose capture is not installed). ``/healthz`` answers ``503`` with
        #: ``"status": "starting"`` while any is.
        self.starting: dict[str, Callable[[], bool]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncio.Server | None = None
        #: Tasks that never end by themselves; :meth:`aclose` cancels them first.
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        #: Set when :meth:`aclose` begins: requests waiting for the broker are refused.
        self.closing = False
        #: Set when :meth:`drain` begins: not ready, no new stream, no connection kept.
        self.draining = False
        #: Who reads each channel (server/presence.py), kept by the drivers.
        self.presence: PresenceTracker
        #: When a connection that goes idle now may be closed: one loop time for every
        #: connection (``keep_alive_timeout`` plus at most a tick), renewed every tick. An
        #: answer stores this object instead of a new one: under load, the number a
        #: connection replaced is no longer in the CPU's caches (docs/benchmarks.md).
        self.keep_alive_deadline = 0.0
        self.port = self.settings.port
        self._sock = sock
        self._asgi: AsgiApp | None = None
        self._init_metrics()
        #: Proxies whose X-Forwarded-For is believed (``trusted_proxies``).
        self.trusted_proxies = parse_networks(self.settings.trusted_proxies)
        if self.settings.hooks.enabled:  # the hooks [hooks] names, over HTTP
            HttpHooks(self.settings.hooks).install(self.hooks)
        with contextlib.suppress(RuntimeError):  # no loop runs yet: bound by start()
            self._bind_loop(asyncio.get_running_loop())

    def _bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make the parts that need the event loop (at construction, or at :meth:`start`)."""
        self.loop = loop
        settings = self.settings
        # (every deadline a connection sets itself is at least this far: server/registry.py)
        self.registry = Registry(loop, self.tick, min(
            settings.header_timeout, settings.keep_alive_timeout) - self.tick)
        #: The streams holding bytes until the end of the loop's step (server/flush.py).
        self.flusher = Flusher(loop)
        self.admission = Admission(self.settings, loop, self.stats)
        self.expiries = Expiries(loop)
        self.presence = PresenceTracker(self.settings, loop, self.broker)

    def _init_metrics(self) -> None:
        """Prometheus metrics (server/metrics.py), read from the counters at scrape time."""
        #: Seconds from a publish's arrival to its message being stored.
        self.publish_latency = LatencyHistogram()
        self.metrics_registry = make_registry(self)
        #: Samples of the counters for the live status page (server/status.py).
        self.status_history = StatusHistory(self)
        self._metrics_listener: asyncio.Server | None = None
        #: The port of ``metrics_listen`` once started (useful with port 0), else ``None``.
        self.metrics_port: int | None = None
        #: Under ``--workers``: the figures of every worker in one scrape (set before start).
        self.metrics_share: WorkerShare | None = None

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen; :attr:`port` is the real port (useful with ``port=0``).

        With ``listen=False``, start everything but the listener (an
        application serving :attr:`asgi` and publishing with :meth:`publish`).
        """
        loop = asyncio.get_running_loop()
        if self.started or self._closed.is_set():
            raise UsageError("a Server starts once; make a new one to start again")
        if getattr(self, "loop", loop) is not loop:
            raise UsageError("the Server was made in another event loop than the one starting it")
        if not hasattr(self, "registry"):
            self._bind_loop(loop)
        self.started = True
        if self.settings.access_log:
            logs.turn_on_access_log()
        await self.broker.start()
        if self._sock is not None:
            self._listener = await self.loop.create_server(
                lambda: HttpConnection(self), sock=self._sock, backlog=4096)
            self.port = self._listener.sockets[0].getsockname()[1]
        elif self.listen:
            self._listener = await self.loop.create_server(
                lambda: HttpConnection(self), self.settings.host, self.settings.port,
                reuse_address=True, backlog=4096,
            )
            self.port = self._listener.sockets[0].getsockname()[1]
        self._metrics_listener = await start_listener(self)
        self._start_identity_provider()
        self.spawn(self.status_history.run(), background=True)
        if self._metrics_listener is not None:
            self.metrics_port = self._metrics_listener.sockets[0].getsockname()[1]
        self.keep_alive_deadline = self.loop.time() + self.settings.keep_alive_timeout + self.tick
        self.spawn(self._housekeeping(), background=True)
        files = soft_file_limit()
        if files is not None and self.settings.max_connections > files - FD_RESERVE:
            logger.warning(
                "max_connections is %d but this process may open %d files: past about %d "
                "connections, accepting fails (clients see resets, not 503); raise the file "
                "limit (ulimit -n) or lower max_connections", self.settings.max_connections,
                files, files - FD_RESERVE)
        logger.debug("tidings serving on %s", self.url)  # `tidings serve` prints it

    def client_address(self, transport: Any, forwarded_for: str | None = None) -> str | None:
        """The client's address: the peer's, or, from a trusted proxy, the one it forwards
        (``X-Forwarded-For``, core/forwarded.py). ``None`` if the socket does not say."""
        peer = peer_host(transport)
        if peer is None or not self.trusted_proxies:
            return peer
        return client_address(peer, forwarded_for, self.trusted_proxies)

    def _start_identity_provider(self) -> None:
        """Fetch and refresh the keys of ``[auth] jwks_url`` (server/jwks.py), if set;
        ``/healthz`` says ``starting`` until the first fetch."""
        jwks = self.auth.jwks
        if jwks is None:
            return
        self.starting["jwks"] = lambda: not jwks.loaded
        self.health_extra["jwks"] = jwks.health
        self.spawn(jwks.run(), background=True)

    @property
    def tick(self) -> float:
        """Seconds between two housekeeping steps: deadlines, heartbeats and progress
        checks are enforced within one."""
        settings = self.settings
        return min(MAINTENANCE_INTERVAL, settings.heartbeat_interval,
                   settings.header_timeout / 4, settings.keep_alive_timeout / 4,
                   settings.slow_consumer_timeout / 4)

    @property
    def url(self) -> str:
        return http.local_url(self.settings.host, self.port)

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
        if not self.started:  # never started: nothing to stop
            self._closed.set()
            return
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        if self._metrics_listener is not None:
            self._metrics_listener.close()
        self.registry.say_goodbye()
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
        self.registry.close_connections()
        # Streams told to go away get a moment to flush their last words; then they are cut.
        await self.registry.wait_flushed(SHUTDOWN_FLUSH_SECONDS)
        if self._listener is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._listener.wait_closed(), 5)
        await self.broker.aclose()
        await self.hooks.aclose()
        self._closed.set()

    async def drain(self, period: float | None = None) -> None:
        """A rolling restart: move every client to other nodes, then :meth:`aclose`.

        Stops accepting clients: ``/readyz`` answers ``503`` (and ``/healthz``
        says ``draining``), so that load balancers move on, and new streams and
        long polls are refused with ``503 shutdown``, which clients retry
        (elsewhere); polls and publishes are still served. Parked long polls
        are answered at once, idle connections closed, and every HTTP
        connection closes after its answer. Streams are told to reconnect
        (WebSocket ``1012``, an SSE ``close`` event with ``restart``) one by
        one, evenly over ``period`` seconds (``drain_period``), so that the
        other nodes are not stormed. Then the listener closes and the server
        with it (:meth:`aclose`); this returns when it is closed.
        """
        if self.draining or self._closed.is_set():
            await self.wait_closed()
            return
        period = self.settings.drain_period if period is None else period
        self.draining = True
        self.registry.start_draining()
        streams = self.registry.streams()
        began = self.loop.time()
        for number, stream in enumerate(streams):
            await asyncio.sleep(max(0.0, began + period * number / len(streams)
                                    - self.loop.time()))
            if self.closing:
                break  # closed meanwhile (a second signal): aclose says goodbye to the rest
            if not stream.closed:
                try:
                    stream.close_with(RESTART)
                except Exception:
                    logger.exception("telling %r to reconnect failed", stream)
        if self.closing:
            await self.wait_closed()
            return
        logger.info("drained %d stream(s) in %.1f s", len(streams), self.loop.time() - began)
        await self.aclose()

    def ready(self) -> bool:
        """Whether a load balancer should send clients here (``/readyz``): started, and
        not draining."""
        return not self.draining and not self.closing and not any(
            still() for still in self.starting.values())

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
        """Request deadlines, retention sweeps, token expiry and heartbeats, from one task.

        It wakes every ``tick`` seconds; deadlines are therefore enforced to
        within a tick, and no request pays for a timer of its own. A step that
        raises is logged and the next tick runs as usual: nothing a client
        sends can stop this task.
        """
        settings = self.settings
        tick = self.tick
        heartbeat_due = self.loop.time() + settings.heartbeat_interval
        maintenance_due = 0.0
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            # (a tick ahead: a connection idle from now until the next tick keeps its time)
            self.keep_alive_deadline = now + settings.keep_alive_timeout + tick
            heartbeat = now >= heartbeat_due
            if heartbeat:
                heartbeat_due = now + settings.heartbeat_interval
            try:
                self.registry.sweep(now, time.time(), heartbeat=heartbeat,
                                    check_tokens=self.auth.enabled)
            except Exception:
                logger.exception("the sweep failed; it runs again next tick")
            try:
                self.presence.sweep(now)
            except Exception:
                logger.exception("the presence sweep failed; it runs again next tick")
            if now >= maintenance_due:
                maintenance_due = now + MAINTENANCE_INTERVAL
                try:
                    self.broker.maintain()
                except Exception:
                    logger.exception("the broker's maintenance failed; it runs again")

    # embedding (docs/embedding.md) -------------------------------------------------

    async def publish(self, channel: str, data: Any, *,
                      idempotency_key: str | None = None) -> Message:
        """Publish ``data`` on ``channel`` from the application; return the message.

        ``data`` is a JSON value (``dict``, ``list``, ``str``, number,
        ``bool``, ``None``), or JSON text as ``bytes``. It is checked exactly
        as an HTTP publish is (channel name, JSON, ``max_message_size``) and
        counted the same way; a refusal raises that publish's
        :class:`~tidings.errors.ProtocolError` (``.status``, ``.code``), a
        store that fails :class:`~tidings.errors.BrokerError`. The message's
        ``id``, ``channel`` and ``time`` are what subscribers receive. With an
        ``idempotency_key`` used on the channel within its window, nothing is
        stored or counted and the first message is returned again.
        Call it once the server has started (``async with server:``).
        """
        if not isinstance(channel, str):
            raise UsageError(f"channel must be a str, not {type(channel).__name__}")
        if not self.started or self.closing:
            raise UsageError("start the server before publishing (async with server: ...)")
        data = publish.check_data(self, channel, data)
        key = None if idempotency_key is None else check_idempotency_key(idempotency_key)
        return await publish.store(self, channel, data, key)

    async def subscribe_user(self, user: str, channel: str) -> bool:
        """Subscribe every connection of ``user`` to ``channel``, on every node, from now on.

        Its SSE streams and WebSockets read by ``GET /subscribe`` without
        ``channel`` start reading it within moments (announced by a
        ``subscribed`` event or frame); its polls see it at their next request;
        a reconnection, to any node, keeps it (docs/embedding.md). Returns
        ``False`` if ``user`` had it already. Raises a
        :class:`~tidings.errors.ProtocolError` for a bad channel or user name
        (``invalid_channel``, ``invalid_user``) or a user with
        ``max_channels_per_subscription`` channels (``too_many_channels``), and
        :class:`~tidings.errors.BrokerError` if the broker cannot store it.
        """
        self._require_started()
        return await self.subscriptions.subscribe(user, channel)

    async def unsubscribe_user(self, user: str, channel: str) -> bool:
        """Undo :meth:`subscribe_user`: every connection of ``user`` stops reading
        ``channel`` (an ``unsubscribed`` event or frame). Returns ``False`` if it was not
        subscribed."""
        self._require_started()
        return await self.subscriptions.unsubscribe(user, channel)

    def _require_started(self) -> None:
        if not self.started or self.closing:
            raise UsageError("start the server first (async with server: ...)")

    def on_connect(self, hook: Hook) -> Hook:
        """Register ``async def hook(request: ConnectRequest) -> Identity | str | None``.

        Called once per HTTP request and WebSocket handshake, before anything
        is read or published: return who the user is, or raise
        :class:`~tidings.server.hooks.Refuse` (docs/embedding.md).
        """
        self.hooks.connect = hook
        return hook

    def on_subscribe(self, hook: Hook) -> Hook:
        """Register ``async def hook(user, channel)``: return to allow, raise ``Refuse`` (or
        return ``False``) to refuse. Called once per channel of each subscription."""
        self.hooks.subscribe = hook
        return hook

    def on_publish(self, hook: Hook) -> Hook:
        """Register ``async def hook(user, channel, data)``: return to allow, ``Replace(data)``
        to store other data, raise ``Refuse`` (or return ``False``) to refuse. Not called
        for :meth:`publish`, the application's own."""
        self.hooks.publish = hook
        return hook

    def on_rpc(self, hook: Hook) -> Hook:
        """Register ``async def hook(user, method, data)``: what it returns is the ``result``
        of the ``ack`` to a WebSocket ``rpc`` command; ``Refuse`` is an ``error`` reply."""
        self.hooks.rpc = hook
        return hook

    @property
    def asgi(self) -> AsgiApp:
        """This server's HTTP interface as an ASGI 3 application (server/asgi.py).

        Mount it anywhere (``Mount("/rt", app=server.asgi)``): it serves the
        same logs as :meth:`publish` and the native listener. The application
        starts and stops the server in its lifespan (``async with server:``);
        run directly by an ASGI server, its own lifespan does it.
        """
        if self._asgi is None:
            self._asgi = AsgiApp(self)
        return self._asgi

    # reading ---------------------------------------------------------------

    def when_ready(self, starts: Mapping[str, Start], then: Callable[[], None],
                   refuse: Callable[[ProtocolError | BrokerError], None]) -> bool:
        """Call ``then()`` once the broker can read ``starts``; say whether it was at once.

        If the broker must fetch first (a shared store), ``then`` runs in a
        task the server owns; if the broker cannot, or the server closes
        meanwhile, ``refuse(error)`` runs instead. A :class:`ProtocolError`
        raised by a deferred ``then`` is handed to ``refuse`` as well. The one
        place where a read waits for the broker, for every technique.
        """
        if self.broker.ready(starts):
            then()
            return True
        self.spawn(self._when_prepared(starts, then, refuse))
        return False

    async def _when_prepared(self, starts: Mapping[str, Start], then: Callable[[], None],
                             refuse: Callable[[ProtocolError | BrokerError], None]) -> None:
        try:
            await self.prepare(starts)
        except (ProtocolError, BrokerError) as exc:
            refuse(exc)
            return
        except asyncio.CancelledError:
            refuse(ShuttingDown("the server is shutting down; retry (on another node)"))
            raise
        try:
            then()
        except ProtocolError as exc:
            refuse(exc)

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
        for stream in self.registry.streams():
            try:
                stream.notice(status)
            except Exception:
                logger.exception("telling %r about the broker failed", stream)

    def health(self) -> dict[str, object]:
        hub = self.broker.hub
        broker = self.broker.health()
        counts = self.registry.statistics()
        status = "ok" if broker.get("status", "ok") == "ok" else "degraded"
        if any(still() for still in self.starting.values()):
            status = "starting"
        if self.draining:
            status = "draining"
        health: dict[str, object] = {
            "status": status,
            "time": int(time.time() * 1000),
            "transports": list(self.settings.transports),
            "connections": {key: counts[key] for key in ("http", "streams", "long_polls")},
            "channels_with_subscribers": hub.channels(),
            "published": self.stats["published"],
            "delivered": hub.delivered,
            "slow_consumers_cut_off": self.stats["slow_consumers"],
            "broker": broker,
        }
        for name, section in self.health_extra.items():
            health[name] = section()
        return health


    def statistics(self) -> dict[str, object]:
        """Open connections by kind, bytes waiting in stream buffers, and the counters."""
        return {**self.registry.statistics(), **self.admission.statistics(),
                **self.presence.statistics(), **self.subscriptions.statistics(),
                "hub_channels": self.broker.hub.channels(), **self.stats}
