"""WebSocket: one connection per client, shared by its subscriptions.

A :class:`Link` is one WebSocket to ``/subscribe`` (no channel in the URL:
commands only). Subscriptions attach to it with ``subscribe`` commands and
detach with ``unsubscribe``; a reader task routes ``message`` and ``gap``
frames to the subscription that owns the channel and replies to the command
waiting for them. ``publish`` goes over the link too, acknowledged with the
new id. A subscription naming a channel another one already reads on the
shared link gets a private link (the server allows one subscription per
channel and connection).

Tokens: with a token function and a JWT, each link replaces its token before
it expires with an ``auth`` command on the open connection, at the time
:func:`tidings.client._token.refresh_delay` gives, and again from each new
token's ``exp``. If the function fails, or the server refuses the token or does
not answer in time, the link stops refreshing: the server closes it with 4001
at expiry and its subscriptions reconnect with a fresh token and resume.

Backpressure: each subscription's frames wait in its own queue; one that
falls more than ``ROUTE_LIMIT`` frames behind is detached and resumes from its
last id, like the server cuts a slow consumer, instead of holding up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tidings.client._cursors import ServerSideBook
from tidings.client._session import (
    RETRYABLE_CLOSE_CODES,
    Session,
    TechniqueFailed,
    Unavailable,
    unavailable,
    unavailable_reply,
)
from tidings.client._token import bearer, refresh_delay, token_expiry
from tidings.client.events import BrokerStatus
from tidings.errors import ConnectionFailed, RequestRefused
from tidings.server_api import refusal_of_status

if TYPE_CHECKING:
    from tidings.client._client import Client

#: Frames a subscription may have waiting before it is detached as too slow.
ROUTE_LIMIT = 10_000
logger = logging.getLogger("tidings.client")

#: The largest frame accepted from the server.
MAX_FRAME = 16 * 1024 * 1024


class _Lost:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Route:
    """The frames of one subscription's channels, in the order they came."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | _Lost] = asyncio.Queue()
        self.lost = False

    def put(self, item: dict[str, Any] | _Lost) -> None:
        if self.lost:
            return
        if isinstance(item, _Lost) or self.queue.qsize() >= ROUTE_LIMIT:
            self.lost = True
            if not isinstance(item, _Lost):
                item = _Lost(f"subscriber more than {ROUTE_LIMIT} frames behind")
        self.queue.put_nowait(item)


