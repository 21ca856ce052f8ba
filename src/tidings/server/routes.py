"""Which URL does what, and which technique a read request asked for.

=====================  ========  =============================================
``/channels/{name}``   POST      publish a JSON message
``/channels/{name}``   GET       read: WebSocket upgrade, SSE (``Accept:
                                 text/event-stream``), long poll (``?wait=`` or
                                 ``Prefer: wait=``), else a regular poll
``/subscribe``         GET       the same reads on ``?channel=a&channel=b``
``/healthz``           GET       liveness, a few counters and the server's clock
``/tidings.js``        GET       static files (server/static.py): the browser
(and pages given)      HEAD      client and the embedder's pages, exact paths
any of them            OPTIONS   CORS preflight
=====================  ========  =============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.core.cursor import Start, parse_since
from tidings.core.names import check_channel
from tidings.errors import (
    BadRequest,
    BrokerError,
    MethodNotAllowed,
    NotFound,
    ProtocolError,
    TransportDisabled,
)
from tidings.server import longpoll, poll, publish, static, websocket
from tidings.server.auth import Credentials
from tidings.server.connection import HttpConnection
from tidings.server.reading import read_batch
from tidings.server.request import Request
from tidings.server.sse import SseStream
from tidings.wire import http

if TYPE_CHECKING:
    from tidings.server.app import Server

CHANNEL_PREFIX = "/channels/"
CHANNEL_METHODS = ("GET", "POST", "OPTIONS")
READ_METHODS = ("GET", "OPTIONS")


class Router:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.settings = server.settings
        self.transports = frozenset(server.settings.transports)

    def dispatch(self, conn: HttpConnection, request: Request, rest: bytes = b"") -> None:
        """Answer ``request`` (or start answering it); never raises."""
        try:
            self._route(conn, request, rest)
        except ProtocolError as exc:
            cors = self.server.cors.headers(request.headers)
            conn.respond(http.error_response(exc, cors, keep_alive=request.keep_alive),
                         request.keep_alive)

    def _route(self, conn: HttpConnection, request: Request, rest: bytes) -> None:
        path, method = request.path, request.method
        if path.startswith(CHANNEL_PREFIX):
            if method not in CHANNEL_METHODS:
                raise MethodNotAllowed(f"{method} is not allowed on {CHANNEL_PREFIX}{{channel}}",
                                       allow=CHANNEL_METHODS)
            channel = check_channel(path[len(CHANNEL_PREFIX):])
            if method == "POST":
                auth = self.server.auth
                credentials = auth.identify(request)
                auth.check_publish(channel, credentials)
                cors = self.server.cors.headers(request.headers)
                publish.publish(self.server, conn, request, channel, cors, credentials.rate_key)
            elif method == "GET":
                self._read(conn, request, [channel], False, rest)
            else:
                self._preflight(conn, request, "GET, POST, OPTIONS")
        elif path == "/subscribe":
            if method not in READ_METHODS:
                raise MethodNotAllowed(f"{method} is not allowed on /subscribe",
                                       allow=READ_METHODS)
            if method == "OPTIONS":
                self._preflight(conn, request, "GET, OPTIONS")
                return
            channels = list(dict.fromkeys(check_channel(c) for c in request.args("channel")))
            if not channels and not request.wants_websocket:
                raise BadRequest("name at least one channel: /subscribe?channel=a&channel=b",
                                 code="no_channel")
            self._read(conn, request, channels, True, rest)
        elif path == "/healthz":
            if method != "GET":
                raise MethodNotAllowed(f"{method} is not allowed on /healthz", allow=("GET",))
            conn.answer_json(200, self.server.health(), (), request.keep_alive)
        elif path in self.server.static:
            if method not in static.ALLOWED_METHODS:
                raise MethodNotAllowed(f"{method} is not allowed on {path[:100]}",
                                       allow=static.ALLOWED_METHODS)
            cors = self.server.cors.headers(request.headers)
            conn.respond(self.server.static.answer(path, method, request.header("if-none-match"),
                                                   cors, request.keep_alive),
                         request.keep_alive)
        else:
            raise NotFound(f"no such URL: {path[:100]}")

    def _read(self, conn: HttpConnection, request: Request, channels: list[str], multi: bool,
              rest: bytes) -> None:
        limit = self.settings.max_channels_per_subscription
        if len(channels) > limit:
            raise BadRequest(f"at most {limit} channels in one subscription",
                             code="too_many_channels")
        auth = self.server.auth
        credentials = auth.identify(request)
        auth.check_subscribe(channels, credentials)
        if request.wants_websocket:
            self._check_enabled("websocket")
            websocket.accept(self.server, conn, request, channels, rest, credentials)
            return
        cors = self.server.cors.headers(request.headers)
        broker = self.server.broker
        if request.wants_event_stream:
            self._check_enabled("sse")
            since = request.header("last-event-id") or request.arg("since")
            starts = parse_since(since, channels)
            stream = SseStream(self.server, conn.detach(), multi)
            stream.expires = credentials.expires
            if broker.ready(starts):
                stream.start(starts, cors)
            else:
                self.server.spawn(stream.start_when_ready(starts, cors))
            return
        wait = request.wait_seconds()
        self._check_enabled("poll" if wait is None else "longpoll")
        starts = parse_since(request.arg("since"), channels)
        limit = self._limit(request)
        if wait is not None:
            wait = min(wait, self.settings.max_wait)
        if broker.ready(starts):
            self._answer_read(conn, request, starts, multi, limit, wait, cors, credentials)
        else:
            conn.park()
            self.server.spawn(self._answer_read_when_ready(conn, request, starts, multi, limit,
                                                           wait, cors, credentials))

    def _answer_read(self, conn: HttpConnection, request: Request, starts: dict[str, Start],
                     multi: bool, limit: int, wait: float | None, cors: http.Headers,
                     credentials: Credentials) -> None:
        batch = read_batch(self.server.broker, starts, limit)
        if wait is None:
            poll.answer(conn, batch, multi, request.header("if-none-match"), cors,
                        request.keep_alive)
        else:
            longpoll.answer(conn, batch, multi, wait, cors, request.keep_alive,
                            credentials.expires)

    async def _answer_read_when_ready(self, conn: HttpConnection, request: Request,
                                      starts: dict[str, Start], multi: bool, limit: int,
                                      wait: float | None, cors: http.Headers,
                                      credentials: Credentials) -> None:
        """A poll or long poll of channels the broker must fetch first (a shared store)."""
        try:
            await self.server.prepare(starts)
            if conn.closing:
                return  # the client left while the broker was fetching: park no waiter
            self._answer_read(conn, request, starts, multi, limit, wait, cors, credentials)
        except (ProtocolError, BrokerError) as exc:
            conn.respond(http.error_response(exc, cors, keep_alive=request.keep_alive),
                         request.keep_alive)

    def _check_enabled(self, transport: str) -> None:
        if transport not in self.transports:
            enabled = ", ".join(self.settings.transports)
            raise TransportDisabled(f"{transport} is turned off on this server; "
                                    f"it serves {enabled}")

    def _limit(self, request: Request) -> int:
        text = request.arg("limit")
        if text is None:
            return self.settings.poll_limit
        if not text.isdigit() or not 1 <= int(text) <= self.settings.max_poll_limit:
            raise BadRequest(f"limit must be an integer from 1 to {self.settings.max_poll_limit}",
                             code="invalid_limit")
        return int(text)

    def _preflight(self, conn: HttpConnection, request: Request, methods: str) -> None:
        headers = self.server.cors.preflight(request.headers, methods)
        conn.answer(204, headers, b"", request.keep_alive)
