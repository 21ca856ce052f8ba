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

from tidings.core.cursor import Start, parse_since
from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.errors import (
    BadRequest,
    BrokerError,
    OriginNotAllowed,
    ProtocolError,
    TidingsError,
    Unauthorized,
)
from tidings.server.auth import ANONYMOUS, Credentials
from tidings.server.reading import read_all
from tidings.server.request import Request
from tidings.server.stream import Stream
from tidings.wire import commands, http, websocket
from tidings.wire.websocket import FrameError, FrameParser

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
    """An open WebSocket with its subscriptions."""

    __slots__ = ("credentials", "held", "last_seen", "parser", "pending")

    def __init__(self, server: Server, transport: asyncio.Transport) -> None:
        super().__init__(server, transport)
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

    def start(self, response: bytes, starts: dict[str, Start], rest: bytes) -> None:
        self.transport.write(response)
        self.server.streams.add(self)
        for channel, start in starts.items():
            self._subscribe(channel, start, None)
        if rest:
            self.data_received(rest)

    # receiving ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.closed:
            return
        self.last_seen = self.server.loop.time()
        try:
            events = parser.feed(data)
        except FrameError as exc:
            self.close(exc.code, exc.reason)
            return
        for event in events:
            if self.closed:
                return
            if isinstance(event, websocket.TextMessage):
                self._command(event.text)
            elif isinstance(event, websocket.Ping):
                self.transport.write(websocket.frame(websocket.OP_PONG, event.payload))
            elif isinstance(event, websocket.CloseReceived):
                # Echo the close (RFC 6455 section 5.5.1), then close the TCP connection.
                self.close(event.code or websocket.CLOSE_NORMAL, "")
            elif isinstance(event, websocket.BinaryMessage):
                self.close(websocket.CLOSE_UNSUPPORTED_DATA, "commands are JSON text frames")
            # Pong: last_seen is all it is for.

    def eof_received(self) -> bool | None:
        return None

    def _command(self, text: str) -> None:
        if self.held is not None:  # a subscription is waiting for the broker: keep order
            if len(self.held) >= MAX_HELD_COMMANDS:
                self.close(websocket.CLOSE_POLICY,
                           f"more than {MAX_HELD_COMMANDS} commands while a subscription waits")
            else:
                self.held.append(text)
            return
        try:
            command = commands.parse(text)
        except commands.CommandError as exc:
            self.transport.write(commands.error_frame(exc.req, exc.error))
            return
        try:
            if isinstance(command, commands.Subscribe):
                self.server.auth.check_subscribe([command.channel], self.credentials)
                start = parse_since(command.since, [command.channel])[command.channel]
                self._subscribe(command.channel, start, command.req)
            elif isinstance(command, commands.Unsubscribe):
                self.unsubscribe(command.channel)
                self.transport.write(commands.ack_frame(command.req, channel=command.channel))
            elif isinstance(command, commands.Publish):
                self.server.auth.check_publish(command.channel, self.credentials)
                self._publish(command)
            elif isinstance(command, commands.AuthCommand):
                self._authenticate(command)
            else:
                self.transport.write(commands.ack_frame(command.req))
        except ProtocolError as exc:
            self.transport.write(commands.error_frame(command.req, exc))

    def _authenticate(self, command: commands.AuthCommand) -> None:
        """Replace the connection's token; the new one must still grant every subscription."""
        auth = self.server.auth
        credentials = auth.verify(command.token)
        auth.check_subscribe(list(self.channels), credentials)
        self.credentials = credentials
        self.expires = credentials.expires
        claims = credentials.claims
        self.transport.write(commands.ack_frame(
            command.req, sub=claims.sub if claims else None,
            exp=claims.expires if claims else None))

    def _subscribe(self, channel: str, start: Start, req: commands.Req | None) -> None:
        if channel in self.channels:
            raise BadRequest(f"already subscribed to {channel!r}", code="already_subscribed")
        if len(self.channels) >= self.server.settings.max_channels_per_subscription:
            raise BadRequest(
                f"at most {self.server.settings.max_channels_per_subscription} subscriptions "
                "per connection",
                code="too_many_subscriptions",
            )
        if not self.server.broker.ready({channel: start}):
            self.held = []
            self.server.spawn(self._subscribe_when_ready(channel, start, req))
            return
        self._subscribe_now(channel, start, req)

    async def _subscribe_when_ready(self, channel: str, start: Start,
                                    req: commands.Req | None) -> None:
        """Fetch the channel from the broker, subscribe, then handle the commands held meanwhile."""
        try:
            await self.server.prepare({channel: start})
            if not self.closed:
                self._subscribe_now(channel, start, req)
        except BrokerError as exc:
            error = ProtocolError(str(exc), code=exc.code)
            if not self.closed:
                self.transport.write(commands.error_frame(req, error))
        except ProtocolError as exc:
            if not self.closed:
                self.transport.write(commands.error_frame(req, exc))
        held, self.held = self.held or [], None
        for index, text in enumerate(held):
            if self.closed:
                return
            self._command(text)
            if self.held is not None:  # waiting again: keep the rest in order behind it
                self.held.extend(held[index + 1:])
                return

    def _subscribe_now(self, channel: str, start: Start, req: commands.Req | None) -> None:
        batch = read_all(self.server.broker, channel, start)
        (begin,) = batch.begins.values()
        out = [commands.subscribed_frame(channel, str(begin)) if req is None
               else commands.ack_frame(req, channel=channel, next=str(begin))]
        out.extend(commands.gap_frame(gap.to_json()) for gap in batch.gaps)
        out.extend(websocket.message_frame(m) for m in batch.messages)
        self.write_backlog(b"".join(out))
        self.subscribe(channel)

    def _publish(self, command: commands.Publish) -> None:
        if len(command.data) > self.server.settings.max_message_size:
            raise ProtocolError(
                f"data is over the limit of {self.server.settings.max_message_size} bytes",
                code="payload_too_large",
            )
        self.server.check_publish_rate(self.transport, self.credentials.rate_key)
        self.pending += 1
        self.server.spawn(self._publish_and_ack(command))

    async def _publish_and_ack(self, command: commands.Publish) -> None:
        try:
            message = await self.server.broker.publish(command.channel, command.data)
        except TidingsError as exc:
            reply = commands.error_frame(
                command.req, ProtocolError(str(exc), code=getattr(exc, "code", "error"))
            )
        else:
            reply = commands.ack_frame(command.req, channel=message.channel, id=message.id)
        finally:
            self.pending -= 1
        if not self.closed:
            self.transport.write(reply)

    # sending -----------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        self.transport.write(message.wire_ws or websocket.message_frame(message))

    def skip(self, gap: Gap) -> None:
        self.transport.write(commands.gap_frame(gap.to_json()))

    def notice(self, status: dict[str, object]) -> None:
        self.transport.write(commands.status_frame(status))

    def heartbeat(self, now: float) -> None:
        timeout = 2.5 * self.server.settings.heartbeat_interval
        if now - self.last_seen > timeout:
            self.close(websocket.CLOSE_IDLE_TIMEOUT, f"no answer to pings for {timeout:.0f} s")
        else:
            self.transport.write(websocket.PING)

    def close_with(self, code: str, reason: str) -> None:
        close_code = websocket.CLOSE_SLOW_CONSUMER if code == "slow_consumer" else (
            websocket.CLOSE_GOING_AWAY)
        self.close(close_code, f"{code}: {reason}")

    def token_expired(self) -> None:
        """An error frame the client can read, then close 4001 (an ``auth`` in time avoids it)."""
        if self.closed:
            return
        error = Unauthorized("the token has expired; reconnect with a new one and resume, or "
                             "send an auth command before it expires", code="token_expired")
        self.transport.write(commands.error_frame(None, error))
        self.close(error.close_code, "token_expired")

    def close(self, code: int, reason: str) -> None:
        """Send a close frame and close the connection."""
        if self.closed:
            return
        self.parser = None
        self.transport.write(websocket.close_frame(code, reason))
        self._finish()


