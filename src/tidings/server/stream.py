"""What SSE streams and WebSockets share: a socket driving a :class:`Reader`, with an output limit.

Backpressure policy (docs/topics/backpressure.md):

* **Live**: the stream may hold ``output_buffer_limit`` bytes the client
  has not read: what it holds until the end of the loop's step
  (:meth:`Stream.write`, server/flush.py) and what the transport's buffer
  holds. Held bytes go to the transport at the end of the step, or at once
  when they would take the stream past its limit; past that, asyncio calls
  :meth:`Stream.pause_writing` and the stream is cut off: it is told why (a
  last SSE event or a WebSocket close frame), unsubscribed at once, and
  closed. Nobody else waits for it; the client resumes from its cursor.
* **Slow readers** (``slow_reader = "skip"`` or ``"latest"``, or ``?latest=1``):
  past the limit the reader stops writing instead (:meth:`Reader.lag`); once
  the socket has drained it writes a gap counting what it skipped (and, for
  ``latest``, the newest message) and goes on live (session/slow.py).
* **Catching up**: a backlog (retained messages a client asked for) is not
  copied into the buffer. The reader pulls it from the log about half the
  limit at a time, and pulls again when the socket has taken it
  (:meth:`resume_writing`). So a connection holds at most its limit whatever
  it asked for. One that leaves its backlog unread for
  ``slow_consumer_timeout`` seconds, or whose buffer passes the limit
  meanwhile (live messages of its other channels), is cut off by the sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tidings.core.cursor import Start
from tidings.core.log import Gap
from tidings.core.presence import Identity
from tidings.errors import INTERNAL_ERROR, SLOW_CONSUMER, TOKEN_EXPIRED, Closing
from tidings.server.flush import QUIET_BATCH
from tidings.server.metrics import BYTES, DELIVERED, SLOW, acked_bytes, count_gap
from tidings.session.batch import Batch
from tidings.session.reader import Encoder, make_reader
from tidings.wire.presence import Encoded

if TYPE_CHECKING:
    from tidings.server.app import Server
    from tidings.server.subscriptions import Following

logger = logging.getLogger("tidings.server")

#: The smallest kernel send buffer a stream gets, whatever the output limit.
MIN_SEND_BUFFER = 64 * 1024


class Stream(asyncio.Protocol):
    """Base of :class:`SseStream` and :class:`WebSocketSession`: owns the socket and the reader."""

    __slots__ = ("_held_size", "_pulling", "_server", "_step", "closed", "expires", "held_bytes",
                 "identity", "present_in", "reader", "server_side", "stalled_since", "transport",
                 "watching")

    #: How presence names this technique (server/presence.py).
    technique = ""

    #: The technique's name, for metrics (``"sse"``, ``"websocket"``).
    technique = ""

    def __init__(self, server: Server, transport: asyncio.Transport, encoder: Encoder,
                 identity: Identity, multi: bool = False, *, latest: bool = False) -> None:
        self._server = server
        self.transport = transport
        #: What the stream holds for its socket until the end of the loop's step (write()):
        #: one bytes object, or a list once a second arrives (then _held_size counts it).
        self.held_bytes: bytes | list[bytes] | None = None
        self._held_size = 0
        # The flusher's step in which this stream last wrote or held (server/flush.py).
        self._step = -1
        # True while a pull's bytes go to the transport: a pause then means "wait for the
        # socket", even if that pull finished the backlog (pause_writing).
        self._pulling = False
        #: Who reads (its client id, and its token's user and info).
        self.identity = identity
        #: The channels whose presence this stream holds (released when it ends).
        self.present_in: tuple[str, ...] = ()
        #: The channels whose joins and leaves it is told (``?presence=1``).
        self.watching: tuple[str, ...] = ()
        #: What it reads because of the server (a ``/subscribe`` without ``channel``;
        #: server/subscriptions.py), or ``None``.
        self.server_side: Following | None = None
        #: What the hub holds: it hands each message straight to the reader. With a
        #: slow-reader policy (or ``?latest=1``) it can skip ahead instead of being cut off.
        self.reader = make_reader(server.broker, encoder, self, multi=multi, owner=self,
                                  policy=server.settings.slow_reader_policy(), latest=latest)
        self.closed = False
        #: When the client's token expires, in Unix seconds (0: never); the server's
        #: sweep calls :meth:`token_expired` then (docs/security.md).
        self.expires = 0.0
        #: Loop time since which a backlog waits for the socket to drain (0: it does not).
        self.stalled_since = 0.0
        limit = server.settings.output_buffer_limit
        transport.set_write_buffer_limits(high=limit)
        # Bound the kernel's send buffer too: autotuned, it can hold megabytes
        # (4 MB on loopback) before the transport's buffer, and the limit, see any.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(limit, MIN_SEND_BUFFER))
        transport.set_protocol(self)

    # reading -------------------------------------------------------------------

    def follow(self, starts: Mapping[str, Start], *, latest: bool = False) -> Batch:
        """Start reading ``starts`` (raises ``InvalidCursor`` first if one is ahead of its log);
        with ``latest``, their backlog is only the newest message of each.

        The backlog is owed from here: the caller writes what comes before it
        (a head, an ack), then calls :meth:`catch_up`.
        """
        reader = self.reader
        batch = reader.open(starts, latest=latest)
        hub = self._server.broker.hub
        for channel in starts:
            hub.subscribe(channel, reader)
        held = self._server.presence.hold(starts, self.identity, self.technique)
        if held:
            self.present_in = (*self.present_in, *held)
        return batch

    def unfollow(self, channel: str) -> bool:
        """Stop reading ``channel``; say whether it was read."""
        if not self.reader.reads(channel):
            return False
        self.reader.close(channel)
        self._server.broker.hub.unsubscribe(channel, self.reader)
        if channel in self.present_in:
            self.present_in = tuple(c for c in self.present_in if c != channel)
            self._server.presence.release((channel,), self.identity.client)
        if channel in self.watching:
            self.watching = tuple(c for c in self.watching if c != channel)
            self._server.presence.unwatch(channel, self)
        return True

    def add_server_channel(self, channel: str, start: Start) -> None:
        """The server subscribed this stream's user to ``channel`` (server/subscriptions.py):
        announce it with where its reading starts, then read it from ``start``.

        Call it once the broker can read ``start`` (``Server.when_ready``); raises
        ``InvalidCursor`` (and changes nothing) for a start ahead of the log.
        """
        if self.closed or self.reader.reads(channel):
            return
        batch = self.follow({channel: start})
        self.write(self.subscribed(channel, str(batch.begins[channel])))
        self.catch_up()

    def remove_server_channel(self, channel: str) -> None:
        """The server unsubscribed this stream's user from ``channel``: stop, and say so."""
        if not self.closed and self.unfollow(channel):
            self.write(self.unsubscribed(channel))

    def subscribed(self, channel: str, begin: str) -> bytes:
        """The bytes announcing a channel the server added, read from ``begin`` on."""
        raise NotImplementedError

    def unsubscribed(self, channel: str) -> bytes:
        """The bytes announcing a channel the server removed."""
        raise NotImplementedError

    def watch_presence(self, channels: list[str]) -> None:
        """Tell the client who is on ``channels`` now, then each join and leave."""
        tracker = self._server.presence
        for channel in channels:
            tracker.watch(channel, self)
            self.write(self.members(tracker.members_answer(channel)))
        self.watching = (*self.watching, *channels)

    def members(self, answer: dict[str, object]) -> bytes:
        """The bytes of a member list on this technique."""
        raise NotImplementedError

    def presence_changed(self, channel: str, encoded: Encoded) -> None:
        """A join or leave on a channel this stream watches (from the tracker's sweep)."""
        raise NotImplementedError

    def catch_up(self) -> None:
        """Pull the backlog while the socket has room; go live when it is done.

        A backlog is not held for the end of the step: each pull goes to the
        transport at once (after what was held before it, a head or an ack),
        whose buffer says when to wait for the socket.
        """
        reader, transport = self.reader, self.transport
        budget = self._server.settings.output_buffer_limit // 2
        if reader.behind:
            transport.set_write_buffer_limits(high=budget)  # pause_writing: wait, not cut
            self.flush()
        while reader.behind and not self.closed:
            if transport.get_write_buffer_size() > budget:
                if not self.stalled_since:
                    self.stalled_since = self._server.loop.time()
                return  # resume_writing comes when the socket has taken half of it
            reader.pull(budget)
            self._pulling = True
            try:
                self.flush()
            finally:
                self._pulling = False
        self.stalled_since = 0.0
        if not self.closed:
            transport.set_write_buffer_limits(high=self._server.settings.output_buffer_limit)

    # failures ----------------------------------------------------------------------

    def fail(self, error: Exception) -> None:
        """Delivering to this stream raised (a bug): log it and close this stream only."""
        logger.error("delivery to %r failed; closing it", self, exc_info=error,
                     extra={"technique": self.technique, "code": INTERNAL_ERROR.code})
        self.close_with(INTERNAL_ERROR)

    def sent_gap(self, gap: Gap) -> None:
        count_gap(self._server.stats, gap)

    # flow control ----------------------------------------------------------------

    def pause_writing(self) -> None:
        if self.closed:
            return
        if self.reader.behind or self._pulling:
            self.stalled_since = self.stalled_since or self._server.loop.time()
            return  # a backlog waits for the socket; the sweep watches it
        if self.reader.lag():  # slow_reader skip or latest: skip ahead once it has drained
            self._server.stats["slow_readers_lagged"] += 1
            self.catch_up()
            return
        self.cut_off()

    def resume_writing(self) -> None:
        if not self.closed and self.reader.behind:
            self.stalled_since = 0.0
            self.catch_up()

    def check_progress(self, now: float) -> None:
        """From the sweep: cut off a stream whose backlog made no progress, or whose
        buffer passed the limit while it caught up (live messages of its other
        channels; a reader that lags writes none, its buffer passed the limit before)."""
        reader = self.reader
        if self.closed or not reader.behind:
            return
        settings = self._server.settings
        if (self.buffered() > settings.output_buffer_limit
                and not reader.all_behind) or (
                self.stalled_since and now - self.stalled_since > settings.slow_consumer_timeout):
            self.cut_off()

    def cut_off(self) -> None:
        """The client does not read what it is sent: tell it why and close (a slow consumer)."""
        if self.closed:
            return
        peer = self.transport.get_extra_info("peername")
        logger.info("cutting off a slow consumer (%s)", peer, extra={
            "client": peer[0] if isinstance(peer, tuple) and peer else None,
            "technique": self.technique, "code": SLOW_CONSUMER.code})
        self._server.stats["slow_consumers"] += 1
        self._server.stats[SLOW + self.technique] += 1
        self.close_with(SLOW_CONSUMER)

    def buffered(self) -> int:
        """Bytes written to the socket that the client has not taken yet (held ones too)."""
        if self.closed:
            return 0
        held = self.held_bytes
        size = 0 if held is None else len(held) if isinstance(held, bytes) else self._held_size
        return size + self.transport.get_write_buffer_size()

    # writing -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write ``data`` after what this stream wrote before (the reader's output).

        The bytes are held and joined with what else the stream gets in this
        step of the loop (server/flush.py): in a quiet step they are written
        with the next batch of streams, as the fan-out goes; once the step has
        a burst (a second write for a stream), and in the step after a burst,
        at the end of the step. They go at once if they would take the stream
        past its output limit, so that asyncio's ``pause_writing`` sees them as
        before. Every write of a stream goes through here (messages,
        heartbeats, replies, close frames): their order holds.
        """
        held = self.held_bytes
        flusher = self._server.flusher
        if held is None:
            if self._step == flusher.step:  # it had bytes in this step already: a burst
                flusher.busy = flusher.burst = True
            else:
                self._step = flusher.step
            self.held_bytes = data
            holding = flusher.holding
            holding.append(self)
            if not flusher.scheduled:
                flusher.schedule()
            elif len(holding) >= QUIET_BATCH and not flusher.busy:
                flusher.write_held()
            return
        flusher.busy = flusher.burst = True
        if isinstance(held, bytes):
            self.held_bytes = [held, data]
            self._held_size = len(held) + len(data)
        else:
            held.append(data)
            self._held_size += len(data)
        if (self._held_size + self.transport.get_write_buffer_size()
                > self._server.settings.output_buffer_limit):
            self.flush()

    def flush(self) -> None:
        """Hand what the stream holds to the transport now (one write)."""
        held = self.held_bytes
        if held is None:
            return
        self.held_bytes = None
        if not self.closed:  # else what a late writer added after the close: dropped
            self.transport.write(held if isinstance(held, bytes) else b"".join(held))

    # what each technique says ------------------------------------------------------

    def notice(self, status: dict[str, object]) -> None:
        """Tell the client about the server's state (a ``status`` event or frame)."""
        raise NotImplementedError

    def heartbeat(self, now: float) -> None:
        raise NotImplementedError

    def close_with(self, closing: Closing) -> None:
        """Tell the client why, stop delivering, close after the last bytes leave."""
        raise NotImplementedError

    def token_expired(self) -> None:
        """The client's token expired: tell it to come back with a new one, and close."""
        self.close_with(TOKEN_EXPIRED)

    # closing -----------------------------------------------------------------------

    def _finish(self) -> None:
        """Stop delivering and close the socket (flushing what was written)."""
        if self.closed:
            return
        self.closed = True
        hub, reader = self._server.broker.hub, self.reader
        for channel in reader.channels:
            hub.unsubscribe(channel, reader)
        if self.present_in:
            held, self.present_in = self.present_in, ()
            self._server.presence.release(held, self.identity.client)
        if self.watching:
            watching, self.watching = self.watching, ()
            for channel in watching:
                self._server.presence.unwatch(channel, self)
        if self.server_side is not None:
            self._server.subscriptions.forget(self)
        # What it sent moves to the totals: metrics read open streams' readers themselves.
        stats = self._server.stats
        stats[DELIVERED + self.technique] += reader.sent
        last, self.held_bytes = self.held_bytes, None
        if last is not None:  # the last bytes (a close frame) go before the socket closes
            self.transport.write(_joined(last))
        stats[BYTES + self.technique] += acked_bytes(self.transport)  # before it is closed
        self.transport.close()
        # Aborted by the server's sweep if the client does not read what is left.
        self._server.registry.discard_stream(self, flushing=self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.held_bytes = None  # nobody to write to
        self._finish()
        self._server.registry.flushed(self.transport)
        self._server.admission.release(self.transport)


def _joined(held: bytes | list[bytes]) -> bytes:
    return held if isinstance(held, bytes) else b"".join(held)
