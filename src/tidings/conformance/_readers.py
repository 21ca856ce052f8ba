"""One way to read a subscription per technique, each yielding the same items.

A reader is opened at a position (``since``) on one or several channels and
hands out :class:`Item` objects — messages and gaps — one at a time, in the
order the server sent them. There are eight: the four techniques driven by
clients we did not write (httpx, ``websockets``), and the same four through
:mod:`tidings.client`, so checks can demand the same guarantees of both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from websockets.asyncio.client import ClientConnection

from tidings.client import Backoff, Connected, Gap, Message, StatusEvent, Subscription, connect
from tidings.conformance._context import Context
from tidings.testing import (
    CheckFailed,
    SseStream,
    check_poll_answer,
    open_sse,
    open_ws,
    recv_json,
    require,
)

GAP_FIELDS = ("channel", "from", "to", "reason", "missed")
MESSAGE_FIELDS = ("channel", "id", "data", "time")
#: Seconds between two polls that found nothing new (regular polling).
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class Item:
    """A message or a gap, as the wire carries it (``body`` without a ``type``)."""

    kind: str  # "message" | "gap"
    body: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.body["id"] if self.kind == "message" else self.body["to"])


class Reader(Protocol):
    name: str
    #: Where reading stands after the last item handed out, to resume with;
    #: for several channels, a multi-channel cursor (``None`` if unknown yet).
    cursor: str | None

    async def next(self) -> Item: ...


def parse_item(kind: str, body: dict[str, Any]) -> Item:
    """The :class:`Item` of a message or gap as the wire carries it; fails if a field is missing."""
    fields = MESSAGE_FIELDS if kind == "message" else GAP_FIELDS
    missing = [name for name in fields if name not in body]
    require(not missing, f"a {kind} lacks {missing}: {body!r}")
    if kind == "message":
        require(isinstance(body["id"], str) and isinstance(body["time"], int),
                f"a message needs a string id and an integer time: {body!r}")
    return Item(kind, {name: body[name] for name in fields})


def _query(channels: Sequence[str], since: str | None) -> tuple[str, dict[str, Any]]:
    path = f"/channels/{channels[0]}" if len(channels) == 1 else "/subscribe"
    params: dict[str, Any] = {} if len(channels) == 1 else {"channel": list(channels)}
    if since is not None:
        params["since"] = since
    return path, params


class PollReader:
    """Regular or long polling from a cursor; one page at a time, items one by one."""

    def __init__(self, ctx: Context, http: httpx.AsyncClient, technique: str,
                 channels: Sequence[str], since: str | None) -> None:
        self.name = technique
        self.ctx = ctx
        self.http = http
        self.channels = channels
        self.cursor = since
        self._page: list[Item] = []
        self._page_next: str | None = None

    async def next(self) -> Item:
        while not self._page:
            path, params = _query(self.channels, self.cursor)
            if self.name == "longpoll":
                params["wait"] = max(1, int(self.ctx.timeout / 2))
            response = await self.http.get(path, params=params)
            require(response.status_code == 200,
                    f"GET {path} {params} answered {response.status_code}: {response.text[:200]}")
            answer = check_poll_answer(response.json())
            self._page = ([parse_item("gap", gap) for gap in answer.get("gaps", [])]
                          + [parse_item("message", m) for m in answer["messages"]])
            self._page_next = answer["next"]
            if not self._page:
                self.cursor = answer["next"]
                if self.name == "poll":
                    await asyncio.sleep(POLL_INTERVAL)
        item = self._page.pop(0)
        if len(self.channels) == 1:
            self.cursor = item.id
        elif not self._page:
            self.cursor = self._page_next
        return item


class SseReader:
    def __init__(self, stream: SseStream, channels: Sequence[str]) -> None:
        self.name = "sse"
        self.stream = stream
        self.channels = channels
        self.cursor = stream.last_id

    async def next(self) -> Item:
        event = await self.stream.next_event()
        require(event.event in (None, "message", "gap"),
                f"unexpected SSE event {event.event!r}: {event.data!r}")
        require(event.id is not None, f"an SSE event without an id: line: {event!r}")
        item = parse_item("message" if event.is_message else "gap", event.json())
        if len(self.channels) == 1:
            # One channel: the event id is the message id (or the gap's end).
            require(event.id == item.id,
                    f"the SSE id: {event.id!r} is not the {item.kind}'s position {item.id!r}")
        self.cursor = event.id
        return item


class WebSocketReader:
    def __init__(self, ws: ClientConnection, ctx: Context, channels: Sequence[str]) -> None:
        self.name = "websocket"
        self.ws = ws
        self.ctx = ctx
        self.channels = channels
        self.cursor: str | None = None
        #: The ``next`` of each ``subscribed`` frame, by channel.
        self.subscribed: dict[str, str] = {}
        self._early: list[Item] = []

    async def start(self) -> None:
        """Read a ``subscribed`` frame per channel; each comes before its channel's items."""
        while len(self.subscribed) < len(self.channels):
            async with self.ctx.step("waiting for the subscribed frames"):
                frame = await recv_json(self.ws, within=None)
            if frame["type"] in ("message", "gap"):
                require(frame.get("channel") in self.subscribed,
                        f"a {frame['type']} came before its channel's subscribed frame: {frame!r}")
                self._early.append(parse_item(frame.pop("type"), frame))
                continue
            require(frame["type"] == "subscribed" and frame.get("channel") in self.channels
                    and isinstance(frame.get("next"), str),
                    f"expected a subscribed frame for each channel, got {frame!r}")
            self.subscribed[frame["channel"]] = frame["next"]
        if len(self.channels) == 1:
            self.cursor = self.subscribed[self.channels[0]]

    async def next(self) -> Item:
        if self._early:
            item = self._early.pop(0)
        else:
            async with self.ctx.step("waiting for a frame"):
                frame = await recv_json(self.ws, within=None)
            require(frame["type"] in ("message", "gap"), f"unexpected frame {frame!r}")
            item = parse_item(frame.pop("type"), frame)
        if len(self.channels) == 1:
            self.cursor = item.id
        return item