class Link:
    """One WebSocket and the subscriptions it carries. Open with :meth:`open`."""

    def __init__(self, ws: ClientConnection, client: Client, private: bool) -> None:
        self.ws = ws
        self.private = private
        self.routes: dict[str, Route] = {}
        self.closed_reason: str | None = None
        #: The close code the server sent, once closed (``None``: none came, or still open).
        self.close_code: int | None = None
        self._client = client
        #: Reading the user's channels: the route of every frame of a channel no
        #: subscription named, and of ``subscribed`` / ``unsubscribed`` frames.
        self.server_route: Route | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reqs = itertools.count(1)
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, client: Client, private: bool = False,
                   server_route: Route | None = None, since: str | None = None) -> Link:
        """Connect; raises what ``websockets`` raises (classified by the caller).

        With ``server_route``, a private link reading the user's channels, resumed from
        ``since`` (their multi-channel cursor)."""
        token = await client._tokens.get()
        query = {} if client.client_id is None else {"client": client.client_id}
        if since is not None:
            query["since"] = since
        named = f"?{urlencode(query)}" if query else ""
        ws = await ws_connect(
            client._ws_url("/subscribe" + named),
            open_timeout=client.connect_timeout,
            compression=None,
            max_size=MAX_FRAME,
            additional_headers={**client.headers, **bearer(token)},
        )
        link = cls(ws, client, private or server_route is not None)
        link.server_route = server_route
        client._spawn(link._read_frames())
        if token is not None and client._tokens.refreshable:
            link._refresher = client._spawn(link._keep_token_fresh(token))
        return link

    @property
    def is_open(self) -> bool:
        return self.closed_reason is None

    async def request(self, command: dict[str, Any]) -> dict[str, Any]:
        """Send a command and return its ``ack``.

        Raises :class:`RequestRefused` for an ``error`` reply and
        :class:`ConnectionFailed` if the link breaks or no reply comes in time.
        """
        if self.closed_reason is not None:
            raise ConnectionFailed(f"WebSocket closed: {self.closed_reason}")
        req = next(self._reqs)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req] = reply
        try:
            await self.ws.send(json.dumps({**command, "req": req}, allow_nan=False))
            async with asyncio.timeout(self._client.request_timeout):
                frame = await reply
        except ConnectionClosed as exc:
            raise ConnectionFailed(f"WebSocket closed: {_describe(exc)}") from None
        except TimeoutError:
            raise ConnectionFailed(f"no answer to {command['type']!r} in time") from None
        finally:
            self._pending.pop(req, None)
        if frame.get("type") == "error":
            raise RequestRefused(None, str(frame.get("error")), str(frame.get("message", "")))
        return frame

    async def aclose(self) -> None:
        self._stop_refreshing()
        await self.ws.close()

    def _stop_refreshing(self) -> None:
        if self._refresher is not None and self._refresher is not asyncio.current_task():
            self._refresher.cancel()

    async def _keep_token_fresh(self, token: str) -> None:
        """Replace the connection's token before each expiry, while the link is open.

        Returns when the token's expiry is unknown (opaque) or too close, or
        when a refresh fails: the server's 4001 close and a resume take over.
        The link cancels it when it closes.
        """
        tokens = self._client._tokens
        expires = token_expiry(token)
        while expires is not None:
            delay = refresh_delay(expires - time.time())
            if delay is None:
                return
            await asyncio.sleep(delay)
            try:
                new = await tokens.fresh(token)
            except Exception as exc:  # the application's function: anything may go wrong
                logger.warning("the token function failed (%r); the WebSocket will be "
                               "closed at the token's expiry and resume", exc)
                return
            if new == token:  # the function's cached token: ask again, nearer to expiry
                continue
            try:
                ack = await self.request({"type": "auth", "token": new})
            except (ConnectionFailed, RequestRefused) as exc:
                logger.warning("the server did not take the new token (%s); the WebSocket "
                               "will be closed at the old token's expiry and resume", exc)
                return
            token = new
            exp = ack.get("exp")  # the server's reading of the new token, else our own
            if isinstance(exp, int | float) and not isinstance(exp, bool):
                expires = float(exp)
            else:
                expires = token_expiry(new)

    async def _read_frames(self) -> None:
        reason = "closed"
        try:
            async for text in self.ws:
                frame = json.loads(text)
                if not isinstance(frame, dict):
                    raise ValueError("a frame that is not a JSON object")
                kind = frame.get("type")
                if kind in ("message", "gap", "presence", "join", "leave"):
                    named = self.routes.get(frame.get("channel"))  # type: ignore[arg-type]
                    route = named if named is not None else self.server_route
                    if route is not None:
                        route.put(frame)
                elif kind in ("subscribed", "unsubscribed"):
                    if self.server_route is not None:
                        self.server_route.put(frame)
                elif kind == "error" and frame.get("req") is None and (
                        frame.get("error") == "token_expired"):
                    self._client._tokens.invalidate()  # the server closes with 4001 next
                elif kind == "status":
                    self._client._status(BrokerStatus(
                        frame.get("broker") == "ok", str(frame.get("message", "")), "websocket"))
                elif kind in ("ack", "error"):
                    reply = self._pending.get(frame.get("req"))  # type: ignore[arg-type]
                    if reply is not None and not reply.done():
                        reply.set_result(frame)
            reason = _describe_close(self.ws)
        except ConnectionClosed as exc:
            reason = _describe(exc)
        except ValueError as exc:  # bad JSON: the server broke the protocol
            reason = f"invalid frame from the server: {exc}"
            await self.ws.close(1002, "invalid frame")
        finally:
            self.close_code = self.ws.close_code
            self.closed_reason = reason
            self._stop_refreshing()
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(ConnectionFailed(f"WebSocket closed: {reason}"))
            for route in self.routes.values():
                route.put(_Lost(reason))
            if self.server_route is not None:
                self.server_route.put(_Lost(reason))


def _describe_close(ws: ClientConnection) -> str:
    if ws.close_code is None:
        return "connection lost"
    return f"closed by the server ({ws.close_code} {ws.close_reason})".replace(" )", ")")


def _describe(exc: ConnectionClosed) -> str:
    if exc.rcvd is None:
        return "connection lost"
    return f"closed by the server ({exc.rcvd.code} {exc.rcvd.reason})".replace(" )", ")")


#: Put in a server-side route after the opening's announcements (see :func:`read_server_side`).
_OPENED: dict[str, Any] = {"type": "opened"}


