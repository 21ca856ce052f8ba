"""Long polling: hold the request until a message arrives or the wait ends.

A thin driver of the reader (session/reader.py). A poll that finds nothing
parks: its reader is registered on the hub, and the first message or gap it
is handed is the answer. Waiters that were at the end of one channel all get
the same body, encoded once per message (``wire.poll.tail_body``), behind a
head that :func:`tidings.wire.http.response` caches.

A parked request holds its channels' presence (server/presence.py); when it
is answered, a poller that chose its client id stays for the channels'
``presence_timeout``, until its next request.

Waits end by :class:`Expiries`: waiters are grouped by the 50 ms slot in
which their wait ends, with one timer per slot rather than one per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from tidings.core.cursor import Start
from tidings.core.log import Gap, Read
from tidings.core.presence import Identity
from tidings.errors import Unauthorized
from tidings.server.connection import HttpConnection
from tidings.server.metrics import DELIVERED, count_gap, count_page, count_refusal
from tidings.server.poll import JSON_NO_CACHE, client_line, presence_fields
from tidings.session.batch import read_batch
from tidings.session.reader import make_reader
from tidings.wire import http, poll
from tidings.wire.http import Headers
from tidings.wire.presence import Encoded, with_fields

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.server")

#: How finely the ends of waits are grouped, in seconds (a wait ends up to this late).
EXPIRY_RESOLUTION = 0.05
_DELIVERED = DELIVERED + "longpoll"


class Waiter:
    """A parked long-poll request: a reader whose first output is the answer."""

    __slots__ = ("_server", "channels", "conn", "cors", "expires", "headers", "held", "identity",
                 "keep_alive", "named", "parked", "presence_since", "reader")

    def __init__(self, server: Server, conn: HttpConnection, channels: list[str], multi: bool,
                 cors: Headers, keep_alive: bool, expires: float, identity: Identity, named: bool,
                 presence_since: Mapping[str, Start] | None = None, *,
                 latest: bool = False) -> None:
        self._server = server
        #: The channels it reads (its reader's, kept: asked when it parks and when it is
        #: answered).
        self.channels = channels
        #: With ``?presence=1``: where its joins and leaves start; a join or leave answers it.
        self.presence_since = presence_since
        #: Who is waiting; ``named``: it chose its id, so it lingers after the answer.
        self.identity = identity
        self.named = named
        #: The channels whose presence it holds while parked.
        self.held: list[str] = []
        self.conn = conn
        #: When the client's token expires, in Unix seconds (0: never); see :meth:`token_expired`.
        self.expires = expires
        self.cors = cors
        #: The answer's header fields (its head is cached by ``http.response``).
        self.headers = (*JSON_NO_CACHE, *cors) if cors else JSON_NO_CACHE
        self.keep_alive = keep_alive
        self.parked = False
        #: What the hub holds while the request is parked.
        self.reader = make_reader(server.broker, poll.ANSWERS, self, multi=multi, owner=self,
                                  latest=latest)

    def park(self, wait: float) -> None:
        """Wait for the first message (or gap) for at most ``wait`` seconds."""
        self.parked = True
        hub, reader = self._server.broker.hub, self.reader
        channels = self.channels
        for channel in channels:
            hub.subscribe(channel, reader)
        self.conn.park(self._lost)
        self.held = self._server.presence.hold(channels, self.identity, "longpoll")
        if self.presence_since is not None:
            for channel in channels:
                self._server.presence.watch(channel, self)
        self._server.registry.add_waiter(self)
        self._server.expiries.add(self, wait)

    def expire(self) -> None:
        """The wait ended with nothing new: answer with no messages and the same cursor."""
        if self.parked:
            self._answer(poll.body((), self.reader.cursor(), (), False))

    def presence_changed(self, channel: str, encoded: Encoded) -> None:
        """A join or leave on a channel it waits on: answer with it (and no messages); its own
        do not wake it (they come with its next answer)."""
        if self.parked and encoded.client != self.identity.client:
            self._answer(poll.body((), self.reader.cursor(), (), False))

    def token_expired(self) -> None:
        """The token expired during the wait: ``401 token_expired``; the client resumes."""
        if self.parked:
            self._forget()
            error = token_expired()
            count_refusal(self._server.stats, error)
            self.conn.answer_json(error.status, error.to_json(), self.cors, self.keep_alive)

    def fail(self, error: Exception) -> None:
        """Answering raised (a bug): log it, and end this request only."""
        logger.error("answering a long poll failed", exc_info=error)
        self.abort()

    def sent_gap(self, gap: Gap) -> None:
        count_gap(self._server.stats, gap)

    def abort(self) -> None:
        self._forget()
        self.conn.abort()

    def write(self, data: bytes) -> None:
        """The reader's output: the body of the whole answer (a message or a gap)."""
        self._answer(data)

    def _answer(self, body: bytes) -> None:
        if self.parked:
            self._forget()
            self._server.stats[_DELIVERED] += self.reader.sent
            if self.presence_since is not None:
                reader = self.reader
                body = with_fields(body, presence_fields(
                    self._server, dict.fromkeys(reader.channels), self.presence_since,
                    reader.cursor(), reader.multi))
            self.conn.respond(http.response(200, self.headers, body,
                                            keep_alive=self.keep_alive,
                                            lead=client_line(self.identity.client)),
                              self.keep_alive)

    def _lost(self, conn: HttpConnection) -> None:
        """Its client went away while parked."""
        self._forget()

    def _forget(self) -> None:
        if not self.parked:
            return
        self.parked = False
        hub, reader = self._server.broker.hub, self.reader
        channels = self.channels
        for channel in channels:
            hub.unsubscribe(channel, reader)
        if self.held:
            held, self.held = self.held, []
            self._server.presence.release(held, self.identity.client, linger=self.named)
        if self.presence_since is not None:
            for channel in channels:
                self._server.presence.unwatch(channel, self)
        self._server.registry.discard_waiter(self)


