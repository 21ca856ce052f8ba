"""WebSockets: a live connection that receives messages and sends commands.

The handshake is checked by the ``websockets`` package; after it, frames
from the client go through the lean :class:`FrameParser` and frames to the
client are written as pre-encoded bytes. docs/protocol.md describes the
commands, replies and close codes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from websockets.datastructures import Headers as WsHeaders
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

from tidings.brokers.base import Replayed
from tidings.core.cursor import END, Start, parse_since
from tidings.core.presence import Identity
from tidings.errors import (
    IDLE_TIMEOUT,
    INTERNAL_ERROR,
    TOKEN_EXPIRED,
    BadRequest,
    BrokerError,
    CloseCode,
    Closing,
    CommandError,
    FrameError,
    OriginNotAllowed,
    ProtocolError,
    Unauthorized,
)
from tidings.server import publish
from tidings.server.auth import ANONYMOUS, Credentials
from tidings.server.jwks import KeysMissing
from tidings.server.metrics import count_refusal
from tidings.server.presence import identify
from tidings.server.request import Request
from tidings.server.stream import Stream
from tidings.session.reader import Encoder
from tidings.wire import commands, deflate, http, websocket
from tidings.wire import delta as deltas
from tidings.wire import presence as presence_wire
from tidings.wire.websocket import FrameParser

if TYPE_CHECKING:
    from tidings.server.app import Server
    from tidings.server.connection import HttpConnection
    from tidings.server.subscriptions import Following

logger = logging.getLogger("tidings.server")

#: Bytes a command may take beyond the message size limit (the envelope).
COMMAND_OVERHEAD = 4096

#: Commands a client may send while one of its subscriptions waits for the broker.
MAX_HELD_COMMANDS = 1000

#: Headers of a refused handshake that the JSON error answer sets itself.
_HEADERS_REPLACED = frozenset({"connection", "content-length", "content-type", "date"})


def handshake(conn: HttpConnection, request: Request,
              extensions: str | None = None) -> bytes | None:
    """Check the upgrade request; return the ``101`` answer, or send a refusal and return ``None``.

    ``extensions`` is the ``Sec-WebSocket-Extensions`` the answer agrees to.
    """
    headers = WsHeaders()
    for name, value in request.headers.items():
        headers[name] = value
    protocol = ServerProtocol(origins=None, max_size=None, logger=logger)
    response = protocol.accept(WsRequest(request.target.decode("ascii"), headers))
    if response.status_code != 101:
        # The same JSON error body as every other refusal; keep headers such as
        # Sec-WebSocket-Version that tell the client what would work.
        extra = [(name, value) for name, value in response.headers.raw_items()
                 if name.lower() not in _HEADERS_REPLACED]
        body = {"error": "invalid_handshake",
                "message": response.body.decode("utf-8", "replace").strip()}
        conn.respond(http.json_response(response.status_code, body, extra, keep_alive=False),
                     keep_alive=False)
        return None
    if extensions is not None:
        response.headers["Sec-WebSocket-Extensions"] = extensions
    return response.serialize()


class WebSocketSession(Stream):
    """An open WebSocket: a reader of its subscriptions, and the commands the client sends."""

    __slots__ = ("client_address", "credentials", "deltas", "held", "last_seen", "latest_for",
                 "parser", "pending", "user", "window_bits")
    technique = "websocket"

    def __init__(self, server: Server, transport: asyncio.Transport, identity: Identity, *,
                 latest: bool = False, compression: deflate.Agreement | None = None,
                 delta: bool = False) -> None:
        # With compression, messages go out compressed once for every such connection.
        threshold = server.settings.websocket_compression_threshold
        encoder: Encoder = commands.FRAMES if compression is None else deflate.frames(
            compression.window_bits, threshold)
        #: The compression window (0: none), for the delta encoder made on demand.
        self.window_bits = compression.window_bits if compression is not None else 0
        #: The encoder of a connection that asked for deltas (``?delta=1`` for every
        #: channel, or a ``subscribe`` with ``"delta": true``); ``None`` until one does.
        self.deltas: deltas.Deltas | None = None
        #: Channels whose ``subscribe`` asked for ``"latest": true``.
        self.latest_for: set[str] | None = None
        if delta:
            encoder = self.deltas = deltas.Deltas(
                encoder, deltas.frame_form(self.window_bits, threshold))
        super().__init__(server, transport, encoder, identity, latest=latest)
        self.parser: FrameParser | None = FrameParser(
            server.settings.max_message_size + COMMAND_OVERHEAD
        )
        if compression is not None:
            self.parser.inflate = deflate.inflate
        self.last_seen = server.loop.time()
        #: Publish commands still waiting for the broker.
        self.pending = 0
        #: Who the client is (server/auth.py); an ``auth`` command replaces it.
        self.credentials = ANONYMOUS
        #: Commands received while a subscription waits for the broker, handled after it.
        self.held: list[str] | None = None
        #: The client's address from a trusted proxy's X-Forwarded-For (None: the peer's).
        self.client_address: str | None = None
        #: Who ``on_connect`` said the client is (server/hooks.py), for the other hooks.
        self.user: str | None = None

    def start(self, response: bytes, starts: dict[str, Start], rest: bytes,
              presence: bool = False) -> None:
        self.write(response)
        self._server.registry.add_stream(self)
        for channel, start in starts.items():
            self._subscribe_now(channel, start, None, presence)
        if rest:
            self.data_received(rest)

    # receiving ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.closed:
            return
        self.last_seen = self._server.loop.time()
        try:
            events = parser.feed(data)
            for event in events:
                if self.closed:
                    return
                self._event(event)
        except FrameError as exc:
            self.close(exc.close_code, exc.reason)
        except Exception:
            logger.exception("serving a WebSocket failed; closing it")
            self.close_with(INTERNAL_ERROR)

    def _event(self, event: websocket.Event) -> None:
        if isinstance(event, websocket.TextMessage):
            self._command(event.text)
        elif isinstance(event, websocket.Ping):
            self.write(websocket.frame(websocket.OP_PONG, event.payload))
        elif isinstance(event, websocket.CloseReceived):
            # Echo the close (RFC 6455 section 5.5.1), then close the TCP connection.
            self.close(event.code or CloseCode.NORMAL, "")
        elif isinstance(event, websocket.BinaryMessage):
            self.close(CloseCode.UNSUPPORTED_DATA, "commands are JSON text frames")
        # Pong: last_seen is all it is for.

    def eof_received(self) -> bool | None:
        return None

    def _command(self, text: str) -> None:
        if self.held is not None:  # a subscription is waiting for the broker: keep order
            if len(self.held) >= MAX_HELD_COMMANDS:
                self.close(CloseCode.POLICY,
                           f"more than {MAX_HELD_COMMANDS} commands while a subscription waits")
            else:
                self.held.append(text)
            return
        try:
            command = commands.parse(text)
        except CommandError as exc:
            count_refusal(self._server.stats, exc.error)
            self.write(commands.error_frame(exc.req, exc.error))
            return
        try:
            if isinstance(command, commands.Subscribe):
                self._server.auth.check_subscribe([command.channel], self.credentials)
                if command.presence:
                    self._server.presence.require(command.channel)
                start = parse_since(command.since, [command.channel])[command.channel]
                self._options(command)
                if self._server.hooks.subscribe is not None:
                    self._subscribe_after_hook(command.channel, start, command.req,
                                               command.presence)
                else:
                    self._subscribe(command.channel, start, command.req, command.presence)
            elif isinstance(command, commands.Unsubscribe):
                self.unfollow(command.channel)
                if self.deltas is not None:
                    self.deltas.forget(command.channel)
                self.write(commands.ack_frame(command.req, channel=command.channel))
            elif isinstance(command, commands.Publish):
                self._server.auth.check_publish(command.channel, self.credentials)
                self._publish(command)
            elif isinstance(command, commands.AuthCommand):
                self._authenticate(command)
            elif isinstance(command, commands.PresenceCommand):
                self._server.auth.check_subscribe([command.channel], self.credentials)
                self._presence(command)
            elif isinstance(command, commands.Rpc):
                self._server.admission.check_publish_rate(self.transport,
                                                          self.credentials.rate_key)
                self.pending += 1
                self._server.spawn(self._rpc(command))
            else:
                self.write(commands.ack_frame(command.req))
        except KeysMissing as missing:  # fetch the IdP's keys, then handle it again, in order
            self.held = []
            self._server.spawn(self._after_keys(missing.kid, text))
        except ProtocolError as exc:
            count_refusal(self._server.stats, exc)
            self.write(commands.error_frame(command.req, exc))

    async def _after_keys(self, kid: str, text: str) -> None:
        jwks = self._server.auth.jwks
        assert jwks is not None
        try:
            await jwks.fetch_for(kid)
        finally:
            if self.held is not None:
                self.held.insert(0, text)
            if not self.closed:
                self._release_held()

    def _options(self, command: commands.Subscribe) -> None:
        """Note a ``subscribe``'s ``delta`` and ``latest`` for when the channel is opened."""
        channel = command.channel
        if self.reader.reads(channel):
            return  # already_subscribed: refused by _subscribe
        if command.latest:
            self.latest_for = {*(self.latest_for or ()), channel}
        elif self.latest_for is not None:
            self.latest_for.discard(channel)
        if self.deltas is None and command.delta:
            encoder = self.reader.encoder
            self.deltas = deltas.Deltas(encoder, deltas.frame_form(
                self.window_bits, self._server.settings.websocket_compression_threshold), ())
            self.reader.encode_with(self.deltas)
        if self.deltas is not None:
            self.deltas.want(channel, command.delta)

    def _authenticate(self, command: commands.AuthCommand) -> None:
        """Replace the connection's token; the new one must still grant every subscription."""
        auth = self._server.auth
        credentials = auth.verify(command.token)
        auth.check_subscribe(self.reader.channels, credentials)
        self.credentials = credentials
        self.expires = credentials.expires
        claims = credentials.claims
        self.write(commands.ack_frame(
            command.req, sub=claims.sub if claims else None,
            exp=claims.expires if claims else None))

    def _subscribe(self, channel: str, start: Start, req: commands.Req,
                   presence: bool = False) -> None:
        following = self.server_side
        if following is not None and self.reader.reads(channel) and (
                channel in following.added or channel in following.fixed):
            # The client asks for a channel the server reads for it: it takes it over,
            # from its own ``since`` (server/subscriptions.py).
            following.added.discard(channel)
            following.fixed = following.fixed - {channel}
            self.unfollow(channel)
        if self.reader.reads(channel):
            raise BadRequest(f"already subscribed to {channel!r}", code="already_subscribed")
        limit = self._server.settings.max_channels_per_subscription
        if len(self.reader.channels) >= limit:
            raise BadRequest(f"at most {limit} subscriptions per connection",
                             code="too_many_subscriptions")
        starts = {channel: start}
        if not self._server.broker.ready(starts):
            self.held = []  # commands that follow wait for this one, in order
        self._server.when_ready(starts, lambda: self._subscribed(channel, start, req, presence),
                                lambda error: self._refused(req, error))

    def _presence(self, command: commands.PresenceCommand) -> None:
        """Who is on a channel; on a shared broker, once this node has a copy of its members
        (the commands that follow wait for it, in order)."""
        channel = command.channel
        self._server.presence.require(channel)
        starts = {channel: END}
        if not self._server.broker.ready(starts):
            self.held = []

        def then() -> None:
            if not self.closed:
                body = self._server.presence.answer(channel, command.count_only)
                self.write(commands.ack_frame(command.req, **body))
            if self.held is not None:
                self._release_held()

        self._server.when_ready(starts, then, lambda error: self._refused(command.req, error))

    def _subscribe_after_hook(self, channel: str, start: Start, req: commands.Req,
                              presence: bool = False) -> None:
        """Ask ``on_subscribe`` first; the commands that follow wait for it, in order."""
        self.held = []

        async def decide() -> None:
            try:
                await self._server.hooks.check_subscribe(self.user, (channel,))
            except ProtocolError as exc:
                if not self.closed:
                    self.write(commands.error_frame(req, exc))
                self._release_held()
                return
            held, self.held = self.held, None
            if self.closed:
                return
            try:
                self._subscribe(channel, start, req, presence)
            except ProtocolError as exc:
                self.write(commands.error_frame(req, exc))
            if self.held is not None:  # now waiting for the broker: the rest stay behind it
                self.held.extend(held or ())
            else:
                self.held = held
                self._release_held()

        self._server.spawn(decide())

    async def _rpc(self, command: commands.Rpc) -> None:
        """``on_rpc``: its result in an ``ack``, a refusal or failure in an ``error``."""
        try:
            result = await self._server.hooks.call(self.user, command.method, command.data)
            reply = commands.ack_frame(command.req, result=result)
        except ProtocolError as exc:
            reply = commands.error_frame(command.req, exc)
        except Exception:  # a result that is not JSON
            logger.exception("answering an rpc command failed")
            reply = commands.error_frame(command.req, ProtocolError(
                "the application's on_rpc hook failed; retry", code="hook_unavailable"))
        finally:
            self.pending -= 1
        if not self.closed:
            self.write(reply)

    def _subscribed(self, channel: str, start: Start, req: commands.Req,
                    presence: bool = False) -> None:
        """The broker can read ``channel``: subscribe, then handle the commands held meanwhile."""
        try:
            if not self.closed:
                self._subscribe_now(channel, start, req, presence)
        except ProtocolError as exc:
            count_refusal(self._server.stats, exc)
            self.write(commands.error_frame(req, exc))
        self._release_held()

    def _refused(self, req: commands.Req, error: ProtocolError | BrokerError) -> None:
        if not self.closed:
            count_refusal(self._server.stats, error)
            self.write(commands.error_frame(req, _as_protocol_error(error)))
        self._release_held()

    def _release_held(self) -> None:
        held, self.held = self.held, None
        for index, text in enumerate(held or ()):
            if self.closed:
                return
            self._command(text)
            if self.held is not None:  # waiting again: keep the rest in order behind it
                self.held.extend((held or [])[index + 1:])
                return

    def _subscribe_now(self, channel: str, start: Start, req: commands.Req | None,
                       presence: bool = False) -> None:
        latest = self.latest_for is not None and channel in self.latest_for
        batch = self.follow({channel: start}, latest=latest)
        (begin,) = batch.begins.values()
        client = self.identity.client
        self.write(
            commands.subscribed_frame(channel, str(begin), client) if req is None
            else commands.ack_frame(req, channel=channel, next=str(begin), client=client))
        if presence:
            self.watch_presence([channel])
        self.catch_up()

    def _publish(self, command: commands.Publish) -> None:
        if len(command.data) > self._server.settings.max_message_size:
            raise ProtocolError(
                f"data is over the limit of {self._server.settings.max_message_size} bytes",
                code="payload_too_large",
            )
        self._server.admission.check_publish_rate(self.transport, self.credentials.rate_key,
                                                  self.client_address)
        self.pending += 1
        self._server.spawn(self._publish_and_ack(command))

    async def _publish_and_ack(self, command: commands.Publish) -> None:
        server = self._server
        try:
            data = command.data
            if server.hooks.publish is not None:
                data = await publish.decide(server, self.user, command.channel, data)
            message = await publish.store(server, command.channel, data,
                                          command.idempotency_key, "websocket")
        except (ProtocolError, BrokerError) as exc:
            count_refusal(server.stats, exc)
            reply = commands.error_frame(command.req, _as_protocol_error(exc))
        except Exception:
            logger.exception("publishing from a WebSocket failed")
            reply = commands.error_frame(command.req, ProtocolError(
                "the server failed to publish this message", code=INTERNAL_ERROR.code))
        else:
            if isinstance(message, Replayed):
                reply = commands.ack_frame(command.req, channel=message.channel, id=message.id,
                                           replayed=True)
            else:
                reply = commands.ack_frame(command.req, channel=message.channel, id=message.id)
        finally:
            self.pending -= 1
        if not self.closed:
            self.write(reply)

    # sending -----------------------------------------------------------------

    def subscribed(self, channel: str, begin: str) -> bytes:
        return commands.subscribed_frame(channel, begin, self.identity.client)

    def unsubscribed(self, channel: str) -> bytes:
        return commands.unsubscribed_frame(channel)

    def notice(self, status: dict[str, object]) -> None:
        self.write(commands.status_frame(status))

    def members(self, answer: dict[str, object]) -> bytes:
        return presence_wire.members_frame(answer)

    def presence_changed(self, channel: str, encoded: presence_wire.Encoded) -> None:
        if not self.closed:
            self.write(encoded.frame)

    def heartbeat(self, now: float) -> None:
        timeout = 2.5 * self._server.settings.heartbeat_interval
        if now - self.last_seen > timeout:
            self.close(IDLE_TIMEOUT.close_code, f"no answer to pings for {timeout:.0f} s")
        else:
            self.write(websocket.PING)

    def close_with(self, closing: Closing) -> None:
        self.close(closing.close_code, f"{closing.code}: {closing.message}")

    def token_expired(self) -> None:
        """An error frame the client can read, then close 4001 (an ``auth`` in time avoids it)."""
        if self.closed:
            return
        error = Unauthorized("the token has expired; reconnect with a new one and resume, or "
                             "send an auth command before it expires", code="token_expired")
        self.write(commands.error_frame(None, error))
        self.close(error.close_code, TOKEN_EXPIRED.code)

    def close(self, code: int, reason: str) -> None:
        """Send a close frame and close the connection."""
        if self.closed:
            return
        self.parser = None
        self.write(websocket.close_frame(code, reason))
        self._finish()


