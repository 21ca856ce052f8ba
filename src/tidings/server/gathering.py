"""Long polls of one decision, parked together at the end of one channel.

A thousand pollers of a channel that send the same long poll (one decision,
server/repeat.py) come back after each message with the same cursor, the
end of the log, and wait for the next one. Each used to park on its own: a
waiter, a reader on the hub, a read of the log that found nothing. A
:class:`Gathering` is one reader on the hub for all of them; each poller in
it, a *member*, is only an entry: its connection, the end of its wait, and the
client id it chose if it chose one. A member is no object of its own: at ten
thousand pollers, two objects per poll were what the garbage collector spent
its time on.

Every member waits as long as the decision says, so members join in the order
their waits end: the gathering keeps them in that order and asks the server's
expiries (server/longpoll.py, ``Expiries``) to look at it once, when its
oldest member's wait ends, then again for the next oldest. A member answered by
a message leaves nothing behind: a thousand pollers answered fifty times a
second are not fifty thousand entries a second waiting for their time.

Why a poller may join without reading the log: a gathering is *armed* from
the read that found the end of the log at its cursor until its reader is
handed something, and its reader was put on the hub in the same step as that
read. Every message appended to a log after that is handed to the hub's
readers (the same rule a parked waiter relies on), so while the gathering is
armed there is nothing after its cursor to read, and a poller that comes
back with that very cursor (the same bytes) is simply added. The first
message or gap answers every member with one body, encoded once; the
gathering is then disarmed, and its pollers, coming back with the new
cursor, arm it again from a new read.

Only a long poll of one channel whose answer depends on nothing but the
message gathers: no ``latest``, deltas or ``presence=1`` (a repeat is never
offered for those), and no presence on the channel (a parked poller would
hold it, one by one). Everything else about a parked long poll
holds for a member: its wait ends with an empty answer, a token that expires
meanwhile gets ``401 token_expired``, a draining server answers it, a client
that leaves is forgotten, and a failure while answering one member (a bug)
ends that member's connection only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tidings.core.log import Gap, Read
from tidings.core.message import Message
from tidings.server.connection import HttpConnection
from tidings.server.longpoll import token_expired
from tidings.server.metrics import DELIVERED, count_gap, count_refusal
from tidings.server.poll import JSON_NO_CACHE, around_client_id
from tidings.server.presence import new_client_id_ascii
from tidings.session.batch import batch_of
from tidings.session.reader import Reader, make_reader
from tidings.wire import poll
from tidings.wire.http import Headers
from tidings.wire.repeat import RequestShape

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.server")

_DELIVERED = DELIVERED + "longpoll"
#: A timer may fire this much before its time (the event loop rounds to milliseconds): a
#: wait that ends within it has ended.
EXPIRY_EARLY = 0.002


class Gathering:
    """The long polls of one decision parked at the end of one channel; see the module
    docstring. One per decision (server/repeat.py, ``Shared``)."""

    __slots__ = ("_looked_at", "_lost", "_server", "armed", "channel", "cors", "expires",
                 "headers", "keep_alive", "members", "names", "reader", "request", "shape",
                 "since", "wait")

    def __init__(self, server: Server, channel: str, wait: float, cors: Headers,
                 keep_alive: bool, expires: float) -> None:
        self._server = server
        self.channel = channel
        self.wait = wait  #: seconds each member waits (the decision's ``wait``)
        self.cors = cors
        self.keep_alive = keep_alive
        #: When the decision's token expires, in Unix seconds (0: never).
        self.expires = expires
        self.headers = (*JSON_NO_CACHE, *cors) if cors else JSON_NO_CACHE
        #: The parked long polls: each one's connection, and the loop time at which its
        #: wait ends, in the order they joined (the order in which their waits end).
        self.members: dict[HttpConnection, float] = {}
        #: The client ids members chose (``?client=``), in ASCII; the others get a fresh
        #: one each.
        self.names: dict[HttpConnection, bytes] = {}
        self._lost = self.leave  # (made once: a connection calls it if its client leaves)
        #: Whether the server's expiries will call :meth:`expire` (once, for the oldest).
        self._looked_at = False
        #: Whether its reader is on the hub, handed nothing yet.
        self.armed = False
        #: The ``since`` value (raw bytes) of the read that armed it: a poller that sends
        #: the same joins without a read.
        self.since: bytes | None = None
        #: The last request let in (or that armed it), whole, and that request's shape
        #: (server/repeat.py): the same bytes on a connection of the same shape come back
        #: with :attr:`since`.
        self.request = b""
        self.shape: RequestShape | None = None
        self.reader: Reader | None = None

    # joining -------------------------------------------------------------------------

    def can_arm(self) -> bool:
        """Whether :meth:`arm` may be called: no member waits at another cursor."""
        return not self.members

    def arm(self, since: bytes | None, found: Read) -> None:
        """Wait at the end of the channel, where ``found`` (the read from the ``since``
        value given) ended with nothing new; :meth:`can_arm` must hold."""
        if self.armed:
            self._disarm()
        server = self._server
        reader = make_reader(server.broker, poll.ANSWERS, self, multi=False, owner=self)
        reader.opened(batch_of(self.channel, found))
        self.reader, self.since, self.armed = reader, since, True
        server.broker.hub.gather(self.channel, self)
        server.registry.add_gathering(self)

    def join(self, conn: HttpConnection, client: str | None) -> None:
        """Park ``conn``'s long poll here (it must be :attr:`armed`) for :attr:`wait`."""
        server = self._server
        self.members[conn] = server.loop.time() + self.wait
        if client is not None:
            self.names[conn] = client.encode("ascii")
        conn.park(self._lost)
        if not self._looked_at:
            self._looked_at = True
            server.expiries.add(self, self.wait)

    def _disarm(self) -> None:
        if self.armed:
            self.armed = False
            self._server.broker.hub.unsubscribe(self.channel, self)
            self._server.registry.discard_gathering(self)

    @property
    def readers(self) -> int:
        """How many long polls it stands for on the hub (``Hub.gather``)."""
        return len(self.members) or 1

    # what the hub hands it (as a subscriber), and what its reader writes ---------------

    def deliver(self, message: Message) -> None:
        assert self.reader is not None
        self.reader.deliver(message)

    def skip(self, gap: Gap) -> None:
        assert self.reader is not None
        self.reader.skip(gap)

    def sent_gap(self, gap: Gap) -> None:
        for _ in self.members:
            count_gap(self._server.stats, gap)

    def write(self, data: bytes) -> None:
        """The reader's output: the body that answers every member (a message or a gap)."""
        members, names = self._take_all()
        sent = self.reader.sent if self.reader is not None else 0
        server = self._server
        server.stats[_DELIVERED] += sent * len(members)
        server.broker.hub.delivered += len(members) - 1  # (the hub counted one)
        self._answer(members, data, names)

    def fail(self, error: Exception) -> None:
        """Handing the reader a message raised (a bug; the hub has unsubscribed it): every
        member gets ``500``."""
        logger.error("answering gathered long polls failed", exc_info=error)
        for conn in self._take_all()[0]:
            conn.abort()

    def _take_all(self) -> tuple[dict[HttpConnection, float], dict[HttpConnection, bytes]]:
        """Every member, taken out: the gathering is disarmed."""
        members, names = self.members, self.names
        self.members, self.names = {}, {}
        self._disarm()
        return members, names

    # ending waits ----------------------------------------------------------------------

    def expire(self) -> None:
        """The server's expiries look at it (``Expiries``): answer the members whose wait
        has ended with no messages, and be looked at again when the next one's ends."""
        self._looked_at = False
        members, names = self.members, self.names
        now = self._server.loop.time()
        ended = []
        for conn, due in members.items():
            if due > now + EXPIRY_EARLY:
                break
            ended.append(conn)
        ended_names = {}
        for conn in ended:
            del members[conn]
            if conn in names:
                ended_names[conn] = names.pop(conn)
        if ended:
            self._end_waits(ended, ended_names)
        if members:
            self._looked_at = True
            self._server.expiries.add(self, next(iter(members.values())) - now)

    def _end_waits(self, conns: Iterable[HttpConnection], names: dict[HttpConnection, bytes]
                   ) -> None:
        """Answer the members of ``conns``, taken out already, with no messages and its
        cursor."""
        assert self.reader is not None
        body = poll.body((), self.reader.cursor(), (), False)
        if not self.members:
            self._disarm()
        self._answer(conns, body, names)

    def leave(self, conn: HttpConnection) -> None:
        """The client of member ``conn`` went away, or its connection is being ended."""
        if self.members.pop(conn, None) is not None:
            self.names.pop(conn, None)
            if not self.members:
                self._disarm()

    def expire_all(self) -> None:
        """End every wait now (a draining or stopping server)."""
        members, names = self._take_all()
        if members:
            self._end_waits(members, names)

    def token_expired(self) -> None:
        """The decision's token expired: ``401 token_expired`` to every member."""
        error = token_expired()
        for conn in self._take_all()[0]:
            count_refusal(self._server.stats, error)
            try:
                conn.answer_json(error.status, error.to_json(), self.cors, self.keep_alive)
            except Exception:
                logger.exception("answering a long poll failed")
                conn.abort()

    def abort(self) -> None:
        """Ending the waits raised (a bug): end every member's connection."""
        for conn in self._take_all()[0]:
            conn.abort()

    def _answer(self, conns: Iterable[HttpConnection], body: bytes,
                names: dict[HttpConnection, bytes]) -> None:
        """Send ``body`` to the members of ``conns`` (named in ``names``, the others with a
        fresh client id each); a failure ends that member's connection."""
        keep_alive = self.keep_alive
        # (one answer but for each member's client id: made once, joined around it)
        head, tail = around_client_id(200, self.headers, body, keep_alive)
        for conn in conns:
            try:
                client = names.get(conn) if names else None
                conn.respond(b"".join((head, client or new_client_id_ascii(), tail)),
                             keep_alive)
            except Exception:
                logger.exception("answering a long poll failed")
                conn.abort()
