"""Long polling: hold the request until a message arrives or the wait ends.

A parked request is a :class:`Waiter` registered on the hub. The first
message for it answers the request at once. Waiters that were at the end of
the channel all get the same body, encoded once per message, behind a head
that :func:`tidings.wire.http.response` caches.

Waits end by :class:`Expiries`: waiters are grouped by the 50 ms slot in
which their wait ends, with one timer per slot rather than one per request.
"""

from __future__ import annotations

import asyncio
import math

from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.errors import Unauthorized
from tidings.server.connection import HttpConnection
from tidings.server.poll import JSON_NO_CACHE
from tidings.server.reading import Batch
from tidings.wire import poll
from tidings.wire.http import Headers

#: How finely the ends of waits are grouped, in seconds (a wait ends up to this late).
EXPIRY_RESOLUTION = 0.05


def tail_body(message: Message) -> bytes:
    """The body for a waiter that was at the end of the channel: encoded once per message."""
    body = message.wire_longpoll
    if body is None:
        body = message.wire_longpoll = poll.body((message,), message.id, (), False)
    return body


class Waiter:
    """A parked long-poll request."""

    __slots__ = ("batch", "conn", "cors", "expires", "keep_alive", "multi", "parked")

    def __init__(self, conn: HttpConnection, batch: Batch, multi: bool, cors: Headers,
                 keep_alive: bool, expires: float = 0.0) -> None:
        self.conn = conn
        #: When the client's token expires, in Unix seconds (0: never); see :meth:`token_expired`.
        self.expires = expires
        self.batch = batch
        self.multi = multi
        self.cors = cors
        self.keep_alive = keep_alive
        self.parked = True
        server = conn.server
        hub = server.broker.hub
        for channel in batch.positions:
            hub.subscribe(channel, self)
        conn.park()
        conn.on_lost = self._forget
        server.waiters.add(self)

    def deliver(self, message: Message) -> None:
        self._forget()
        if self.multi:
            self.batch.positions[message.channel] = message.position
            body = poll.body((message,), self.batch.cursor(True), (), False)
        else:
            body = message.wire_longpoll or tail_body(message)
        self._answer(body)

    def skip(self, gap: Gap) -> None:
        """The log lost messages during the wait: answer with the gap and the cursor past it."""
        self._forget()
        self.batch.positions[gap.channel] = gap.resume
        self._answer(poll.body((), self.batch.cursor(self.multi), (gap,), False))

    def expire(self) -> None:
        """The wait ended with nothing new: answer with no messages and the same cursor."""
        if self.parked:
            self._forget()
            self._answer(poll.body((), self.batch.cursor(self.multi), (), False))

    def token_expired(self) -> None:
        """The token expired during the wait: ``401 token_expired``; the client resumes."""
        if self.parked:
            self._forget()
            error = Unauthorized("the token has expired; poll again with a new one from the "
                                 "same cursor", code="token_expired")
            self.conn.answer_json(error.status, error.to_json(), self.cors, self.keep_alive)

    def _answer(self, body: bytes) -> None:
        self.conn.answer(200, (*JSON_NO_CACHE, *self.cors), body, self.keep_alive)

    def _forget(self) -> None:
        self.parked = False
        server = self.conn.server
        hub = server.broker.hub
        for channel in self.batch.positions:
            hub.unsubscribe(channel, self)
        server.waiters.discard(self)


class Expiries:
    """Ends waits on time with one timer per :data:`EXPIRY_RESOLUTION` slot."""

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, list[Waiter]] = {}

    def add(self, waiter: Waiter, wait: float) -> None:
        slot = math.ceil((self._loop.time() + wait) / EXPIRY_RESOLUTION)
        waiters = self._slots.get(slot)
        if waiters is None:
            waiters = self._slots[slot] = []
            self._loop.call_at(slot * EXPIRY_RESOLUTION, self._expire, slot)
        waiters.append(waiter)

    def _expire(self, slot: int) -> None:
        for waiter in self._slots.pop(slot, ()):
            waiter.expire()  # does nothing if it was answered already


def answer(conn: HttpConnection, batch: Batch, multi: bool, wait: float, cors: Headers,
           keep_alive: bool, expires: float = 0.0) -> None:
    if batch.messages or batch.gaps or wait <= 0:
        body = poll.body(batch.messages, batch.cursor(multi), batch.gaps, batch.more)
        conn.answer(200, (*JSON_NO_CACHE, *cors), body, keep_alive)
        return
    conn.server.expiries.add(Waiter(conn, batch, multi, cors, keep_alive, expires), wait)
