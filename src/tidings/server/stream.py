"""What SSE streams and WebSockets share: a long-lived connection with an output limit.

Backpressure policy (docs/topics/backpressure.md): the transport's write
buffer may hold ``output_buffer_limit`` bytes that the client has not read.
Past that, asyncio calls :meth:`pause_writing`, and the stream is cut off:
it is told why (a last SSE event or a WebSocket close frame), unsubscribed at
once, and closed. Nobody else waits for it; the client resumes from its cursor.

The backlog a stream is sent when it starts (or, on a WebSocket, subscribes)
is allowed on top of the limit: a client resuming far behind is not a slow
consumer. The server's sweep restores the plain limit once the backlog has
drained (:meth:`Stream.backlog_drained`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from tidings.core.log import Gap
from tidings.core.message import Message

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.server")

#: Seconds a cut-off or closing connection gets to flush before it is aborted.
CLOSE_GRACE = 5.0
#: The smallest kernel send buffer a stream gets, whatever the output limit.
MIN_SEND_BUFFER = 64 * 1024


class Stream(asyncio.Protocol):
    """Base of :class:`SseStream` and :class:`WebSocketSession`."""

    __slots__ = ("channels", "closed", "expires", "server", "transport")

    def __init__(self, server: Server, transport: asyncio.Transport) -> None:
        self.server = server
        self.transport = transport
        self.channels: dict[str, None] = {}
        self.closed = False
        #: When the client's token expires, in Unix seconds (0: never); the server's
        #: sweep calls :meth:`token_expired` then (docs/security.md).
        self.expires = 0.0
        limit = server.settings.output_buffer_limit
        transport.set_write_buffer_limits(high=limit)
        # Bound the kernel's send buffer too: autotuned, it can hold megabytes
        # (4 MB on loopback) before the transport's buffer, and the limit, see any.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(limit, MIN_SEND_BUFFER))
        transport.set_protocol(self)

    def write_backlog(self, data: bytes) -> None:
        """Write retained messages a client asked for, allowed on top of the output limit."""
        limit = self.server.settings.output_buffer_limit
        if len(data) > limit // 2:
            self.transport.set_write_buffer_limits(high=limit + len(data))
            self.server.catching_up.add(self)
        self.transport.write(data)

    def backlog_drained(self) -> bool:
        """Restore the plain output limit if the backlog has left; say whether it has."""
        limit = self.server.settings.output_buffer_limit
        if self.closed or self.transport.get_write_buffer_size() <= limit:
            self.transport.set_write_buffer_limits(high=limit)
            return True
        return False

    def subscribe(self, channel: str) -> None:
        self.channels[channel] = None
        self.server.broker.hub.subscribe(channel, self)

    def unsubscribe(self, channel: str) -> None:
        if self.channels.pop(channel, 0) is None:
            self.server.broker.hub.unsubscribe(channel, self)

    def deliver(self, message: Message) -> None:
        raise NotImplementedError

    def skip(self, gap: Gap) -> None:
        raise NotImplementedError

    def notice(self, status: dict[str, object]) -> None:
        """Tell the client about the server's state (a ``status`` event or frame)."""
        raise NotImplementedError

    def heartbeat(self, now: float) -> None:
        raise NotImplementedError

    def pause_writing(self) -> None:
        if not self.closed:
            peer = self.transport.get_extra_info("peername")
            logger.info("cutting off a slow consumer (%s)", peer)
            self.server.stats["slow_consumers"] += 1
            self.close_with(
                "slow_consumer",
                f"more than {self.server.settings.output_buffer_limit} bytes were waiting "
                f"to be sent; resume from your last cursor",
            )

    def resume_writing(self) -> None:
        pass

    def close_with(self, code: str, reason: str) -> None:
        """Tell the client why, stop delivering, close after the last bytes leave."""
        raise NotImplementedError

    def token_expired(self) -> None:
        """The client's token expired: tell it to come back with a new one, and close."""
        self.close_with("token_expired", "the token has expired; reconnect with a new one "
                        "and resume from your last cursor")

    def _finish(self) -> None:
        """Stop delivering and close the socket (flushing what was written)."""
        if self.closed:
            return
        self.closed = True
        for channel in list(self.channels):
            self.unsubscribe(channel)
        self.server.streams.discard(self)
        self.server.catching_up.discard(self)
        self.transport.close()
        # Aborted by the server's sweep if the client does not read what is left.
        self.server.draining[self.transport] = self.server.loop.time() + CLOSE_GRACE

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()
        self.server.draining.pop(self.transport, None)
        self.server.release(self.transport)
