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
from tidings.core.cursor import Start, parse_since
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
from tidings.server.request import Request
from tidings.server.stream import Stream
from tidings.wire import commands, http, websocket
from tidings.wire.websocket import FrameParser

if TYPE_CHECKING:
    from tidings.server.app import Server
    from tidings.server.connection import HttpConnection

logger = logging.getLogger("tidings.server")

#: Bytes a command may take beyond the message size limit (the envelope).
COMMAND_OVERHEAD = 4096

#: Commands a client may send while one of its subscriptions waits for the broker.
MAX_HELD_COMMANDS = 1000

#: Headers of a refused handshake that the JSON error answer sets itself.
_HEADERS_REPLACED = frozenset({"connection", "content-length", "content-type", "date"})


def handshake(conn: HttpConnection, request: Request) -> bytes | None:
    """Check the upgrade request; send the answer; return ``None`` if it was refused."""
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
    return response.serialize()


class WebSocketSession(Stream):
    """An open WebSocket: a reader of its subscriptions, and the commands the client sends."""

    __slots__ = ("credentials", "held", "last_seen", "parser", "pending", "user")

    def __init__(self, server: Server, transport: asyncio.Transport) -> None:
        super().__init__(server, transport, commands.FRAMES)
        self.parser: FrameParser | None = FrameParser(
            server.settings.max_message_size + COMMAND_OVERHEAD
        )
        self.last_seen = server.loop.time()
        #: Publish commands still waiting for the broker.
        self.pending = 0
        #: Who the client is (server/auth.py); an ``auth`` command replaces it.
        self.credentials = ANONYMOUS
        #: Commands received while a subscription waits for the broker, handled after it.
        self.held: list[str] | None = None
        #: Who ``on_connect`` said the client is (server/hooks.py), for the other hooks.
        self.user: str | None = None

    def start(self, response: bytes, starts: dict[str, Start], rest: bytes) -> None:
        self.transport.write(response)
        self._server.registry.add_stream(self)
        for channel, start in starts.items():
            self._subscribe_now(channel, start, None)
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
            self.transport.write(websocket.frame(websocket.OP_PONG, event.payload))
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
            self.transport.write(commands.error_frame(exc.req, exc.error))
            return
        try:
            if isinstance(command, commands.Subscribe):
                self._server.auth.check_subscribe([command.channel], self.credentials)
                start = parse_since(command.since, [command.channel])[command.channel]
                if self._server.hooks.subscribe is not None:
                    self._subscribe_after_hook(command.channel, start, command.req)
                else:
                    self._subscribe(command.channel, start, command.req)
            elif isinstance(command, commands.Unsubscribe):
                self.unfollow(command.channel)
                self.transport.write(commands.ack_frame(command.req, channel=command.channel))
            elif isinstance(command, commands.Publish):
                self._server.auth.check_publish(command.channel, self.credentials)
                self._publish(command)
            elif isinstance(command, commands.AuthCommand):
                self._authenticate(command)
            elif isinstance(command, commands.Rpc):
                self._server.admission.check_publish_rate(self.transport,
                                                          self.credentials.rate_key)
                self.pending += 1
                self._server.spawn(self._rpc(command))
            else:
                self.transport.write(commands.ack_frame(command.req))
        except ProtocolError as exc:
            self.transport.write(commands.error_frame(command.req, exc))

    def _authenticate(self, command: commands.AuthCommand) -> None:
        """Replace the connection's token; the new one must still grant every subscription."""
        auth = self._server.auth
        credentials = auth.verify(command.token)
        auth.check_subscribe(self.reader.channels, credentials)
        self.credentials = credentials
        self.expires = credentials.expires
        claims = credentials.claims
        self.transport.write(commands.ack_frame(
            command.req, sub=claims.sub if claims else None,
            exp=claims.expires if claims else None))

    def _subscribe(self, channel: str, start: Start, req: commands.Req) -> None:
        if self.reader.reads(channel):
            raise BadRequest(f"already subscribed to {channel!r}", code="already_subscribed")
        limit = self._server.settings.max_channels_per_subscription
        if len(self.reader.channels) >= limit:
            raise BadRequest(f"at most {limit} subscriptions per connection",
                             code="too_many_subscriptions")
        starts = {channel: start}
        if not self._server.broker.ready(starts):
            self.held = []  # commands that follow wait for this one, in order
        self._server.when_ready(starts, lambda: self._subscribed(channel, start, req),
                                lambda error: self._refused(req, error))

    def _subscribe_after_hook(self, channel: str, start: Start, req: commands.Req) -> None:
        """Ask ``on_subscribe`` first; the commands that follow wait for it, in order."""
        self.held = []

        async def decide() -> None:
            try:
                await self._server.hooks.check_subscribe(self.user, (channel,))
            except ProtocolError as exc:
                if not self.closed:
                    self.transport.write(commands.error_frame(req, exc))
                self._release_held()
                return
            held, self.held = self.held, None
            if self.closed:
                return
            try:
                self._subscribe(channel, start, req)
            except ProtocolError as exc:
                self.transport.write(commands.error_frame(req, exc))
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
            self.transport.write(reply)

    def _subscribed(self, channel: str, start: Start, req: commands.Req) -> None:
        """The broker can read ``channel``: subscribe, then handle the commands held meanwhile."""
        try:
            if not self.closed:
                self._subscribe_now(channel, start, req)
        except ProtocolError as exc:
            self.transport.write(commands.error_frame(req, exc))
        self._release_held()

    def _refused(self, req: commands.Req, error: ProtocolError | BrokerError) -> None:
        if not self.closed:
            self.transport.write(commands.error_frame(req, _as_protocol_error(error)))
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

    def _subscribe_now(self, channel: str, start: Start, req: commands.Req | None) -> None:
        batch = self.follow({channel: start})
        (begin,) = batch.begins.values()
        self.transport.write(
            commands.subscribed_frame(channel, str(begin)) if req is None
            else commands.ack_frame(req, channel=channel, next=str(begin)))
        self.catch_up()

    def _publish(self, command: commands.Publish) -> None:
        if len(command.data) > self._server.settings.max_message_size:
            raise ProtocolError(
                f"data is over the limit of {self._server.settings.max_message_size} bytes",
                code="payload_too_large",
            )
        self._server.admission.check_publish_rate(self.transport, self.credentials.rate_key)
        self.pending += 1
        self._server.spawn(self._publish_and_ack(command))

    async def _publish_and_ack(self, command: commands.Publish) -> None:
        try:
            data = command.data
            if self._server.hooks.publish is not None:
                data = await publish.decide(self._server, self.user, command.channel, data)
            message = await self._server.broker.publish(
                command.channel, data, idempotency_key=command.idempotency_key)
        except (ProtocolError, BrokerError) as exc:
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
                self._server.stats["published"] += 1
                reply = commands.ack_frame(command.req, channel=message.channel, id=message.id)
        finally:
            self.pending -= 1
        if not self.closed:
            self.transport.write(reply)

    # sending -----------------------------------------------------------------

    def notice(self, status: dict[str, object]) -> None:
        self.transport.write(commands.status_frame(status))

    def heartbeat(self, now: float) -> None:
        timeout = 2.5 * self._server.settings.heartbeat_interval
        if now - self.last_seen > timeout:
            self.close(IDLE_TIMEOUT.close_code, f"no answer to pings for {timeout:.0f} s")
        else:
            self.transport.write(websocket.PING)

    def close_with(self, closing: Closing) -> None:
        self.close(closing.close_code, f"{closing.code}: {closing.message}")

    def token_expired(self) -> None:
        """An error frame the client can read, then close 4001 (an ``auth`` in time avoids it)."""
        if self.closed:
            return
        error = Unauthorized("the token has expired; reconnect with a new one and resume, or "
                             "send an auth command before it expires", code="token_expired")
        self.transport.write(commands.error_frame(None, error))
        self.close(error.close_code, TOKEN_EXPIRED.code)

    def close(self, code: int, reason: str) -> None:
        """Send a close frame and close the connection."""
        if self.closed:
            return
        self.parser = None
        self.transport.write(websocket.close_frame(code, reason))
        self._finish()