class ClientReader:
    """The tidings client with one transport.

    ``cursor`` is the id of the last item handed out (one channel), not the
    subscription's own cursor, which also counts what it has read ahead.
    """

    def __init__(self, subscription: Subscription[Message | Gap], transport: str,
                 since: str | None) -> None:
        self.name = f"client-{transport}"
        self.subscription = subscription
        self.single = len(subscription.channels) == 1
        self.cursor = since if self.single else None

    async def next(self) -> Item:
        item = await anext(self.subscription)
        if isinstance(item, Gap):
            result = Item("gap", {"channel": item.channel, "from": item.from_, "to": item.to,
                                  "reason": item.reason, "missed": item.missed})
        else:
            result = Item("message", {"channel": item.channel, "id": item.id,
                                      "data": item.data, "time": item.time})
        if self.single:
            self.cursor = result.id
        return result


@contextlib.asynccontextmanager
async def open_reader(ctx: Context, name: str, channels: Sequence[str], since: str | None, *,
                      last_event_id: bool = False) -> AsyncIterator[Reader]:
    """Open reader ``name`` (one of :attr:`Context.readers`) on ``channels`` from ``since``.

    With ``last_event_id``, SSE resumes from ``since`` with the
    ``Last-Event-ID`` header, as a reconnecting EventSource does. When this
    yields, a streaming reader is connected and subscribed.
    """
    if name.startswith("client-"):
        transport = name.removeprefix("client-")
        connected = asyncio.Event()

        def on_status(event: StatusEvent) -> None:
            if isinstance(event, Connected):
                connected.set()

        async with connect(ctx.url, transport, connect_timeout=ctx.timeout,
                                   request_timeout=ctx.timeout, poll_interval=POLL_INTERVAL,
                                   longpoll_wait=max(1.0, ctx.timeout / 2),
                                   backoff=Backoff(0.05, 1.0),
                                   on_status=on_status) as client:
            subscription = client.subscribe(*channels, since=since)
            try:
                async with ctx.step(f"waiting for the tidings client to connect over {transport}"):
                    await connected.wait()
                yield ClientReader(subscription, transport, since)
            finally:
                await subscription.aclose()
        return
    async with ctx.http() as http:
        if name in ("poll", "longpoll"):
            poller = PollReader(ctx, http, name, channels, since)
            if since is None:
                # Fix the starting position now: "the end of the log" moves.
                path, params = _query(channels, None)
                if name == "longpoll":
                    params["wait"] = 0
                response = await http.get(path, params=params)
                require(response.status_code == 200,
                        f"GET {path} answered {response.status_code}: {response.text[:200]}")
                poller.cursor = check_poll_answer(response.json())["next"]
            yield poller
        elif name == "sse":
            path, params = _query(channels, None if last_event_id else since)
            headers = {"Last-Event-ID": since} if last_event_id and since is not None else None
            async with open_sse(http, path, params, headers, within=ctx.timeout) as stream:
                await stream.opening()
                yield SseReader(stream, channels)
        elif name == "websocket":
            path, params = _query(channels, since)
            target = str(httpx.URL(path, params=params))
            async with open_ws(ctx, target, within=ctx.timeout) as ws:
                reader = WebSocketReader(ws, ctx, channels)
                await reader.start()
                yield reader
        else:
            raise CheckFailed(f"no reader {name!r}")


async def read_items(ctx: Context, reader: Reader, count: int, what: str = "reading", *,
                     messages_only: bool = False) -> list[Item]:
    """The next ``count`` items of ``reader``, all within one step timeout."""
    items: list[Item] = []
    try:
        async with ctx.step(what):
            while len(items) < count:
                item = await reader.next()
                require(item.kind == "message" or not messages_only,
                        f"expected only messages, got a gap {item.body!r}")
                items.append(item)
    except CheckFailed as exc:
        raise CheckFailed(f"{exc} (after {len(items)} of {count})") from None
    return items


async def read_messages(ctx: Context, reader: Reader, count: int,
                        what: str = "reading messages") -> list[dict[str, Any]]:
    """The next ``count`` items, which must all be messages."""
    return [item.body for item in await read_items(ctx, reader, count, what,
                                                   messages_only=True)]


#: The techniques used to look at a channel, cheapest first.
LOOKING = ("poll", "longpoll", "sse", "websocket")


def _looking(ctx: Context) -> str:
    return next(t for t in LOOKING if ctx.serves(t))


async def end_of(ctx: Context, channel: str) -> str:
    """The cursor at the current end of ``channel``, with the cheapest technique served."""
    async with open_reader(ctx, _looking(ctx), [channel], None) as reader:
        cursor = reader.cursor
    require(cursor is not None, f"no starting position for {channel}")
    return str(cursor)


async def read_from(ctx: Context, channel: str, since: str, count: int) -> list[Item]:
    """The first ``count`` items after ``since``, with the cheapest technique served."""
    name = _looking(ctx)
    async with open_reader(ctx, name, [channel], since) as reader:
        return await read_items(ctx, reader, count, f"reading {channel} from {since} ({name})")
