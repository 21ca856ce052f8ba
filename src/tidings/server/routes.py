"""Which URL does what, and which technique a read request asked for.

=====================  ========  =============================================
``/channels/{name}``   POST      publish a JSON message
``/channels/{name}``   GET       read: WebSocket upgrade, SSE (``Accept:
                                 text/event-stream``), long poll (``?wait=`` or
                                 ``Prefer: wait=``), else a regular poll
``/channels/{name}/    GET       who reads it (server/presence.py), ``?count``
presence``                       for the numbers only
``/subscribe``         GET       the same reads on ``?channel=a&channel=b``; without
                                 ``channel``, its user's (server/subscriptions.py)
``/users/{user}/       GET       a user's server-side channels (the API key);
channels[/{channel}]`` POST      ``POST``/``DELETE`` one (server/subscriptions.py)
                       DELETE
``/healthz``           GET       liveness, a few counters and the server's clock
                       HEAD      the same status, no body
``/readyz``            GET       readiness: 503 while starting or draining
                       HEAD
``/admin/status``      GET       the live status page's figures (server/status.py);
                                 the page is ``/admin``, a static file
``/metrics``           GET       Prometheus metrics (server/metrics.py), unless
                       HEAD      served on ``metrics_listen``
``/tidings.js``        GET       static files (server/static.py): the browser
(and pages given)      HEAD      client and the embedder's pages, exact paths
any of them            OPTIONS   CORS preflight
=====================  ========  =============================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

from tidings.core.cursor import END, ORIGIN, Position, Start, parse_position, parse_since
from tidings.core.names import check_channel
from tidings.core.presence import Identity
from tidings.errors import (
    BadRequest,
    BrokerError,
    MethodNotAllowed,
    NotFound,
    ProtocolError,
    ShuttingDown,
    TransportDisabled,
)
from tidings.server import hooks, metrics, poll, publish, static, websocket
from tidings.server import status as admin_status
from tidings.server.accesslog import technique_of
from tidings.server.auth import Credentials
from tidings.server.connection import HttpConnection
from tidings.server.jwks import KeysMissing
from tidings.server.metrics import count_refusal
from tidings.server.presence import identify, identify_request, wants_events
from tidings.server.repeat import PollRead, Shared
from tidings.server.request import Request
from tidings.server.sse import SseStream
from tidings.server.subscriptions import USERS_PREFIX, Resolved, starts_of
from tidings.wire import http

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.server")

CHANNEL_PREFIX = "/channels/"
PRESENCE_SUFFIX = "/presence"
CHANNEL_METHODS = ("GET", "POST", "OPTIONS")
READ_METHODS = ("GET", "OPTIONS")
#: The query parameters that change what a read is; a read with none of them is "plain".
READ_CHOICES = frozenset(("client", "presence", "before", "order", "latest", "delta"))


class Router:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.settings = server.settings
        #: The techniques served (the setting keeps its public name, ``transports``).
        self.techniques = frozenset(server.settings.transports)
        #: The poll decisions connections keep to answer a repeated request (server/repeat.py).
        self.repeats = Shared()

    def dispatch(self, conn: HttpConnection, request: Request, rest: bytes = b"") -> None:
        """Answer ``request`` (or start answering it); never raises.

        A refusal is answered with its status; anything else raised while
        serving it is a bug: logged, answered ``500``, and this connection closed.
        """
        try:
            self._route(conn, request, rest)
        except KeysMissing as missing:  # a token of a key the IdP may have published since
            conn.park()
            self.server.spawn(self._after_keys(missing, conn, request, rest))
        except ProtocolError as exc:
            count_refusal(self.server.stats, exc)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("refused %s %s: %s", request.method,
                             request.target.decode("latin-1")[:200],
                             exc, extra={"client": self.server.client_address(
                                             conn.transport, request.header("x-forwarded-for")),
                                         "code": exc.code, "status": exc.status,
                                         "technique": technique_of(request)})
            cors = self.server.cors.headers(request.headers)
            conn.respond(http.error_response(exc, cors, keep_alive=request.keep_alive),
                         request.keep_alive)
        except Exception:
            logger.exception("serving %s %s failed", request.method, request.path[:100])
            conn.abort()

    async def _after_keys(self, missing: KeysMissing, conn: HttpConnection, request: Request,
                          rest: bytes) -> None:
        """Fetch the IdP's keys (at a bounded rate), then serve ``request`` again."""
        jwks = self.server.auth.jwks
        assert jwks is not None
        try:
            await jwks.fetch_for(missing.kid)
        finally:
            conn.busy = False
            conn.on_lost = None
        if not conn.closing:
            self.dispatch(conn, request, rest)

    def _route(self, conn: HttpConnection, request: Request, rest: bytes) -> None:
        path, method = request.path, request.method
        if (path.startswith(CHANNEL_PREFIX) and path.endswith(PRESENCE_SUFFIX)
                and len(path) > len(CHANNEL_PREFIX) + len(PRESENCE_SUFFIX)):
            # (``/channels/presence`` is the channel named "presence")
            self._presence(conn, request, path[len(CHANNEL_PREFIX):-len(PRESENCE_SUFFIX)])
        elif path.startswith(CHANNEL_PREFIX):
            if method not in CHANNEL_METHODS:
                raise MethodNotAllowed(f"{method} is not allowed on {CHANNEL_PREFIX}{{channel}}",
                                       allow=CHANNEL_METHODS)
            channel = check_channel(path[len(CHANNEL_PREFIX):])
            if method == "POST":
                auth = self.server.auth
                credentials = auth.identify(request)
                auth.check_publish(channel, credentials)
                cors = self.server.cors.headers(request.headers)
                publish.publish(self.server, conn, request, channel, cors, credentials.rate_key,
                                credentials.claims)
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
            if not channels:
                self._read_user_channels(conn, request, rest)
            else:
                self._read(conn, request, channels, True, rest)
        elif path.startswith(USERS_PREFIX):
            self.server.subscriptions.answer(conn, request)
        elif path == "/healthz":
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed on /healthz",
                                       allow=("GET", "HEAD"))
            health = self.server.health()
            code = 503 if health["status"] == "starting" else 200  # readiness probes wait
            body = http.json_response(code, health, keep_alive=request.keep_alive)
            if method == "HEAD":  # the same head, Content-Length included, and no body
                body = body[:body.index(b"\r\n\r\n") + 4]
            conn.respond(body, request.keep_alive)
        elif path == metrics.METRICS_PATH:
            metrics.answer(self.server, conn, request)
        elif path == admin_status.STATUS_PATH:
            admin_status.answer(self.server, conn, request)
        elif path == "/readyz":
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} is not allowed on /readyz",
                                       allow=("GET", "HEAD"))
            ready = self.server.ready()
            status = "ready" if ready else ("draining" if self.server.draining else "starting")
            body = http.json_response(200 if ready else 503, {"status": status},
                                      keep_alive=request.keep_alive)
            if method == "HEAD":
                body = body[:body.index(b"\r\n\r\n") + 4]
            conn.respond(body, request.keep_alive)
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

    def _presence(self, conn: HttpConnection, request: Request, name: str) -> None:
        """``GET /channels/{channel}/presence``: the same permission as subscribing."""
        if request.method not in READ_METHODS:
            raise MethodNotAllowed(f"{request.method} is not allowed on "
                                   f"{CHANNEL_PREFIX}{{channel}}{PRESENCE_SUFFIX}",
                                   allow=READ_METHODS)
        if request.method == "OPTIONS":
            self._preflight(conn, request, "GET, OPTIONS")
            return
        channel = check_channel(name)
        server = self.server
        server.auth.check_subscribe([channel], server.auth.identify(request))
        server.presence.require(channel)
        cors = server.cors.headers(request.headers)
        keep_alive = request.keep_alive

        def then() -> None:  # on a shared broker, once this node has a copy of the members
            if not conn.closing:
                body = server.presence.answer(channel, request.arg("count") is not None)
                conn.answer_json(200, body, (("Cache-Control", "no-cache"), *cors), keep_alive)

        def refuse(error: ProtocolError | BrokerError) -> None:
            conn.respond(http.error_response(error, cors, keep_alive=keep_alive), keep_alive)

        if not server.when_ready({channel: END}, then, refuse):
            conn.park()

    def _read(self, conn: HttpConnection, request: Request, channels: list[str], multi: bool,
              rest: bytes) -> None:
        """A read on one of the four techniques: the same checks, then its driver."""
        limit = self.settings.max_channels_per_subscription
        if len(channels) > limit:
            raise BadRequest(f"at most {limit} channels in one subscription",
                             code="too_many_channels")
        server = self.server
        if server.draining:
            self._check_draining(request)
        auth = server.auth
        credentials = auth.identify(request)
        auth.check_subscribe(channels, credentials)
        if server.hooks.on_reads:
            self._read_after_hooks(conn, request, channels, multi, rest, credentials)
        else:
            self._read_now(conn, request, channels, multi, rest, credentials)

    def _check_draining(self, request: Request) -> None:
        if self.server.draining and (request.wants_websocket or request.wants_event_stream
                                     or request.wait_seconds() is not None):
            raise ShuttingDown("this node is restarting; reconnect (another node will "
                               "answer) and resume")

    def _read_user_channels(self, conn: HttpConnection, request: Request, rest: bytes) -> None:
        """``GET /subscribe`` without ``channel``: the channels of its user (``on_connect``'s,
        the token's ``channels.read`` and the user's set: server/subscriptions.py)."""
        server = self.server
        credentials = server.auth.identify(request)
        claims = credentials.claims
        if server.hooks.connect is None and (claims is None or (
                claims.sub is None and not claims.read)):
            # Nobody to read for: a WebSocket subscribes with commands, the others must ask.
            if not request.wants_websocket:
                raise BadRequest("name at least one channel: /subscribe?channel=a&channel=b "
                                 "(or be a user with channels: docs/embedding.md)",
                                 code="no_channel")
            self._read(conn, request, [], True, rest)
            return
        self._check_draining(request)
        asked = self._connect_request(conn, request, credentials, ())

        async def decide() -> Callable[[], None]:
            if server.hooks.connect is not None:
                who: hooks.Identity | None = await server.hooks.identify(asked)
                assert who is not None
                fixed = _hook_channels(who.channels)
            else:
                who = None
                fixed = ()
            user = who.user if who is not None else (claims.sub if claims else None)
            if claims is not None:
                fixed = (*fixed, *claims.read)
            resolved = await server.subscriptions.resolve(user, fixed)
            if user is None and not resolved.channels and not request.wants_websocket:
                raise BadRequest("name at least one channel: /subscribe?channel=a&channel=b "
                                 "(on_connect named no user and no channel)",
                                 code="no_channel")
            return partial(self._read_now, conn, request, resolved.channels, True, rest,
                           credentials, who, resolved)

        self._decide_then_read(conn, request, decide())

    def _connect_request(self, conn: HttpConnection, request: Request,
                         credentials: Credentials, channels: tuple[str, ...]
                         ) -> hooks.ConnectRequest:
        if request.wants_websocket:
            technique = "websocket"
        elif request.wants_event_stream:
            technique = "sse"
        else:
            technique = "poll" if request.wait_seconds() is None else "longpoll"
        peer = conn.transport.get_extra_info("peername") if conn.transport else None
        return hooks.connect_request(technique, request, peer, credentials.claims, channels)

    def _read_after_hooks(self, conn: HttpConnection, request: Request, channels: list[str],
                          multi: bool, rest: bytes, credentials: Credentials) -> None:
        """Run ``on_connect`` and ``on_subscribe`` (server/hooks.py), then the read."""
        server = self.server
        asked = self._connect_request(conn, request, credentials, tuple(channels))

        async def decide() -> Callable[[], None]:
            identity = await server.hooks.identify(asked)
            await server.hooks.check_subscribe(identity.user, asked.channels)
            return partial(self._read_now, conn, request, channels, multi, rest, credentials,
                           identity if server.hooks.connect is not None else None)

        self._decide_then_read(conn, request, decide())

    def _decide_then_read(self, conn: HttpConnection, request: Request,
                          deciding: Coroutine[Any, Any, Callable[[], None]]) -> None:
        """Park ``conn`` while the application decides (hooks, a user's channels), then
        start the read ``deciding`` returns. A refusal, or a failure, answers this client
        alone; a client that left meanwhile is not answered."""
        server = self.server
        conn.park()

        async def run() -> None:
            try:
                read = await deciding
            except (ProtocolError, BrokerError) as exc:
                if not conn.closing:
                    count_refusal(server.stats, exc)
                    keep_alive = request.keep_alive and not request.wants_websocket
                    conn.respond(http.error_response(exc, server.cors.headers(request.headers),
                                                     keep_alive=keep_alive), keep_alive)
                return
            if conn.closing or conn.transport is None:
                return  # the client left while the application decided
            conn.busy = False
            try:
                read()
            except ProtocolError as exc:
                cors = server.cors.headers(request.headers)
                conn.respond(http.error_response(exc, cors, keep_alive=request.keep_alive),
                             request.keep_alive)
            except Exception:
                logger.exception("serving %s %s failed", request.method, request.path[:100])
                conn.abort()

        server.spawn(run())

    def _read_now(self, conn: HttpConnection, request: Request, channels: list[str],
                  multi: bool, rest: bytes, credentials: Credentials,
                  who: hooks.Identity | None = None, resolved: Resolved | None = None) -> None:
        """The read itself, once it is allowed: ``who`` is ``on_connect``'s answer, if any;
        ``resolved``, the channels of a read of its user's (server/subscriptions.py)."""
        server = self.server
        # Most reads name none of the parameters that change what a read is (a chosen
        # client id, joins and leaves, history backwards, latest, deltas): one look at
        # the parameters then stands for the six checks below.
        plain = request.params.keys().isdisjoint(READ_CHOICES)
        identity, named = (identify(None, credentials) if plain
                           else identify_request(request, credentials))
        if who is not None:  # presence shows the user the application named
            identity = Identity(identity.client, who.user, who.info)
        user = who.user if who is not None else (
            credentials.claims.sub if credentials.claims is not None else None)
        recorded = resolved.recorded if resolved is not None else None
        following = resolved.following if resolved is not None else None
        presence = not plain and wants_events(request)
        if presence:
            server.presence.check_events(channels)
            if not named and not request.wants_websocket and not request.wants_event_stream:
                raise BadRequest("a poll that asks for joins and leaves (presence=1) must name "
                                 "itself with ?client=ID, kept from one poll to the next",
                                 code="client_required")
        cors = server.cors.headers(request.headers)
        keep_alive = request.keep_alive
        # partial(), not closures: this runs for every read, and a closure would make a cell
        # of every name it uses, at every call, whichever technique was asked for.
        then: Callable[[], None]
        if not plain and _reads_back(request):
            self._read_back(conn, request, channels, multi, cors)
            return
        latest = not plain and request.latest()  # 400 before any technique starts
        delta = not plain and request.delta()
        if request.wants_websocket:
            self._check_enabled("websocket")
            starts = self._starts(request.arg("since"), channels, recorded) if channels else {}
            keep_alive = False
            then = partial(websocket.accept, server, conn, request, channels, rest, credentials,
                           identity, presence, user, following, starts)
        elif request.wants_event_stream:
            self._check_enabled("sse")
            since = request.header("last-event-id") or request.arg("since")
            starts = self._starts(since, channels, recorded)
            stream = SseStream(server, conn.detach(), multi, identity, latest=latest,
                               delta=delta)
            stream.expires = credentials.expires
            if following is None:
                server.when_ready(starts, partial(stream.start, starts, cors, presence),
                                  partial(stream.refuse, cors=cors))
                return
            stream.server_side = following

            def start_stream() -> None:
                stream.start(starts, cors, presence)
                server.subscriptions.track(stream)

            server.when_ready(starts, start_stream, partial(stream.refuse, cors=cors))
            return
        else:
            wait = request.wait_seconds()
            self._check_enabled("poll" if wait is None else "longpoll")
            starts = self._starts(request.arg("since"), channels, recorded)
            tag, since = request.header("if-none-match"), request.arg("since")
            read = PollRead(server, tuple(channels), multi, self._limit(request),
                            None if wait is None else min(wait, self.settings.max_wait),
                            tag, cors, keep_alive, credentials.expires,
                            parse_since(request.arg("presence_since"), channels)
                            if presence else None, latest, delta,
                            tag is not None and since is not None and tag == f'"{since}"')
            if (not presence and not latest and not delta and recorded is None
                    and not server.hooks.on_reads and not self.settings.access_log
                    and (credentials.claims is None or server.auth.jwks is None)):
                # Nothing but the request's bytes decided this read: the same request
                # again (another ``since``) is answered from this decision.
                conn.offer(self.repeats.repeat(read, credentials, identity if named else None))
            read.start(conn, starts, identity, named)
            return
        if not server.when_ready(starts, then,
                                 partial(conn.refuse, cors=cors, keep_alive=keep_alive)):
            conn.park()  # the requests behind it wait too

    def _read_back(self, conn: HttpConnection, request: Request, channels: list[str],
                   multi: bool, cors: http.Headers) -> None:
        """History backwards: ``?before=ID`` or ``?order=desc``, one channel, a regular poll."""
        if multi or request.wants_websocket or request.wants_event_stream or (
                request.wait_seconds() is not None):
            raise BadRequest("history backwards (before=, order=desc) is a regular poll of one "
                             "channel: GET /channels/{channel}, without wait, SSE or WebSocket",
                             code="invalid_order")
        self._check_enabled("poll")
        order = request.arg("order")
        if order not in (None, "asc", "desc"):
            raise BadRequest(f"order must be asc or desc, not {order[:20]!r}",
                             code="invalid_order")
        before_text = request.arg("before")
        if order == "asc" and before_text is not None:
            raise BadRequest("before= reads backwards; it cannot go with order=asc",
                             code="invalid_order")
        before: Start = END if before_text is None else parse_position(before_text)
        since_text = request.arg("since")
        since: Start = ORIGIN if since_text is None else parse_since(since_text, channels)[
            channels[0]]
        page = self._limit(request)
        (channel,) = channels
        server, keep_alive = self.server, request.keep_alive

        def then() -> None:
            if not conn.closing:
                poll.answer_back(server, conn, channel, before, since, page, cors, keep_alive)

        def refuse(error: ProtocolError | BrokerError) -> None:
            conn.respond(http.error_response(error, cors, keep_alive=keep_alive), keep_alive)

        ready_for = before if before is not END else since
        if not server.when_ready({channel: ready_for}, then, refuse):
            conn.park()

    @staticmethod
    def _starts(since: str | None, channels: list[str],
                recorded: dict[str, Position] | None) -> dict[str, Start]:
        if recorded is None:
            return parse_since(since, channels)
        return starts_of(since, channels, recorded)

    def _check_enabled(self, technique: str) -> None:
        if technique not in self.techniques:
            enabled = ", ".join(self.settings.transports)
            raise TransportDisabled(f"{technique} is turned off on this server; "
                                    f"it serves {enabled}")

    def _limit(self, request: Request) -> int:
        text = request.arg("limit")
        if text is None:
            return self.settings.poll_limit
        if not _ascii_digits(text, 7) or not 1 <= int(text) <= self.settings.max_poll_limit:
            raise BadRequest(f"limit must be an integer from 1 to {self.settings.max_poll_limit}",
                             code="invalid_limit")
        return int(text)

    def _preflight(self, conn: HttpConnection, request: Request, methods: str) -> None:
        headers = self.server.cors.preflight(request.headers, methods)
        conn.answer(204, headers, b"", request.keep_alive)


def _hook_channels(channels: object) -> tuple[str, ...]:
    """``Identity.channels`` checked: a bad value is the application's bug (``503``)."""
    try:
        if isinstance(channels, str):
            raise TypeError("a str, not a sequence of names")
        return tuple(check_channel(channel) for channel in channels)  # type: ignore[attr-defined]
    except (TypeError, ProtocolError) as exc:
        logger.error("on_connect returned channels %r: %s", channels, exc)
        raise hooks.HookUnavailable("the application's on_connect hook failed; retry") from None


def _reads_back(request: Request) -> bool:
    """Whether a read asks for history backwards (``order=asc`` is the ordinary forward read)."""
    order = request.arg("order")
    return request.arg("before") is not None or (order is not None and order != "asc")


def _ascii_digits(text: str, longest: int) -> bool:
    """Whether ``text`` is 1 to ``longest`` ASCII digits (``'²'.isdigit()`` is true too)."""
    return 0 < len(text) <= longest and text.isascii() and text.isdigit()
