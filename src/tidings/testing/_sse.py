"""Server-Sent Events read by hand: blocks parsed by the HTML standard's rules, comments kept."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tidings.testing._checks import WAIT, CheckFailed, fail_after, require


@dataclass
class SseBlock:
    """One blank-line-terminated block of an event stream: an event, or comments only."""

    event: str | None = None
    data: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def is_message(self) -> bool:
        return self.data is not None and self.event in (None, "message")

    def json(self) -> Any:
        """``data`` parsed as JSON; fails if it is not JSON."""
        try:
            return json.loads(self.data or "")
        except ValueError:
            raise CheckFailed(f"an SSE event's data is not JSON: {self.data!r}") from None


_LINE_END = re.compile(rb"\r\n|\r|\n")


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        start = 0
        for match in _LINE_END.finditer(buffer):
            if match.group() == b"\r" and match.end() == len(buffer):
                break  # maybe the first half of a CRLF
            yield buffer[start:match.start()].decode("utf-8")
            start = match.end()
        buffer = buffer[start:]


class SseStream:
    """An event stream, parsed by the rules of the HTML standard, comments included.

    ``source`` is a streaming httpx response (kept as :attr:`response`) or
    any async iterator of bytes. Lines end at CR, LF or CRLF only (not at
    U+2028, which may be in data).

    Each read waits at most its ``within`` argument, or else the stream's
    :attr:`within` (``None``: as long as it takes; :func:`open_sse` sets
    :data:`WAIT`); past it, :class:`CheckFailed`. After that the stream is
    unusable: open another one.
    """

    def __init__(self, source: httpx.Response | AsyncIterator[bytes], *,
                 within: float | None = None) -> None:
        self.response = source if isinstance(source, httpx.Response) else None
        chunks = source.aiter_bytes() if isinstance(source, httpx.Response) else source
        self._lines = _lines(chunks)
        #: Seconds a read may take unless it is told otherwise (``None``: no bound).
        self.within = within
        #: What an EventSource would send as ``Last-Event-ID`` when reconnecting.
        self.last_id: str | None = None

    def _bound(self, within: float | None) -> float | None:
        return self.within if within is None else within

    async def next_block(self, within: float | None = None) -> SseBlock:
        """The next non-empty block (an event, or comments only); :class:`EOFError` at the end."""
        async with fail_after(self._bound(within), "waiting for an SSE block"):
            return await self._next_block()

    async def _next_block(self) -> SseBlock:
        block = SseBlock()
        seen = False
        async for line in self._lines:
            if line == "":
                if seen:
                    return block
                continue
            seen = True
            if line.startswith(":"):
                block.comments.append(line[1:])
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                block.data = value if block.data is None else f"{block.data}\n{value}"
            elif name == "event":
                block.event = value
            elif name == "id":
                block.id = value
                self.last_id = value
            elif name == "retry" and value.isdigit():
                block.retry = int(value)
        raise EOFError("the event stream ended")

    async def next_event(self, within: float | None = None) -> SseBlock:
        """The next block that is an event (heartbeat comments and a stream's opening block,
        which :meth:`opening` reads, skipped)."""
        async with fail_after(self._bound(within), "waiting for an SSE event"):
            return await self._next_event()

    async def _next_event(self) -> SseBlock:
        while True:
            block = await self._next_block()
            if block.retry is not None and block.event == "client":
                continue  # the opening block: the cursor and the client id, not an event to test
            if block.data is not None or block.event is not None:
                return block

    async def opening(self, within: float | None = None) -> SseBlock:
        """Read the block a tidings stream opens with: ``retry:``, the starting ``id:``, and
        (``event: client``) the reader's client id as ``{"client": id, "user": sub}``.

        Call it first; afterwards :attr:`last_id` is the starting cursor, and
        ``block.json()["client"]`` the client id.
        """
        async with fail_after(self._bound(within), "waiting for the opening block of an "
                                                   "event stream"):
            block = await self._next_block()
        require(block.retry is not None and block.id is not None,
                f"an event stream must open with a retry: and an id: line, not {block!r}")
        if block.event is not None or block.data is not None:
            require(block.event == "client" and block.data is not None
                    and isinstance(_client_of(block), str),
                    "an event stream's opening block must be an event: client whose data is "
                    f'{{"client": id, ...}}, not {block!r}')
        return block

    async def messages(self, count: int, within: float | None = None) -> list[SseBlock]:
        """The next ``count`` message events, all within ``within``; any other event fails."""
        events: list[SseBlock] = []
        async with fail_after(self._bound(within), f"waiting for {count} SSE messages"):
            while len(events) < count:
                event = await self._next_event()
                require(event.is_message, f"expected a message event, got {event!r}")
                events.append(event)
        return events

    async def message_objects(self, count: int,
                              within: float | None = None) -> list[dict[str, Any]]:
        """The next ``count`` messages as JSON objects, each checked against its ``id:``.

        With one channel, an event's ``id:`` is its message's id; a
        multi-channel cursor (``a=...,b=...``) is not checked.
        """
        found: list[dict[str, Any]] = []
        for event in await self.messages(count, within):
            message = event.json()
            require(isinstance(message, dict), f"a message event's data is not an object: "
                                               f"{event.data!r}")
            if event.id is None or "=" not in event.id:
                require(event.id == message.get("id"),
                        f"the SSE id: {event.id!r} is not the message's id: {event!r}")
            found.append(dict(message))
        return found


@contextlib.asynccontextmanager
async def open_sse(http: httpx.AsyncClient, path: str, params: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None, *,
                   within: float | None = WAIT) -> AsyncIterator[SseStream]:
    """Open an event stream on ``path`` and check its head; leaving the block closes it.

    The stream must answer ``200`` with ``text/event-stream`` within
    ``within`` seconds, which then bounds each read of the yielded
    :class:`SseStream`. Its opening block is not read yet:
    :meth:`SseStream.opening` reads and checks it.
    """
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    request = http.build_request("GET", path, params=params, headers=all_headers,
                                 timeout=httpx.Timeout(within, read=None))
    async with fail_after(within, f"waiting for the answer to an event stream request on {path}"):
        response = await http.send(request, stream=True)
    try:
        if response.status_code != 200:
            async with fail_after(within, "reading the refusal"):
                body = (await response.aread())[:200]
            raise CheckFailed(f"an event stream on {path} answered {response.status_code}: "
                              f"{body!r}")
        kind = response.headers.get("content-type", "")
        require(kind.startswith("text/event-stream"),
                f"an event stream answered Content-Type {kind!r}, not text/event-stream")
        yield SseStream(response, within=within)
    finally:
        await response.aclose()


def _client_of(block: SseBlock) -> object:
    try:
        value = block.json()
    except ValueError:
        return None
    return value.get("client") if isinstance(value, dict) else None
