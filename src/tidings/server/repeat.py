"""Polls and long polls decided once, and answered again when the request repeats.

A poll or a long poll is checked, routed and decided once per request:
its channels, page size, wait, CORS headers, who asks and whether it may.
:class:`PollRead` is that decision; it answers from any cursor with the
poll or long-poll driver (server/poll.py, server/longpoll.py).

Pollers send the same request over and over on one connection, with at most
``since=`` changed (wire/repeat.py). When the router has decided a read whose
answer depends on nothing else in the request, it offers the connection a
:class:`Repeat`: the bytes of that request and its decision. The next request
of the same shape is answered by :meth:`Repeat.answer` from its new cursor,
without being parsed, routed, authenticated and checked again; anything that
could make the decision differ sends it through the whole path instead:

* a request of another shape (another path, query, header, or ``since`` value
  that is not a cursor's characters), or more than one request in one read;
* a node that is draining, a token past its ``exp``;
* a cursor the driver refuses (``400``, ``InvalidCursor``: the whole path
  answers the error), or a broker that must fetch the log first.

A regular poll of one channel that finds nothing new is the most frequent
request of all (a ``304``, or an empty ``200``), and its answer is the same for
every poller of the decision until the log moves on: :class:`Unchanged` keeps
it, once per decision, and sends it again while ``broker.read`` gives the same
read at the end of the log (core/log.py shares it until the next message).
Only the ``Tidings-Client`` line differs from one answer to the next. Long
polls of one channel that find nothing new park together instead, in the
decision's :class:`~tidings.server.gathering.Gathering`.

Reads are offered only when nothing outside the request bytes decides them:
no hooks (``on_connect``, ``on_subscribe``), no access log, no joins and
leaves, ``latest`` or deltas, no user's channels, and no token whose key may
leave the identity provider's key set (JWKS) meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote_plus

from tidings.core.cursor import END, Start, parse_since
from tidings.core.log import Read
from tidings.core.presence import Identity
from tidings.errors import ProtocolError
from tidings.server import longpoll, poll
from tidings.server.auth import ANONYMOUS, Credentials
from tidings.server.connection import HttpConnection, speedups
from tidings.server.gathering import Gathering
from tidings.server.metrics import BYTES_HTTP
from tidings.server.presence import ascii_client_ids, identify, new_client_id_ascii
from tidings.wire.http import Headers
from tidings.wire.repeat import RequestShape

if TYPE_CHECKING:
    from tidings.server.app import Server


class PollRead(NamedTuple):
    """A poll (``wait`` is ``None``) or long poll, checked and decided: answers from a cursor.

    A value (a named tuple rather than a frozen dataclass: one is built for every poll,
    and equal ones are looked up to be kept once, which a tuple hashes and compares in C).
    """

    server: Server
    channels: tuple[str, ...]
    multi: bool
    page: int
    wait: float | None
    if_none_match: str | None
    cors: Headers
    keep_alive: bool
    expires: float  #: the token's ``exp`` (0: none), for a long poll's wait
    presence_since: Mapping[str, Start] | None = None
    latest: bool = False
    delta: bool = False
    #: Its ``If-None-Match`` is its ``since`` in quotes (the ``ETag`` it was given, sent
    #: back): the same request again changes both (wire/repeat.py, ``tagged``).
    tagged: bool = False

    def start(self, conn: HttpConnection, starts: Mapping[str, Start], identity: Identity,
              named: bool) -> None:
        """Answer from ``starts`` now, or once the broker has read the logs (the connection
        is parked meanwhile)."""
        if self.server.broker.ready(starts):
            self.answer(conn, starts, identity, named)
            return
        later = partial(self._answer_later, conn, starts, identity, named)
        refuse = partial(conn.refuse, cors=self.cors, keep_alive=self.keep_alive)
        if not self.server.when_ready(starts, later, refuse):
            conn.park()  # the requests behind it wait too

    def answer(self, conn: HttpConnection, starts: Mapping[str, Start], identity: Identity,
               named: bool, found: Read | None = None, tag: str | None = None) -> None:
        """Answer from ``starts`` with the broker ready (:meth:`Broker.ready`); raises what
        the driver raises before answering (``InvalidCursor``). ``found``: the read of its
        one channel, made already; ``tag``: a :attr:`tagged` read's ``If-None-Match`` in
        this request (its ``since`` in quotes)."""
        if self.wait is None:
            poll.answer(self.server, conn, starts, self.multi, self.page,
                        self.if_none_match if tag is None else tag,
                        self.cors, self.keep_alive, identity, named, self.presence_since,
                        latest=self.latest, delta=self.delta, found=found)
        else:
            longpoll.answer(self.server, conn, starts, self.multi, self.page, self.wait,
                            self.cors, self.keep_alive, self.expires, identity, named,
                            self.presence_since, latest=self.latest, delta=self.delta,
                            found=found)

    def _answer_later(self, conn: HttpConnection, starts: Mapping[str, Start],
                      identity: Identity, named: bool) -> None:
        if not conn.closing:  # the client may have left while the broker fetched
            self.answer(conn, starts, identity, named)


class Unchanged:
    """A decided poll's answer when it found nothing new, kept for its next pollers.

    One per decision (:class:`Shared`), for a poll of one channel: :meth:`Repeat.answer`
    sends it again to a request with the same ``since`` value while the broker's read from
    there is the very read it was made from (``Broker.same_read``); a new message (a new
    read at the end), another cursor or another log make a new one.
    """

    __slots__ = ("channel", "found", "head", "request", "shape", "since", "start", "starts",
                 "tail")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.since: bytes | None = None  #: the ``since`` value of the request it answered
        self.starts: Mapping[str, Start] = {}  #: that value parsed: {channel: start}
        self.start: Start = END
        #: The read it answers (held, so that no other read can take its id); ``None``: none yet.
        self.found: Read | None = None
        self.head = self.tail = b""  #: the answer, before and after its client id
        #: The last request answered with it, whole, and that request's shape: the same bytes
        #: on a connection of the same shape are the same request, with the same ``since``.
        self.request = b""
        self.shape: RequestShape | None = None


@dataclass(slots=True, eq=False)
class Repeat:
    """A read decided for one request, to answer the same request again from another cursor.

    Offered to the connection (:meth:`HttpConnection.offer`), which keeps it with the
    request's shape if the request was one whole read of its own.
    """

    read: PollRead
    credentials: Credentials
    #: The client id it chose (``?client=``, part of the request), or ``None``: a fresh
    #: one for each answer, as for a request read in full.
    identity: Identity | None
    #: The answer when nothing is new, shared with the decision's other pollers; ``None``
    #: for a read that is not a regular poll of one channel.
    unchanged: Unchanged | None = None
    #: Where the decision's long polls park together at the end of its channel
    #: (server/gathering.py); ``None`` for a read that cannot.
    gathering: Gathering | None = None

    def answer(self, conn: HttpConnection, data: bytes, shape: RequestShape) -> bool:
        """Answer ``data``, one whole request, if it is the request of ``shape`` (the shape
        of the request this was decided for) with another ``since``, unless something else
        decides otherwise; ``False``: nothing was done, the request must be read in full."""
        read = self.read
        server = read.server
        expires = read.expires
        # (PyJWT compares whole seconds: a fractional ``exp`` ends at its integer part)
        if server.draining or (expires and time.time() >= int(expires)):
            return False
        unchanged, gathering = self.unchanged, self.gathering
        broker = server.broker
        # The same bytes as the last request answered by the decision's kept answer or let
        # into its gathering, of the same shape: the same ``since``, nothing to match.
        again = (unchanged is not None and unchanged.shape is shape
                 and data == unchanged.request)
        if again:
            assert unchanged is not None and unchanged.found is not None
            # The most frequent request of all: the same poll, most often with nothing new.
            if broker.same_read(unchanged.channel, unchanged.start, read.page,
                                unchanged.found):
                self._send(conn, unchanged)
                return True
            since = unchanged.since
        elif gathering is not None and gathering.shape is shape and data == gathering.request:
            if gathering.armed:
                self._join(conn, gathering)
                return True
            since = gathering.since
        else:
            since = shape.match(data)
            if since is None:
                return False
            if not shape.has_since:
                since = None
        if gathering is not None and gathering.armed and since == gathering.since:
            # A long poll back at the cursor its decision's pollers wait at: nothing to read.
            gathering.request, gathering.shape = data, shape
            self._join(conn, gathering)
            return True
        try:
            if unchanged is not None and unchanged.found is not None and since == unchanged.since:
                # The same poll again in other bytes (another ``?client=`` or other headers
                # on a connection of another shape), or the log moved on (``again``).
                if not again and broker.same_read(unchanged.channel, unchanged.start,
                                                  read.page, unchanged.found):
                    unchanged.request, unchanged.shape = data, shape
                    self._send(conn, unchanged)
                    return True
                starts = unchanged.starts
                if not broker.ready(starts):
                    return False
                found: Read | None = broker.read(unchanged.channel, unchanged.start, read.page)
            else:
                text = None if since is None else since.decode("ascii")
                if text is not None and "%" in text:
                    text = unquote_plus(text, errors="strict")
                starts = parse_since(text, read.channels)
                if not broker.ready(starts):
                    return False
                if unchanged is None and gathering is None:
                    found = None
                else:
                    ((channel, start),) = starts.items()
                    found = broker.read(channel, start, read.page)
            # (a tagged read's If-None-Match is the since value, quoted)
            tag = f'"{since.decode("ascii")}"' if read.tagged and since is not None else None
            nothing_new = found is not None and not (found.messages or found.gap or found.more)
            if nothing_new and unchanged is not None:
                assert found is not None
                self._keep(unchanged, read, since, starts, found, tag)
                unchanged.request, unchanged.shape = data, shape
                self._send(conn, unchanged)
            elif nothing_new and gathering is not None and gathering.can_arm():
                assert found is not None
                gathering.arm(since, found)
                gathering.request, gathering.shape = data, shape
                self._join(conn, gathering)
            elif self.identity is None:
                read.answer(conn, starts, identify(None, self.credentials)[0], False, found,
                            tag)
            else:
                read.answer(conn, starts, self.identity, True, found, tag)
        except (ProtocolError, UnicodeError):
            return False  # raised before anything was answered: the whole path answers it
        return True

    @property
    def tagged(self) -> bool:
        """Whether its ``If-None-Match`` follows its ``since`` (:attr:`PollRead.tagged`)."""
        return self.read.tagged

    @staticmethod
    def _keep(unchanged: Unchanged, read: PollRead, since: bytes | None,
              starts: Mapping[str, Start], found: Read, tag: str | None) -> None:
        """Make ``unchanged`` the answer of ``read`` to ``found``, a read from ``starts`` that
        found nothing new (``tag``: as for :meth:`PollRead.answer`)."""
        if_none_match = read.if_none_match if tag is None else tag
        unchanged.head, unchanged.tail = poll.nothing_new(found.next, if_none_match,
                                                          read.cors, read.keep_alive)
        (unchanged.start,) = starts.values()
        unchanged.since, unchanged.starts, unchanged.found = since, starts, found

    def _join(self, conn: HttpConnection, gathering: Gathering) -> None:
        """Park the long poll with the decision's others, as ``longpoll.answer`` would alone."""
        identity = self.identity
        gathering.join(conn, None if identity is None else identity.client)

    def _send(self, conn: HttpConnection, unchanged: Unchanged) -> None:
        """Send ``unchanged``'s answer, as :func:`poll.answer` would have."""
        identity = self.identity
        if identity is None:
            client = new_client_id_ascii()
        else:
            self.read.server.presence.touch(unchanged.starts, identity, "poll")
            client = identity.client.encode("ascii")
        conn.respond(b"".join((unchanged.head, client, unchanged.tail)), self.read.keep_alive)


