"""Server-Sent Events: one response that never ends, an event per message."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tidings.core.cursor import Position, Start, format_multi
from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.errors import BrokerError, ProtocolError
from tidings.server.reading import read_all
from tidings.server.stream import Stream
from tidings.wire import http, sse
from tidings.wire.http import Headers

if TYPE_CHECKING:
    from tidings.server.app import Server


SSE_HEADERS: Headers = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
]


class SseStream(Stream):
    """An open event stream on one or more channels.

    With one channel each event's ``id:`` is the message id, encoded once per
    message for all streams. With several, ``id:`` is the multi-channel cursor,
    which differs per stream; only that line is built per stream.
    """

    __slots__ = ("positions",)

    def __init__(self, server: Server, transport: asyncio.Transport, multi: bool) -> None:
        super().__init__(server, transport)
        #: Per-channel positions, kept only by multi-channel streams.
        self.positions: dict[str, Position] | None = {} if multi else None

    def start(self, starts: dict[str, Start], cors: Headers) -> None:
        """Send the head, the backlog after each start, then go live."""
        out = [http.head(200, [*SSE_HEADERS, *cors], keep_alive=False)]
        retry = self.server.settings.sse_retry_ms
        broker = self.server.broker
        try:
            batches = [read_all(broker, channel, start) for channel, start in starts.items()]
        except ProtocolError as exc:  # a cursor ahead of the log: nothing was sent yet
            self.transport.write(http.error_response(exc, cors, keep_alive=False))
            self._finish()
            return
        positions = self.positions
        if positions is None:
            (batch,) = batches
            (begin,) = batch.begins.values()
            out.append(sse.opening(retry, str(begin)))
            out.extend(sse.gap_event(gap, str(gap.resume)) for gap in batch.gaps)
            out.extend(sse.message_event(m) for m in batch.messages)
        else:
            for batch in batches:
                positions.update(batch.begins)
            out.append(sse.opening(retry, format_multi(positions)))
            for batch in batches:
                out.extend(sse.gap_event(gap, format_multi(positions)) for gap in batch.gaps)
                for message in batch.messages:
                    positions[message.channel] = message.position
                    out.append(sse.message_event_with_cursor(message, format_multi(positions)))
        self.write_backlog(b"".join(out))
        for channel in starts:
            self.subscribe(channel)
        self.server.streams.add(self)

    async def start_when_ready(self, starts: dict[str, Start], cors: Headers) -> None:
        """:meth:`start` once the broker has fetched the channels (a shared store)."""
        try:
            await self.server.prepare(starts)
        except (BrokerError, ProtocolError) as exc:
            if not self.closed:
                self.transport.write(http.error_response(exc, cors, keep_alive=False))
                self._finish()
            return
        except BaseException:
            self._finish()  # cancelled (shutdown): the socket is ours to close
            raise
        if not self.closed:
            self.start(starts, cors)

    def deliver(self, message: Message) -> None:
        positions = self.positions
        if positions is None:
            self.transport.write(message.wire_sse or sse.message_event(message))
        else:
            positions[message.channel] = message.position
            self.transport.write(sse.message_event_with_cursor(message, format_multi(positions)))

    def skip(self, gap: Gap) -> None:
        positions = self.positions
        if positions is None:
            self.transport.write(sse.gap_event(gap, str(gap.resume)))
        else:
            positions[gap.channel] = gap.resume
            self.transport.write(sse.gap_event(gap, format_multi(positions)))

    def notice(self, status: dict[str, object]) -> None:
        self.transport.write(sse.status_event(status))

    def heartbeat(self, now: float) -> None:
        self.transport.write(sse.HEARTBEAT)

    def data_received(self, data: bytes) -> None:
        """A client has nothing to say on an event stream; ignore it."""

    def close_with(self, code: str, reason: str) -> None:
        if not self.closed:
            self.transport.write(sse.closing(code, reason))
            self._finish()