def accept(server: Server, conn: HttpConnection, request: Request, channels: list[str],
           rest: bytes, credentials: Credentials = ANONYMOUS) -> None:
    """Upgrade ``conn`` to a WebSocket subscribed to ``channels`` from ``?since=``.

    A browser page from an origin not in ``cors_origins`` is refused (``403``)
    before the handshake: a WebSocket is not covered by CORS, and without the
    check any site could open one with its visitors' cookies. Clients that send
    no ``Origin`` (not browsers) are let in.
    """
    origin = request.header("origin")
    if origin is not None and not server.cors.allows(origin):
        raise OriginNotAllowed(f"WebSocket connections from origin {origin[:200]!r} "
                               "are not allowed (cors_origins)")
    starts = parse_since(request.arg("since"), channels) if channels else {}
    if server.broker.ready(starts):
        _upgrade(server, conn, request, starts, rest, credentials)
    else:
        conn.park()
        server.spawn(_upgrade_when_ready(server, conn, request, starts, rest, credentials))


async def _upgrade_when_ready(server: Server, conn: HttpConnection, request: Request,
                              starts: dict[str, Start], rest: bytes,
                              credentials: Credentials) -> None:
    """:func:`_upgrade` once the broker has fetched the channels (a shared store)."""
    try:
        await server.prepare(starts)
        _upgrade(server, conn, request, starts, rest, credentials)
    except (ProtocolError, BrokerError) as exc:
        cors = server.cors.headers(request.headers)
        conn.respond(http.error_response(exc, cors, keep_alive=False), keep_alive=False)


def _upgrade(server: Server, conn: HttpConnection, request: Request, starts: dict[str, Start],
             rest: bytes, credentials: Credentials) -> None:
    for channel, start in starts.items():
        server.broker.read(channel, start, 0)  # a cursor ahead of the log: 400 before upgrading
    if conn.transport is None or conn.closing:
        return  # the client left while the broker was fetching
    response = handshake(conn, request)
    if response is None:
        return
    session = WebSocketSession(server, conn.detach())
    session.credentials = credentials
    session.expires = credentials.expires
    session.start(response, starts, rest)