def _as_protocol_error(error: ProtocolError | BrokerError) -> ProtocolError:
    """What a command's error reply says (a broker failure keeps its code)."""
    if isinstance(error, ProtocolError):
        return error
    return ProtocolError(str(error), code=error.code)


def accept(server: Server, conn: HttpConnection, request: Request, channels: list[str],
           rest: bytes, credentials: Credentials = ANONYMOUS, user: str | None = None) -> None:
    """Upgrade ``conn`` to a WebSocket subscribed to ``channels`` from ``?since=``.

    A browser page from an origin not in ``cors_origins`` is refused (``403``)
    before the handshake: a WebSocket is not covered by CORS, and without the
    check any site could open one with its visitors' cookies. Clients that send
    no ``Origin`` (not browsers) are let in. Call it once the broker can read
    the channels (``Server.when_ready``).
    """
    origin = request.header("origin")
    if origin is not None and not server.cors.allows(origin):
        raise OriginNotAllowed(f"WebSocket connections from origin {origin[:200]!r} "
                               "are not allowed (cors_origins)")
    starts = parse_since(request.arg("since"), channels) if channels else {}
    for channel, start in starts.items():
        server.broker.read(channel, start, 0)  # a cursor ahead of the log: 400 before upgrading
    if conn.transport is None or conn.closing:
        return  # the client left while the broker was fetching
    response = handshake(conn, request)
    if response is None:
        return
    session = WebSocketSession(server, conn.detach())
    session.credentials = credentials
    session.user = user if user is not None else (
        credentials.claims.sub if credentials.claims is not None else None)
    session.expires = credentials.expires
    session.start(response, starts, rest)