async def read(session: Session) -> None:
    """Read the session's channels over a shared (or private) link until it breaks."""
    if session.server_side:
        await read_server_side(session)
        return
    client = session.client
    channels = session.channels
    link = await _open(session, lambda: client._acquire_link(channels))
    route = Route()
    for channel in channels:
        link.routes[channel] = route
    try:
        try:
            for channel in channels:
                command: dict[str, Any] = {"type": "subscribe", "channel": channel}
                command.update((name, True) for name, _ in session.options.params())
                since = session.book.since_of(channel)
                if since is not None:
                    command["since"] = since
                if session.presence is not None:
                    command["presence"] = True
                ack = await link.request(command)
                client._learn_client(ack.get("client"))
                session.learn(channel, ack.get("next"))
        except RequestRefused as exc:
            # "Not now" (the broker is away, the node shuts down): retried after a backoff,
            # from the book's cursor; anything else ends the subscription.
            raise unavailable_reply(exc) or exc from None
        except ConnectionFailed as exc:
            if not session.is_established and link.close_code in RETRYABLE_CLOSE_CODES:
                raise Unavailable(str(exc)) from None
            raise session.failure(str(exc)) from None
        await session.established()
        while True:
            item = await route.queue.get()
            if isinstance(item, _Lost):
                raise session.failure(item.reason)
            kind = item["type"]
            if kind == "message":
                await session.message(item)
            elif kind == "gap":
                await session.gap(item)
            elif kind == "presence":
                await session.presence_listed(item)
            else:
                await session.presence_changed(kind, item)
    finally:
        await _detach(client, link, channels, route)


async def _open(session: Session, open_link: Any) -> Link:
    """``await open_link()``, with its failures in the reconnect loop's terms."""
    try:
        link: Link = await open_link()
    except InvalidStatus as exc:
        response = exc.response
        busy = unavailable(response.status_code, response.body or b"")
        if busy is not None:
            raise busy from None
        refused = refusal_of_status(response.status_code, response.body or b"")
        if refused is not None:
            raise refused from None
        raise TechniqueFailed(f"WebSocket refused: HTTP {response.status_code}") from None
    except InvalidHandshake as exc:
        raise TechniqueFailed(f"WebSocket handshake failed: {exc}") from None
    return link


async def read_server_side(session: Session) -> None:
    """Read the user's channels over a link of their own, resumed from the book's cursor.

    The server announces every channel of the set (``subscribed``) as the
    connection opens, before it reads a command: so the answer to a first
    ``ping`` comes after them, and a channel of the book not announced by then
    was removed while the client was away.
    """
    client = session.client
    route = Route()
    link = await _open(session, lambda: Link.open(
        client, server_route=route, since=session.book.since()))
    try:
        try:
            await link.request({"type": "ping"})
        except ConnectionFailed as exc:
            if link.close_code in RETRYABLE_CLOSE_CODES:
                raise Unavailable(str(exc)) from None
            raise session.failure(str(exc)) from None
        route.put(_OPENED)
        announced: set[str] | None = set()
        await session.established()
        while True:
            item = await route.queue.get()
            if isinstance(item, _Lost):
                raise session.failure(item.reason)
            kind = item["type"]
            if kind == "subscribed":
                client._learn_client(item.get("client"))
                if announced is not None:
                    announced.add(str(item.get("channel")))
                await session.subscribed(item.get("channel"), item.get("next"))
            elif kind == "unsubscribed":
                await session.unsubscribed(item.get("channel"))
            elif item is _OPENED:
                if isinstance(session.book, ServerSideBook):
                    session.book.heard = True  # the set was named, even if empty
                for channel in session.channels:
                    if announced is not None and channel not in announced:
                        await session.unsubscribed(channel)
                announced = None
            elif kind == "message":
                await session.message(item)
            elif kind == "gap":
                await session.gap(item)
    finally:
        with contextlib.suppress(Exception):
            await link.aclose()


async def _detach(client: Client, link: Link, channels: tuple[str, ...], route: Route) -> None:
    """Stop routing ``channels``; unsubscribe them if the link is still open."""
    for channel in channels:
        if link.routes.get(channel) is route:
            del link.routes[channel]
    if link.private or client.closed:
        with contextlib.suppress(Exception):
            await link.aclose()
        return
    if link.is_open:
        try:
            for channel in channels:
                await link.request({"type": "unsubscribe", "channel": channel})
        except (ConnectionFailed, RequestRefused):
            # The server no longer agrees on what this link carries: start afresh.
            await link.aclose()
