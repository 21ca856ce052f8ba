"""One connection attempt of one subscription, as the technique modules see it.

A technique module (``websocket``, ``sse``, ``longpoll``, ``poll``) exposes
``async def read(session)``. It connects, calls :meth:`Session.established`
once the technique works, then hands every message and gap object to
:meth:`Session.message` / :meth:`Session.gap`, and tells the session where
the server says reading starts (:meth:`Session.learn_cursor`). It ends by
raising (see below), or by returning when :meth:`Session.upgrade_due` says
it is time to try a better technique.

Failures are raised as the exceptions of this module, which decide what the
reconnect loop does next: :class:`Unreachable` (back off, same technique),
:class:`Unavailable` (the server said "not now": back off, same technique),
:class:`TechniqueFailed` (``auto`` tries the next technique at once),
:class:`Dropped` (back off, resume). :class:`tidings.RequestRefused` for a
4xx the server explained ends the subscription: every technique would get it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from tidings.client._cursors import BrokenStream, CursorBook, OutOfOrder, ServerSideBook
from tidings.client._presence import PresenceBook, PresenceItem, new_client_id
from tidings.client.events import Gap, Message, Subscribed, Unsubscribed
from tidings.errors import BadRequest, CloseCode, MissedMessages, RequestRefused
from tidings.server_api import refusal_of_status
from tidings.wire import delta

if TYPE_CHECKING:
    from tidings.client._client import Client


#: The ``error`` codes of refusals that say "not now" (docs/protocol.md): the same
#: read, on the same technique, works later. Answered as HTTP 503 (429 for
#: ``too_many_connections`` from one address) or as an ``error`` reply to ``subscribe``.
RETRYABLE_REFUSALS = frozenset({"broker_unavailable", "shutdown", "too_many_connections"})

#: WebSocket close codes that say "not now": going away (a node shutting down), try again later.
RETRYABLE_CLOSE_CODES = frozenset({CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART,
                                   CloseCode.TRY_AGAIN_LATER})


class Unreachable(Exception):
    """The server could not be reached at all (refused, DNS, connect timeout)."""


class Unavailable(Exception):
    """The server refused for now (its broker is away, it shuts down, it is full).

    Every technique would get the same answer: the reconnect loop backs off
    (the delay grows while it lasts) and tries the same technique again.
    """


def unavailable(status: int | None, body: bytes | bytearray) -> Unavailable | None:
    """The :class:`Unavailable` for an HTTP answer (503, 429) whose JSON ``error`` is retryable.

    ``None`` for anything else: an unexplained 503 (a proxy) stays a technique failure.
    """
    if status not in (429, 503):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("error") not in RETRYABLE_REFUSALS:
        return None
    return Unavailable(f"{status} {value['error']}: {value.get('message', '')}")


def unavailable_reply(refusal: RequestRefused) -> Unavailable | None:
    """The :class:`Unavailable` for a WebSocket ``error`` reply with a retryable code."""
    if refusal.code in RETRYABLE_REFUSALS:
        return Unavailable(str(refusal))
    return None


class TechniqueFailed(Exception):
    """The server was reached but the technique did not start working."""


class Dropped(Exception):
    """A working connection ended."""


@dataclass(frozen=True, slots=True)
class ReadOptions:
    """What a subscription asks the server for on every technique."""

    #: Deltas (``?delta=1``, ``"delta": true``): applied here, whole messages delivered.
    delta: bool = False
    #: The newest message of each channel only (``?latest=1``, ``"latest": true``).
    latest: bool = False

    def params(self) -> list[tuple[str, str | int | float | bool | None]]:
        """The query parameters of an HTTP read."""
        return [(name, "1") for name in ("delta", "latest") if getattr(self, name)]


class Session:
    """The state one technique needs for one connection attempt.

    With deltas it keeps the last whole value of each channel it was sent on
    this connection (a delta names the id it applies to, checked here): a delta
    whose base it lacks, or that does not fit, ends the connection, and the
    resume from the cursor begins with a whole message.
    """

    def __init__(
        self,
        client: Client,
        book: CursorBook,
        technique: str,
        deliver: Callable[[Message | Gap | PresenceItem | Subscribed | Unsubscribed], Any],
        on_gap: str,
        fallback: bool,
        established: Callable[[Session], None],
        options: ReadOptions | None = None,
        presence: PresenceBook | None = None,
    ) -> None:
        self.client = client
        self.options = options or ReadOptions()
        #: With deltas: each channel's last message id and whole value on this connection.
        self._bases: dict[str, tuple[object, Any]] = {}
        self.book = book
        #: The joins and leaves asked for (``presence=True``), else ``None``.
        self.presence = presence
        self.technique = technique
        self.is_established = False
        self._deliver = deliver
        self._on_gap = on_gap
        self._fallback = fallback
        self._on_established = established
        self._upgrade_at: float | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return self.book.channels

    @property
    def server_side(self) -> bool:
        """Does this read the user's channels (``/subscribe`` without ``channel``)?"""
        return isinstance(self.book, ServerSideBook)

    def read_target(self) -> tuple[str, httpx.QueryParams]:
        """The URL and channel parameters of a read with an HTTP technique."""
        options = self.options.params()
        if self.server_side:
            return self.client._url("/subscribe"), httpx.QueryParams(options)
        if len(self.channels) == 1:
            return self.client._url(f"/channels/{self.channels[0]}"), httpx.QueryParams(options)
        return self.client._url("/subscribe"), httpx.QueryParams(
            [*(("channel", c) for c in self.channels), *options])

    def read_params(self, params: httpx.QueryParams, poller: bool) -> httpx.QueryParams:
        """``params`` with the client id once known (``?client=``), and ``presence=1`` (with,
        for a poller, where its joins and leaves resume) when they were asked for. A poller
        asking for them must name itself: it draws an id if none is known yet."""
        client = self.client
        if self.presence is not None:
            if poller and client.client_id is None:
                client._learn_client(new_client_id())
            params = params.add("presence", "1")
            since = self.presence.since()
            if poller and since is not None:
                params = params.add("presence_since", since)
        if client.client_id is not None:
            params = params.add("client", client.client_id)
        return params

    def learn_client(self, response: httpx.Response) -> None:
        """Keep the client id the server told in its ``Tidings-Client`` header."""
        self.client._learn_client(response.headers.get("tidings-client"))

    def failure(self, reason: str) -> Exception:
        """The exception for a connection that ended: :class:`Dropped` once established."""
        return Dropped(reason) if self.is_established else TechniqueFailed(reason)

    def check(self, response: httpx.Response) -> None:
        """Raise the right exception if ``response`` is not a ``200``: :class:`Unavailable`,
        :class:`tidings.RequestRefused` or a technique failure."""
        if response.status_code == 200:
            return
        busy = unavailable(response.status_code, response.content)
        if busy is not None:
            raise busy
        refused = refusal_of_status(response.status_code, response.content)
        if refused is not None:
            raise refused
        raise self.failure(f"HTTP {response.status_code} {response.reason_phrase}")

    async def established(self) -> None:
        """The technique works: call before the first message, at most once per session."""
        if not self.is_established:
            self.is_established = True
            if self._fallback:
                self._upgrade_at = self.client._now() + self.client.upgrade_after
            self._on_established(self)

    def upgrade_due(self) -> bool:
        """True when ``auto`` runs a fallback long enough to try the better techniques again."""
        return self._upgrade_at is not None and self.client._now() >= self._upgrade_at

    def learn(self, channel: str, position: object) -> None:
        """The server says reading ``channel`` starts after ``position`` (a WebSocket ack)."""
        if not isinstance(position, str):
            raise BrokenStream(f"a position must be a string, not {position!r}")
        self.book.learn(channel, position)

    def learn_cursor(self, cursor: object) -> None:
        """The server says where this read starts (``next``, SSE ``id:``)."""
        if not isinstance(cursor, str):
            raise BrokenStream(f"a cursor must be a string, not {cursor!r}")
        self.book.learn_cursor(cursor)

    # the user's channels (a ServerSideBook) -------------------------------------

    async def subscribed(self, channel: object, position: object) -> None:
        """The server reads ``channel`` for the user after ``position`` (``None``: from its
        first message): a :class:`Subscribed` if it is new to the book."""
        if not isinstance(self.book, ServerSideBook):
            return
        if not isinstance(channel, str) or not (position is None or isinstance(position, str)):
            raise BrokenStream(f"a bad announcement of a channel: {channel!r} at {position!r}")
        if self.book.add(channel, position):
            await self._deliver(Subscribed(channel, position))

    async def unsubscribed(self, channel: object) -> None:
        """The server stopped reading ``channel`` for the user: an :class:`Unsubscribed`."""
        if isinstance(self.book, ServerSideBook) and isinstance(channel, str) and (
                self.book.remove(channel)):
            await self._deliver(Unsubscribed(channel))

    async def server_set(self, cursor: object, starts: Mapping[str, str | None] = {}) -> None:
        """The whole set of the user's channels, as a cursor (a poll's ``next``, the first
        SSE ``id:``): those new to the book are announced (from ``starts`` when given: a poll
        that brings their first messages), those missing from it are removed."""
        if not isinstance(self.book, ServerSideBook) or not isinstance(cursor, str):
            return
        self.book.heard = True
        named: dict[str, str | None] = {}
        for part in cursor.split(",") if cursor else ():
            channel, sep, value = part.partition("=")
            if not sep:
                return  # a one-channel cursor is not a set
            named[channel] = starts.get(channel, None if value == "0" else value)
        for channel in self.book.channels:
            if channel not in named:
                await self.unsubscribed(channel)
        for channel, start in named.items():
            await self.subscribed(channel, start)

    async def message(self, value: Mapping[str, Any]) -> None:
        """A message object from the server: delivered unless it is a duplicate."""
        if self.options.delta:
            value = self._whole(value)
        message = self.book.accept_message(value)
        if message is not None:
            await self._deliver(message)

    def _whole(self, value: Mapping[str, Any]) -> Mapping[str, Any]:
        """The whole message of ``value`` (a delta or not); remember it as the next base."""
        channel = value.get("channel")
        if not isinstance(channel, str):
            raise BrokenStream(f"a message without a channel: {str(value)[:100]}")
        if "delta" in value:
            base = self._bases.get(channel)
            if base is None or base[0] != value.get("base"):
                raise self.failure(f"a delta against {value.get('base')!r}, a message this "
                                   "connection was not sent; resuming from the cursor")
            try:
                data = delta.apply(base[1], value["delta"])
            except (BadRequest, RecursionError) as exc:
                raise self.failure(f"a delta that does not fit its base: {exc!r}") from None
            value = {key: item for key, item in value.items() if key not in ("delta", "base")}
            value["data"] = data
        # The application may change what it is handed: the base stays a copy of its own.
        self._bases[channel] = (value.get("id"), value.get("data"))
        return {**value, "data": json.loads(json.dumps(value.get("data")))}

    async def gap(self, value: Mapping[str, Any]) -> None:
        """A gap object from the server: a :class:`Gap` event, or :class:`MissedMessages`."""
        gap = self.book.accept_gap(value)
        if gap is None:
            return
        if self._on_gap == "raise":
            raise MissedMessages(gap)
        await self._deliver(gap)

    async def presence_listed(self, value: Mapping[str, Any]) -> None:
        """A member list (a ``presence`` frame or event)."""
        if self.presence is not None:
            for item in self.presence.listed(value):
                await self._deliver(item)

    async def presence_changed(self, kind: str, value: Mapping[str, Any]) -> None:
        """A ``join`` or ``leave`` frame or event."""
        if self.presence is not None:
            for item in self.presence.changed(kind, value):
                await self._deliver(item)

    async def batch(self, body: object) -> bool:
        """A poll or long-poll answer: gaps, then messages with the joins and leaves in
        order among them, then ``next``. Returns ``more``."""
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise BrokenStream(f"not a poll answer: {str(body)[:100]}")
        messages = body["messages"]
        placed = [] if self.presence is None else self.presence.answer(body, messages)
        placed.sort(key=lambda pair: pair[0])  # stable: in the server's order within a place
        queue = iter(placed)
        pending = next(queue, None)

        async def hand_up_to(place: float) -> None:
            nonlocal pending
            while pending is not None and pending[0] <= place:
                for item in pending[1]:
                    await self._deliver(item)
                pending = next(queue, None)

        if self.server_side:
            await self.server_set(body.get("next"), _starts_in(body))
        for gap in body.get("gaps") or ():
            await self.gap(gap)
        try:
            for index, message in enumerate(messages):
                await hand_up_to(index)
                await self.message(message)
        except OutOfOrder:
            await hand_up_to(float("inf"))  # the presence cursor moved past them already
            raise
        await hand_up_to(float("inf"))
        self.learn_cursor(body.get("next"))
        return body.get("more") is True


def _starts_in(body: Mapping[str, Any]) -> dict[str, str | None]:
    """Where each channel of a poll answer starts, read off its first gap or message: a
    channel new to the client is read from there (the answer's ``next`` is past them)."""
    starts: dict[str, str | None] = {}
    for gap in body.get("gaps") or ():
        if isinstance(gap, dict) and isinstance(gap.get("channel"), str):
            starts.setdefault(gap["channel"], None)
    for message in body.get("messages") or ():
        if not isinstance(message, dict) or not isinstance(message.get("channel"), str):
            continue
        if message["channel"] in starts:
            continue
        epoch, _, seq = str(message.get("id")).rpartition("-")
        starts[message["channel"]] = (f"{epoch}-{int(seq) - 1}" if seq.isdigit() and int(seq) > 0
                                      else None)
    return starts