def token_expired() -> Unauthorized:
    """The ``401`` of a long poll whose token expired while it waited."""
    return Unauthorized("the token has expired; poll again with a new one from the same cursor",
                        code="token_expired")


class Waiting(Protocol):
    """What waits for a time: a parked long poll (a :class:`Waiter`), or the long polls
    gathered at the end of a channel (server/gathering.py), looked at when the oldest one's
    wait ends."""

    def expire(self) -> None:
        """The time came: answer with nothing new what has not been answered already."""

    def abort(self) -> None:
        """:meth:`expire` raised (a bug): end the connections of the requests it holds."""


class Expiries:
    """Ends waits on time with one timer per :data:`EXPIRY_RESOLUTION` slot."""

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, list[Waiting]] = {}

    def add(self, waiter: Waiting, wait: float) -> None:
        slot = math.ceil((self._loop.time() + wait) / EXPIRY_RESOLUTION)
        waiters = self._slots.get(slot)
        if waiters is None:
            waiters = self._slots[slot] = []
            self._loop.call_at(slot * EXPIRY_RESOLUTION, self._expire, slot)
        waiters.append(waiter)

    def __len__(self) -> int:
        """How many are waiting for their time (some of them answered already)."""
        return sum(len(waiters) for waiters in self._slots.values())

    def _expire(self, slot: int) -> None:
        for waiter in self._slots.pop(slot, ()):
            try:
                waiter.expire()  # does nothing if it was answered already
            except Exception:
                logger.exception("ending a long poll failed")
                waiter.abort()


def answer(server: Server, conn: HttpConnection, starts: Mapping[str, Start], multi: bool,
           limit: int, wait: float, cors: Headers, keep_alive: bool,
           expires: float, identity: Identity, named: bool,
           presence_since: Mapping[str, Start] | None = None, *, latest: bool = False,
           delta: bool = False, found: Read | None = None) -> None:
    """Answer at once if something is there (or ``wait`` is 0), else park until it comes.

    ``found``: the read of the one channel from ``starts``, made already (the repeat's).

    With ``delta`` (``?delta=1``) an answer at once has deltas within its page; a
    parked answer is one message, whole.

    With ``presence_since`` (``?presence=1``), joins and leaves after it are
    something too: they are answered at once, and one that comes wakes it.
    """
    if not latest and presence_since is None:
        # The reader and its waiter are built only if the request parks: under load most
        # long polls find messages already there and are answered at once, like a poll.
        batch = read_batch(server.broker, starts, limit, found)
        if batch.messages or batch.gaps or wait <= 0:
            count_page(server.stats, "longpoll", batch)
            if named:
                server.presence.touch(starts, identity, "longpoll")
            body = poll.body(batch.messages, batch.cursor(multi), batch.gaps, batch.more, delta)
            headers = (*JSON_NO_CACHE, *cors) if cors else JSON_NO_CACHE
            conn.respond(http.response(200, headers, body, keep_alive=keep_alive,
                                       lead=client_line(identity.client)), keep_alive)
            return
        waiter = Waiter(server, conn, list(starts), multi, cors, keep_alive, expires, identity,
                        named)
        waiter.reader.opened(batch)
        waiter.park(wait)
        return
    waiter = Waiter(server, conn, list(starts), multi, cors, keep_alive, expires, identity, named,
                    presence_since, latest=latest)
    batch = waiter.reader.open(starts, limit)
    cursor = waiter.reader.cursor()
    fields: dict[str, object] = {}
    if presence_since is not None:
        fields = presence_fields(server, starts, presence_since, cursor, multi)
        if fields["presence"] or "members" in fields:
            wait = 0  # joins, leaves or a member list to tell: at once
    if batch.messages or batch.gaps or wait <= 0:
        count_page(server.stats, "longpoll", batch)
        if named:
            server.presence.touch(starts, identity, "longpoll")
        body = with_fields(poll.body(batch.messages, cursor, batch.gaps, batch.more, delta),
                           fields)
        conn.respond(http.response(200, waiter.headers, body, keep_alive=keep_alive,
                                   lead=client_line(identity.client)), keep_alive)
        return
    waiter.park(wait)
