"""The asyncio client: subscriptions that reconnect by themselves, and publishing.

Each :class:`Subscription` is driven by one task the :class:`Client` owns.
The task runs the reconnect loop: pick a technique, read with it
(:mod:`tidings.client.websocket`, ``sse``, ``longpoll``, ``poll``), feed what
comes through the subscription's :class:`~tidings.client._cursors.CursorBook`
into a bounded queue, and on failure back off and resume from the book.
``async for`` reads the queue. A consumer that stops reading fills the queue,
the task stops reading the network, and the server's slow-consumer policy (or
the shared WebSocket's, see :mod:`tidings.client.websocket`) cuts the
connection; the subscription then resumes from its last delivered id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Final, Generic, Literal, TypeVar, overload

import httpx
from websockets.exceptions import InvalidHandshake, InvalidStatus

from tidings.backoff import Backoff
from tidings.client import longpoll, poll, sse, websocket
from tidings.client._common import checked_channel, encode_data, publish_headers, published_id
from tidings.client._cursors import BrokenStream, CursorBook, OutOfOrder, ServerSideBook
from tidings.client._presence import (
    PresenceBook,
    PresenceItem,
    checked_client_id,
    presence_of,
)
from tidings.client._session import (
    Dropped,
    ReadOptions,
    Session,
    TechniqueFailed,
    Unavailable,
    Unreachable,
)
from tidings.client._token import BearerAuth, TokenGetter, TokenSource
from tidings.client.events import (
    Connected,
    Disconnected,
    Gap,
    Message,
    Presence,
    StatusEvent,
    Subscribed,
    TransportChanged,
    Unsubscribed,
)
from tidings.client.history import History, parse_history
from tidings.errors import ClientClosed, ConnectionFailed, RequestRefused, UsageError
from tidings.server_api import base_urls, refusal_of_status, refused

logger = logging.getLogger("tidings.client")

#: What a subscription yields: :class:`Message` and :class:`Gap`, and with ``presence=True``
#: :class:`Presence`, :class:`Join` and :class:`Leave` too.
Item = TypeVar("Item", Message | Gap, Message | Gap | PresenceItem,
               Message | Gap | Subscribed | Unsubscribed)

#: The techniques ``"auto"`` tries, best first.
AUTO_ORDER: Final = ("websocket", "sse", "longpoll", "poll")
TRANSPORTS: Final = ("auto", *AUTO_ORDER)

_READERS: Final[Mapping[str, Callable[[Session], Awaitable[None]]]] = {
    "websocket": websocket.read,
    "sse": sse.read,
    "longpoll": longpoll.read,
    "poll": poll.read,
}


def connect(url: str, transport: str = "auto", **options: Any) -> Client:
    """A :class:`Client` for the server at ``url``; use it as ``async with``.

    ``transport`` is ``"auto"`` (WebSocket, then SSE, long poll, poll),
    ``"websocket"``, ``"sse"``, ``"longpoll"`` or ``"poll"``. ``options`` are
    the keyword arguments of :class:`Client`. Raises :class:`UsageError` for a
    bad URL or option at once; nothing is connected until you subscribe or
    publish.
    """
    return Client(url, transport, **options)


class Client:
    """Subscribe to and publish on one tidings server.

    Settings (keyword arguments, all optional):

    * ``backoff`` — :class:`Backoff` (``initial=0.1``, ``maximum=30``,
      ``factor=2``): reconnection delays, with full jitter;
    * ``connect_timeout`` (5 s) — how long a technique may take to start
      working before ``auto`` tries the next one;
    * ``request_timeout`` (10 s) — publishing and WebSocket commands;
    * ``poll_interval`` (1 s) — seconds between polls with ``"poll"``;
    * ``longpoll_wait`` (25 s) — how long the server may hold a long poll;
    * ``idle_timeout`` (60 s) — an event stream silent for that long (not even
      a heartbeat) is dead;
    * ``upgrade_after`` (300 s) — ``auto`` on a fallback tries the better
      techniques again after that long;
    * ``buffer`` (1000) — messages read ahead of the consumer per subscription;
    * ``headers`` — extra HTTP headers on every request;
    * ``token`` — a token string, or a function (plain or async) returning
      one, sent as ``Authorization: Bearer``. With a function, a token the
      server refuses as expired is replaced by a fresh one and the
      subscription resumes from its cursor, nothing lost (docs/security.md);
    * ``on_status`` — called with :class:`Connected`, :class:`Disconnected`
      and :class:`TransportChanged` events (it must not block);
    * ``client_id`` — this client's id in presence (1 to 64 of
      ``A-Z a-z 0-9 _ -``); by default the first id the server assigns,
      kept in :attr:`client_id` and sent back as ``?client=`` on every
      technique, so that reconnects and technique switches stay one member.
    """

    def __init__(
        self,
        url: str,
        transport: str = "auto",
        *,
        backoff: Backoff | None = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        poll_interval: float = 1.0,
        longpoll_wait: float = 25.0,
        idle_timeout: float = 60.0,
        upgrade_after: float = 300.0,
        buffer: int = 1000,
        headers: Mapping[str, str] | None = None,
        token: str | TokenGetter | None = None,
        on_status: Callable[[StatusEvent], object] | None = None,
        client_id: str | None = None,
    ) -> None:
        self._base, self._ws_base = base_urls(url)
        if transport not in TRANSPORTS:
            raise UsageError(f"transport must be one of {', '.join(TRANSPORTS)}; not {transport!r}")
        for name, value in [("connect_timeout", connect_timeout),
                            ("request_timeout", request_timeout),
                            ("poll_interval", poll_interval), ("idle_timeout", idle_timeout),
                            ("upgrade_after", upgrade_after)]:
            if not value > 0:
                raise UsageError(f"{name} must be positive, not {value!r}")
        if longpoll_wait < 0 or buffer < 1:
            raise UsageError("longpoll_wait must be >= 0 and buffer >= 1")
        self.url = self._base
        self.transport = transport
        self.backoff = backoff or Backoff()
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self.longpoll_wait = longpoll_wait
        self.idle_timeout = idle_timeout
        self.upgrade_after = upgrade_after
        self.buffer = buffer
        self.headers = dict(headers or {})
        self.on_status = on_status
        #: This client's id in presence: the one chosen, or the first the server assigned.
        self.client_id = checked_client_id(client_id)
        self.closed = False
        self._order: tuple[str, ...] = AUTO_ORDER if transport == "auto" else (transport,)
        self._tokens = TokenSource(token)
        self._http = httpx.AsyncClient(
            headers=self.headers,
            auth=BearerAuth(self._tokens) if token is not None else None,
            timeout=httpx.Timeout(request_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscriptions: set[Subscription[Any]] = set()
        self._link: websocket.Link | None = None
        self._link_lock = asyncio.Lock()

    # lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Client:
        self._check_open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End every subscription and close every connection. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for subscription in list(self._subscriptions):
            subscription._stop(ClientClosed("the client was closed"))
        if self._link is not None:
            await self._link.aclose()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    def _check_open(self) -> None:
        if self.closed:
            raise ClientClosed("the client is closed; open a new one with tidings.connect()")

    # subscribing -------------------------------------------------------------

    @overload
    def subscribe(self, *channels: str, since: str | None = None, on_gap: str = "deliver",
                  delta: bool = False, latest: bool = False,
                  presence: Literal[False] = False) -> Subscription[Message | Gap]: ...

    @overload
    def subscribe(self, *channels: str, since: str | None = None, on_gap: str = "deliver",
                  delta: bool = False, latest: bool = False,
                  presence: Literal[True]) -> Subscription[Message | Gap | PresenceItem]: ...

    def subscribe(self, *channels: str, since: str | None = None,
                  on_gap: str = "deliver", delta: bool = False, latest: bool = False,
                  presence: bool = False) -> Subscription[Any]:
        """Read ``channels`` from ``since``; iterate the result with ``async for``.

        ``since`` is ``None`` (messages published from now on), ``"0"`` (from
        the oldest message the server keeps), a message id (one channel), or a
        multi-channel cursor such as :attr:`Subscription.cursor`. It yields
        :class:`Message` and :class:`Gap` objects; with ``on_gap="raise"`` a
        gap raises :class:`tidings.MissedMessages` instead and ends it. With
        ``presence=True`` it yields :class:`Presence`, :class:`Join` and
        :class:`Leave` items too, in order with the messages (every channel's
        namespace must have presence: else iterating raises
        :class:`tidings.RequestRefused` ``presence_disabled``).

        ``delta=True`` asks the server for deltas (``?delta=1``): fewer bytes,
        and the same whole messages here, applied as they come. ``latest=True``
        (``?latest=1``) asks for the newest message of each channel only, the
        skipped ones counted in a ``latest`` gap (docs/protocol.md).
        """
        self._check_open()
        if on_gap not in ("deliver", "raise"):
            raise UsageError(f"on_gap must be 'deliver' or 'raise', not {on_gap!r}")
        for channel in channels:
            checked_channel(channel)
        book = CursorBook(channels, since)
        subscription: Subscription[Any] = Subscription(
            self, book, on_gap, PresenceBook(book.channels) if presence else None)
        subscription._options = ReadOptions(delta=delta, latest=latest)
        self._subscriptions.add(subscription)
        return subscription

    def subscribe_server_side(self, *, since: str | None = None, on_gap: str = "deliver",
                              delta: bool = False, latest: bool = False,
                              ) -> Subscription[Message | Gap | Subscribed | Unsubscribed]:
        """Read the channels the server reads for this client's user (docs/protocol.md,
        "A user's channels"): ``GET /subscribe`` without ``channel``, on every technique.

        It yields :class:`Subscribed` when the server starts reading a channel for
        the user (each one at the first connection: ``on_connect``'s, the token's
        ``channels.read``, the user's set; then each one the application adds),
        :class:`Unsubscribed` when it stops (removed while reading, or while
        away), and the channels' :class:`Message` and :class:`Gap` items. Their
        positions are in :attr:`Subscription.cursor` (always ``a=ID,b=ID``):
        a reconnection or a technique switch resumes each exactly, and so does
        ``since=`` a cursor saved earlier. ``on_gap``, ``delta`` and ``latest``
        as in :meth:`subscribe`. The server must know the user (``on_connect``
        or a token's ``sub``): else iterating raises :class:`RequestRefused`
        ``no_channel`` (over HTTP; a WebSocket just reads nothing).
        """
        self._check_open()
        if on_gap not in ("deliver", "raise"):
            raise UsageError(f"on_gap must be 'deliver' or 'raise', not {on_gap!r}")
        subscription: Subscription[Any] = Subscription(self, ServerSideBook(since), on_gap)
        subscription._options = ReadOptions(delta=delta, latest=latest)
        self._subscriptions.add(subscription)
        return subscription

    # rpc ---------------------------------------------------------------------

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Call the application's ``on_rpc`` hook with ``method`` and ``data`` (any JSON
        value) over the WebSocket; return its result.

        The client's shared WebSocket carries it (opened now if it has none, whatever
        ``transport`` reads with). Raises :class:`RequestRefused` with the code the
        hook refused with (``forbidden`` by default), ``no_rpc`` if the server has no
        hook, ``hook_unavailable`` (retry); :class:`ConnectionFailed` if no WebSocket
        can be opened or no answer comes within ``request_timeout``.
        """
        self._check_open()
        if not isinstance(method, str) or not 1 <= len(method) <= 128:
            raise UsageError(f"method must be a string of 1 to 128 characters, not {method!r}")
        encode_data(data)  # a JSON value, or UsageError now
        link = await self._open_shared_link()
        command: dict[str, Any] = {"type": "rpc", "method": method}
        if data is not None:
            command["data"] = data
        ack = await link.request(command)
        return ack.get("result")

    async def _open_shared_link(self) -> websocket.Link:
        """The shared link, opened if need be; failures as :class:`RequestRefused` or
        :class:`ConnectionFailed`."""
        try:
            return await self._shared_link()
        except InvalidStatus as exc:
            status = exc.response.status_code
            refused = refusal_of_status(status, exc.response.body or b"")
            raise refused or ConnectionFailed(f"WebSocket refused: HTTP {status}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise ConnectionFailed(f"cannot open a WebSocket to {self._ws_base}: "
                                   f"{_explain(exc)}") from None

    # publishing --------------------------------------------------------------

    async def publish(self, channel: str, data: Any, *,
                      idempotency_key: str | None = None) -> str:
        """Publish ``data`` (any JSON value) on ``channel``; return the message id.

        Goes over the WebSocket when the client reads with one, else HTTP
        ``POST``. Raises :class:`ConnectionFailed` at once if the server cannot
        be reached (no retry: a publish that broke may have been accepted) and
        :class:`RequestRefused` with the server's explanation if it refuses.
        With an ``idempotency_key``, a retry with the same key is safe: the
        server stores the message once and answers the first id.
        """
        self._check_open()
        checked_channel(channel)
        body = encode_data(data)
        headers = publish_headers(idempotency_key)
        link = self._link
        if self.transport == "websocket" or (link is not None and link.is_open):
            return await self._publish_ws(channel, data, headers.get("Idempotency-Key"))
        try:
            response = await self._http.post(
                self._url(f"/channels/{channel}"), content=body, headers=headers)
            if response.status_code == 401 and self._tokens.refreshable and (
                    refused(response).code == "token_expired"):
                self._tokens.invalidate()  # once, with a fresh token
                response = await self._http.post(
                    self._url(f"/channels/{channel}"), content=body, headers=headers)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot publish to {self._base}: {_explain(exc)}") from None
        return published_id(response)

    # presence ----------------------------------------------------------------

    async def presence(self, channel: str, *, count_only: bool = False) -> Presence:
        """Who is on ``channel`` now (docs/protocol.md, "Presence").

        Over the WebSocket when this client reads with one, else
        ``GET /channels/{channel}/presence``. With ``count_only``, only
        :attr:`Presence.count` and :attr:`Presence.users` (for large channels).
        Raises :class:`RequestRefused` (``presence_disabled`` when the channel's
        namespace has no presence, ``forbidden``) or :class:`ConnectionFailed`.
        """
        self._check_open()
        checked_channel(channel)
        link = self._link
        if link is not None and link.is_open:
            command: dict[str, Any] = {"type": "presence", "channel": channel}
            if count_only:
                command["count"] = True
            return _presence_answer(channel, await link.request(command))
        answer = await self._get_json(f"/channels/{channel}/presence",
                                      {"count": ""} if count_only else None,
                                      f"ask {self._base} who is on {channel}")
        return _presence_answer(channel, answer)

    def _learn_client(self, client_id: object) -> None:
        """The server told a reader its client id: kept, and sent back, from now on."""
        if self.client_id is None and isinstance(client_id, str) and client_id:
            try:
                self.client_id = checked_client_id(client_id)
            except UsageError:
                logger.warning("the server told a malformed client id %r", client_id[:100])

    # history -----------------------------------------------------------------

    async def history(self, channel: str, *, before: str | None = None,
                      since: str | None = None, limit: int | None = None) -> History:
        """A page of ``channel``'s retained messages, newest first (chat scroll-back).

        Without ``before``, the newest messages; with ``before`` (a message
        id, such as :attr:`History.before` of the page above), those older than
        it. ``since`` (a message id, or ``"0"``) stops the page there; ``limit``
        is the page size (the server's ``poll_limit`` if ``None``). Raises
        :class:`ConnectionFailed` if the server cannot be reached and
        :class:`RequestRefused` if it refuses (an id it does not know, say).
        """
        self._check_open()
        checked_channel(channel)
        params: dict[str, str] = {"order": "desc"}
        for name, value in (("before", before), ("since", since)):
            if value is not None:
                params[name] = value
        if limit is not None:
            if limit < 1:
                raise UsageError(f"limit must be at least 1, not {limit!r}")
            params["limit"] = str(limit)
        answer = await self._get_json(f"/channels/{channel}", params,
                                      f"read {channel}'s history from {self._base}")
        return parse_history(channel, answer)

    async def _get_json(self, path: str, params: dict[str, str] | None, doing: str) -> Any:
        """``GET path`` and its JSON answer (``None`` if it is not JSON), with one retry on
        a fresh token when the server says it expired. Raises :class:`ConnectionFailed`
        ("cannot ``doing``") if the server cannot be reached, :class:`RequestRefused`
        for any answer but ``200``."""
        url = self._url(path)
        try:
            response = await self._http.get(url, params=params)
            if response.status_code == 401 and self._tokens.refreshable and (
                    refused(response).code == "token_expired"):
                self._tokens.invalidate()  # once, with a fresh token
                response = await self._http.get(url, params=params)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot {doing}: {_explain(exc)}") from None
        if response.status_code != 200:
            raise refused(response)
        try:
            return response.json()
        except ValueError:
            return None

    async def _publish_ws(self, channel: str, data: Any, key: str | None) -> str:
        link = await self._open_shared_link()
        command = {"type": "publish", "channel": channel, "data": data}
        if key is not None:
            command["idempotency_key"] = key
        ack = await link.request(command)
        message_id = ack.get("id")
        if not isinstance(message_id, str):
            raise ConnectionFailed(f"the server acknowledged without an id: {ack}")
        return message_id

    # for the technique modules -----------------------------------------------

    def _url(self, path: str) -> str:
        return self._base + path

    def _ws_url(self, path: str) -> str:
        return self._ws_base + path

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run ``coroutine`` as a task this client owns (cancelled by :meth:`aclose`)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _shared_link(self) -> websocket.Link:
        async with self._link_lock:
            self._check_open()
            if self._link is None or not self._link.is_open:
                self._link = await websocket.Link.open(self)
            return self._link

    async def _acquire_link(self, channels: tuple[str, ...]) -> websocket.Link:
        """The shared link, or a private one if it already carries one of ``channels``."""
        link = await self._shared_link()
        if any(channel in link.routes for channel in channels):
            return await websocket.Link.open(self, private=True)
        return link

    def _status(self, event: StatusEvent) -> None:
        logger.info("%s", event)
        if self.on_status is not None:
            try:
                self.on_status(event)
            except Exception:
                logger.exception("on_status callback failed")


def _presence_answer(channel: str, answer: object) -> Presence:
    if not isinstance(answer, dict):
        raise ConnectionFailed(f"not a presence answer: {str(answer)[:100]}")
    try:
        return presence_of(channel, answer)
    except BrokenStream as exc:
        raise ConnectionFailed(str(exc)) from None


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Subscription(Generic[Item]):
    """Messages and gaps of some channels, once each and in order, across reconnects.

    Iterate it with ``async for``; close it with :meth:`aclose` (or use it as
    ``async with``) to stop early; closing the client closes it too.

    ``transport`` is the technique in use (``None`` before the first
    connection), ``state`` one of ``"connecting"``, ``"connected"``,
    ``"reconnecting"``, ``"closed"``, and :attr:`cursor` the ``since`` to
    resume from later, even in another process.
    """

    def __init__(self, client: Client, book: CursorBook, on_gap: str,
                 presence: PresenceBook | None = None) -> None:
        self.transport: str | None = None
        self.state = "connecting"
        self.reconnects = 0
        self._client = client
        self._book = book
        self._presence = presence
        self._on_gap = on_gap
        self._queue: asyncio.Queue[Message | Gap | PresenceItem | Subscribed | Unsubscribed
                                   | _End] = asyncio.Queue(
            client.buffer)
        self._stopped: BaseException | None = None
        self._limit: asyncio.Timeout | None = None
        self._reason = ""
        #: What every read asks the server for (``delta``, ``latest``).
        self._options = ReadOptions()
        self._task = client._spawn(self._run())

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels read now (for :meth:`Client.subscribe_server_side`, as the server
        announced them)."""
        return self._book.channels

    @property
    def cursor(self) -> str | None:
        """Where this subscription stands: pass it as ``since=`` to resume after it.

        It moves past a message or gap only once ``async for`` has handed it
        to you, so a cursor saved after handling an item never skips any.
        """
        return self._book.handed_since()

    def __aiter__(self) -> Subscription[Item]:
        return self

    async def __anext__(self) -> Item:
        if self._stopped is not None:
            raise self._stopped
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later call ends the same way
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        if isinstance(item, Message | Gap):
            self._book.hand(item)
        return item  # type: ignore[return-value]  # what this subscription was made to yield

    async def presence(self, channel: str | None = None, *,
                       count_only: bool = False) -> Presence:
        """Who is on ``channel`` (by default the subscription's only channel) now:
        :meth:`Client.presence`. It needs no ``presence=True``: it asks the server."""
        if channel is None:
            if len(self.channels) != 1:
                raise UsageError("name the channel: this subscription reads several")
            (channel,) = self.channels
        return await self._client.presence(channel, count_only=count_only)

    async def __aenter__(self) -> Subscription[Item]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading; a running ``async for`` ends. Idempotent."""
        self._stop(StopAsyncIteration())
        await asyncio.gather(self._task, return_exceptions=True)

    def _stop(self, error: BaseException) -> None:
        if self._stopped is None:
            self._stopped = error
            self.state = "closed"
            self._task.cancel()
            self._client._subscriptions.discard(self)
            if not self._queue.full():
                self._queue.put_nowait(_End(None if isinstance(error, StopAsyncIteration)
                                            else error))

    # the reconnect loop ------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._reconnect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state = "closed"
            self._client._subscriptions.discard(self)
            await self._queue.put(_End(exc))

    async def _reconnect(self) -> None:
        client = self._client
        order = client._order
        index = attempt = 0
        while True:
            technique = order[index]
            session = Session(client, self._book, technique, self._queue.put, self._on_gap,
                              fallback=index > 0, established=self._established,
                              options=self._options, presence=self._presence)
            try:
                await self._attempt(session)
            except OutOfOrder as exc:
                self._reason = str(exc)
                self._disconnected(technique, 0.0)
                continue
            except TechniqueFailed as exc:
                self._reason = f"{technique}: {exc}"
                if index + 1 < len(order):
                    logger.info("%s failed (%s); trying %s", technique, exc, order[index + 1])
                    index += 1
                    continue
                index = 0
            except (Unreachable, Unavailable, Dropped, BrokenStream) as exc:
                self._reason = str(exc)
            else:  # an upgrade is due
                self._reason = f"trying {order[0]} again after {client.upgrade_after:g}s"
                index = 0
                continue
            if session.is_established:
                attempt = 0
            delay = client.backoff.delay(attempt)
            attempt += 1
            self._disconnected(technique, delay)
            await asyncio.sleep(delay)

    def _disconnected(self, technique: str, delay: float) -> None:
        self.state = "reconnecting"
        self.reconnects += 1
        self._client._status(Disconnected(technique, self.channels, self._reason, delay))

    def _established(self, session: Session) -> None:
        if self._limit is not None:
            self._limit.reschedule(None)
        previous = self.transport
        if previous is None and session.technique != self._client._order[0]:
            previous = self._client._order[0]
        self.transport = session.technique
        self.state = "connected"
        if previous is not None and previous != session.technique:
            self._client._status(TransportChanged(previous, session.technique, self.channels,
                                                  self._reason))
        self._client._status(Connected(session.technique, self.channels))

    async def _attempt(self, session: Session) -> None:
        """Run one technique; turn what libraries raise into the reconnect loop's terms."""
        limit = self._client.connect_timeout
        try:
            async with asyncio.timeout(limit) as self._limit:
                await _READERS[session.technique](session)
        except TimeoutError:
            if self._limit is not None and self._limit.expired():
                raise TechniqueFailed(f"not working after {limit:g}s") from None
            raise session.failure("timed out") from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(f"cannot connect to {self._client.url}: {_explain(exc)}") from None
        except httpx.ReadTimeout:
            raise session.failure(f"nothing received for {self._client.idle_timeout:g}s") from None
        except httpx.TransportError as exc:
            raise session.failure(_explain(exc)) from None
        except OSError as exc:
            if session.is_established:
                raise Dropped(_explain(exc)) from None
            raise Unreachable(f"cannot connect to {self._client.url}: {_explain(exc)}") from None
        except ValueError as exc:  # JSON, SSE limits: the server broke the protocol
            raise session.failure(f"invalid data from the server: {exc}") from None
        except ConnectionFailed as exc:
            raise session.failure(str(exc)) from None
        except RequestRefused as exc:
            if exc.code == "transport_disabled":  # the operator's switch: try the next one
                raise TechniqueFailed(str(exc)) from None
            if exc.code == "token_expired" and self._client._tokens.refreshable:
                self._client._tokens.invalidate()  # reconnect with a fresh one, resume
                raise Dropped(str(exc)) from None
            raise
        finally:
            self._limit = None


def _explain(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
