"""Long polling: hold the request until a message arrives or the wait ends.

A parked request is a :class:`Waiter` registered on the hub. The first
message for it answers the request at once, from bytes shared by every
waiter that was at the end of the same channel.
"""

from __future__ import annotations

import asyncio

from tidings.core.message import Message
from tidings.server.connection import HttpConnection
from tidings.server.poll import JSON_NO_CACHE, Headers
from tidings.server.reading import Batch
from tidings.wire import poll


def tail_body(message: Message) -> bytes:
    """The body for a waiter that was at the end of the channel: encoded once per message."""
    body = message.wire_longpoll
    if body is None:
        body = message.wire_longpoll = poll.body((message,), message.id, (), False)
    return body


class Waiter:
    """A parked long-poll request."""

    __slots__ = ("batch", "conn", "cors", "keep_alive", "multi", "timer")

    def __init__(self, conn: HttpConnection, batch: Batch, multi: bool, cors: Headers,
                 keep_alive: bool, wait: float) -> None:
        self.conn = conn
        self.batch = batch
        self.multi = multi
        self.cors = cors
        self.keep_alive = keep_alive
        hub = conn.server.broker.hub
        for channel in batch.positions:
            hub.subscribe(channel, self)
        conn.park()
        conn.on_lost = self._forget
        self.timer: asyncio.TimerHandle | None = conn.server.loop.call_later(wait, self.expire)
        conn.server.waiters.add(self)

    def deliver(self, message: Message) -> None:
        self._forget()
        if self.multi:
            self.batch.positions[message.channel] = message.position
            body = poll.body((message,), self.batch.cursor(True), (), False)
        else:
            body = tail_body(message)
        self.conn.answer(200, [*JSON_NO_CACHE, *self.cors], body, self.keep_alive)

    def expire(self) -> None:
        """The wait ended with nothing new: answer with no messages and the same cursor."""
        self.timer = None
        self._forget()
        body = poll.body((), self.batch.cursor(self.multi), (), False)
        self.conn.answer(200, [*JSON_NO_CACHE, *self.cors], body, self.keep_alive)

    def _forget(self) -> None:
        hub = self.conn.server.broker.hub
        for channel in self.batch.positions:
            hub.unsubscribe(channel, self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn.server.waiters.discard(self)


def answer(conn: HttpConnection, batch: Batch, multi: bool, wait: float, cors: Headers,
           keep_alive: bool) -> None:
    if batch.messages or batch.gaps or wait <= 0:
        body = poll.body(batch.messages, batch.cursor(multi), batch.gaps, batch.more)
        conn.answer(200, [*JSON_NO_CACHE, *cors], body, keep_alive)
        return
    Waiter(conn, batch, multi, cors, keep_alive, wait)