def _as_protocol_error(error: ProtocolError | BrokerError) -> ProtocolError:
    """What a command's error reply says (a broker failure keeps its code)."""
    if isinstance(error, ProtocolError):
        return error
    return ProtocolError(str(error), code=error.code)


def accept(server: Server, conn: HttpConnection, request: Request, channels: list[str],
           rest: bytes, credentials: Credentials = ANONYMOUS,
           identity: Identity | None = None, presence: bool = False,
           user: str | None = None, following: Following | None = None,
           starts: dict[str, Start] | None = None) -> None:
    """Upgrade ``conn`` to a WebSocket subscribed to ``channels`` from ``?since=``.

    A browser page from an origin not in ``cors_origins`` is refused (``403``)
    before the handshake: a WebSocket is not covered by CORS, and without the
    check any site could open one with its visitors' cookies. Clients that send
    no ``Origin`` (not browsers) are let in. Call it once the broker can read
    the channels (``Server.when_ready``). A read of its user's channels
    (server/subscriptions.py) gives their ``starts`` and what it follows.
    """
    origin = request.header("origin")
    if origin is not None and not server.cors.allows(origin):
        raise OriginNotAllowed(f"WebSocket connections from origin {origin[:200]!r} "
                               "are not allowed (cors_origins)")
    if starts is None:
        starts = parse_since(request.arg("since"), channels) if channels else {}
    for channel, start in starts.items():
        server.broker.read(channel, start, 0)  # a cursor ahead of the log: 400 before upgrading
    if conn.transport is None or conn.closing:
        return  # the client left while the broker was fetching
    compression = deflate.negotiate(request.header("sec-websocket-extensions")) if (
        server.settings.websocket_compression and conn.frames_websockets) else None
    response = handshake(conn, request, compression.header if compression else None)
    if response is None:
        return
    if identity is None:
        identity, _named = identify(request.arg("client"), credentials)
    session = WebSocketSession(server, conn.detach(), identity, latest=request.latest(),
                               compression=compression, delta=request.delta())
    session.credentials = credentials
    session.user = user if user is not None else (
        credentials.claims.sub if credentials.claims is not None else None)
    session.expires = credentials.expires
    if server.trusted_proxies:
        session.client_address = server.client_address(session.transport,
                                                        request.header("x-forwarded-for"))
    session.server_side = following
    session.start(response, starts, rest, presence)
    server.subscriptions.track(session)
