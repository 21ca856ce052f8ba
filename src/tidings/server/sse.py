"""Server-Sent Events: one response that never ends, an event per message.

A thin driver of the reader (session/reader.py): the head and the opening
event, then the backlog as the socket drains, then live events. With one
channel each event's ``id:`` is the message id, encoded once per message for
all streams; with several, ``id:`` is the stream's multi-channel cursor, and
it never claims a position past a gap the stream has not sent yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tidings.core.cursor import Start
from tidings.core.presence import Identity
from tidings.errors import BrokerError, Closing, ProtocolError
from tidings.server.metrics import count_refusal
from tidings.server.presence import CLIENT_HEADER
from tidings.server.stream import Stream
from tidings.wire import delta as deltas
from tidings.wire import http, sse
from tidings.wire import presence as presence_wire
from tidings.wire.http import Headers

if TYPE_CHECKING:
    from tidings.server.app import Server


SSE_HEADERS: Headers = [
    ("Content-Type", "text/event-stream"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
]


class SseStream(Stream):
    """An open event stream on one or more channels."""

    __slots__ = ()
    technique = "sse"

    def __init__(self, server: Server, transport: asyncio.Transport, multi: bool,
                 identity: Identity, *, latest: bool = False, delta: bool = False) -> None:
        encoder = deltas.Deltas(sse.EVENTS, deltas.SSE) if delta else sse.EVENTS
        super().__init__(server, transport, encoder, identity, multi, latest=latest)

    def start(self, starts: Mapping[str, Start], cors: Headers, presence: bool = False) -> None:
        """Send the head and the opening cursor (with ``presence``, who is on each channel),
        then the backlog as the socket drains."""
        if self.closed:
            return  # the client left while the broker fetched the channels
        try:
            self.follow(starts)
        except ProtocolError as exc:  # a cursor ahead of the log: nothing was sent yet
            count_refusal(self._server.stats, exc)
            self.write(http.error_response(exc, cors, keep_alive=False))
            self._finish()
            return
        identity = self.identity
        self.write(
            http.head(200, [*SSE_HEADERS, (CLIENT_HEADER, identity.client), *cors],
                      keep_alive=False)
            + sse.opening(self._server.settings.sse_retry_ms, self.reader.cursor(),
                          {"client": identity.client, "user": identity.user}))
        self._server.registry.add_stream(self)
        if presence:
            self.watch_presence(list(starts))
        self.catch_up()

    def refuse(self, error: ProtocolError | BrokerError, cors: Headers) -> None:
        """Answer ``error`` instead of the stream (the broker could not read the channels)."""
        if not self.closed:
            count_refusal(self._server.stats, error)
            self.write(http.error_response(error, cors, keep_alive=False))
            self._finish()

    def notice(self, status: dict[str, object]) -> None:
        self.write(sse.status_event(status))

    def members(self, answer: dict[str, object]) -> bytes:
        return presence_wire.members_event(answer)

    def presence_changed(self, channel: str, encoded: presence_wire.Encoded) -> None:
        if not self.closed:
            self.write(encoded.sse)

    def subscribed(self, channel: str, begin: str) -> bytes:
        return sse.subscribed_event(channel, begin, self.reader.cursor())

    def unsubscribed(self, channel: str) -> bytes:
        return sse.unsubscribed_event(channel, self.reader.cursor())

    def heartbeat(self, now: float) -> None:
        self.write(sse.HEARTBEAT)

    def data_received(self, data: bytes) -> None:
        """A client has nothing to say on an event stream; ignore it."""

    def close_with(self, closing: Closing) -> None:
        if not self.closed:
            self.write(sse.closing(closing.code, closing.message))
            self._finish()