#: Decisions kept once for every connection that asks the same read in the same way (the same
#: channels, parameters and headers): a poll connection otherwise holds its own.
MAX_SHARED = 1024


class Shared:
    """Equal poll decisions (:class:`PollRead`) as one object, each with what its pollers
    share: a poll's :class:`Unchanged` answer, a long poll's
    :class:`~tidings.server.gathering.Gathering`. Bounded by :data:`MAX_SHARED`, after
    which it starts again (what was given out stays valid)."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        #: Per decision, its :class:`Repeat` for anonymous pollers that name no client id
        #: (one for all of them: under load, one of its own per connection would be one
        #: more object out of the CPU's caches at each request), which holds what the
        #: decision's pollers share: its :class:`Unchanged` and its :class:`Gathering`.
        self._kept: dict[PollRead, Repeat] = {}

    def repeat(self, read: PollRead, credentials: Credentials,
               identity: Identity | None) -> Repeat:
        """The :class:`Repeat` of ``read`` (which must hold no ``presence_since``: a dict)."""
        kept = self._kept
        anonymous = kept.get(read)
        if anonymous is None:
            if len(kept) >= MAX_SHARED:
                kept.clear()
            one = (not read.multi and len(read.channels) == 1 and not read.latest
                   and not read.delta and read.presence_since is None)
            unchanged = Unchanged(read.channels[0]) if one and read.wait is None else None
            gathering = (Gathering(read.server, read.channels[0], read.wait, read.cors,
                                   read.keep_alive, read.expires)
                         if one and read.wait is not None and read.wait > 0
                         and not read.server.presence.policy(read.channels[0]).enabled
                         else None)
            kept[read] = anonymous = Repeat(read, ANONYMOUS, None, unchanged, gathering)
        if identity is None and credentials == ANONYMOUS:
            return anonymous
        return Repeat(anonymous.read, credentials, identity, anonymous.unchanged,
                      anonymous.gathering)


if speedups is not None:
    speedups.configure(connection=HttpConnection, repeat=Repeat, unchanged=Unchanged,
                       read=PollRead, client_ids=ascii_client_ids(), bytes_key=BYTES_HTTP)
