"""Regular polling and the first read of a long poll: answer with what is new since the cursor.

A thin driver of the reader (session/reader.py): it reads one page and
answers. An answer with no gap carries an ``ETag`` naming its ``next``
cursor; for one URL (one ``since``) that cursor names the whole body, so a
poll whose ``If-None-Match`` holds the tag its answer would carry gets
``304`` and no body, as HTTP says. A client polling ``since=<next>`` with the
tag it was given gets ``304`` while nothing is new, so idle polling costs one
short exchange. A long poll that finds nothing parks (server/longpoll.py).

Every answer names the reader's client id in a ``Tidings-Client`` header; a
poller that chose its id (``?client=``) stays present on the channels it
reads for their ``presence_timeout`` (server/presence.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tidings.core.cursor import Position, Start, parse_since
from tidings.core.log import Read
from tidings.core.presence import Identity
from tidings.server.connection import HttpConnection
from tidings.server.metrics import count_page
from tidings.server.presence import CLIENT_HEADER
from tidings.session.batch import Batch, read_batch
from tidings.session.reader import make_reader
from tidings.wire import http, poll
from tidings.wire.http import Headers
from tidings.wire.presence import with_fields

if TYPE_CHECKING:
    from tidings.server.app import Server

JSON_NO_CACHE: Headers = (http.JSON, ("Cache-Control", "no-cache"))
_CLIENT_LINE = b"%s: %%s\r\n" % CLIENT_HEADER.encode("ascii")
_BEFORE_ID, _AFTER_ID = _CLIENT_LINE.split(b"%s")


def client_line(client: str) -> bytes:
    """The ``Tidings-Client`` header line naming a reader's client id (``lead`` of
    :func:`tidings.wire.http.response`: it differs per answer, so it stays out of the
    cached heads)."""
    return _CLIENT_LINE % client.encode("ascii")


def around_client_id(status: int, headers: Headers, body: bytes, keep_alive: bool
                     ) -> tuple[bytes, bytes]:
    """An answer as the bytes before and after the client id in its ``Tidings-Client``
    line: answers that differ only in the id (one per poller) are each the join of the
    two around it (``new_client_id_ascii``, or an id the poller chose, in ASCII)."""
    head, tail = http.response_parts(status, headers, body, keep_alive=keep_alive)
    return head + _BEFORE_ID, _AFTER_ID + tail


def answer(server: Server, conn: HttpConnection, starts: Mapping[str, Start], multi: bool,
           limit: int, if_none_match: str | None, cors: Headers, keep_alive: bool,
           identity: Identity, named: bool,
           presence_since: Mapping[str, Start] | None = None, *, latest: bool = False,
           delta: bool = False, found: Read | None = None) -> None:
    """Answer a regular poll at once (with ``delta``, ``?delta=1``: deltas within the page).

    A regular poll is never on the hub, so it needs no reader: one page
    (:func:`read_batch`, what ``Reader.open`` reads) and its cursor are the
    answer; only ``?latest=1`` takes a reader, which keeps the newest of each
    channel. Raises :class:`~tidings.errors.InvalidCursor` for a cursor ahead
    of its log, as ``Reader.open`` does. ``found`` is the read of the one channel from
    ``starts``, when the caller has made it already. With ``presence_since``
    (``?presence=1``) the answer carries the joins and leaves after it too, and
    no ``ETag``: the same messages may come with other joins and leaves.
    """
    if latest:
        reader = make_reader(server.broker, poll.ANSWERS, multi=multi, latest=True)
        batch = reader.open(starts, limit)
        cursor = reader.cursor()
    else:
        batch = read_batch(server.broker, starts, limit, found)
        cursor = batch.cursor(multi)
    count_page(server.stats, "poll", batch)
    if named:
        server.presence.touch(starts, identity, "poll")
    if presence_since is not None:
        body = with_fields(poll.body(batch.messages, cursor, batch.gaps, batch.more, delta),
                           presence_fields(server, starts, presence_since, cursor, multi))
        _send(conn, 200, (*JSON_NO_CACHE, *cors), body, keep_alive, identity.client)
        return
    respond(conn, batch, cursor, if_none_match, cors, keep_alive, identity.client, delta)


def presence_fields(server: Server, channels: Mapping[str, object],
                    presence_since: Mapping[str, Start], cursor: str,
                    multi: bool) -> dict[str, object]:
    """What a poll answer ending at ``cursor`` adds with ``?presence=1``: the joins and
    leaves that come before its end (``presence``, ``presence_next``, and ``members`` for
    the channels whose ``presence_since`` cannot say what was missed)."""
    upto = parse_since(cursor, list(channels))
    return server.presence.poll_fields(channels, presence_since, upto, multi)


def answer_back(server: Server, conn: HttpConnection, channel: str, before: Start,
                since: Start, limit: int, cors: Headers, keep_alive: bool) -> None:
    """Answer a read backwards (``?before=`` or ``?order=desc``): one page, newest first."""
    read = server.broker.read_back(channel, before, since, limit)
    conn.answer(200, (*JSON_NO_CACHE, *cors), poll.back_body(read), keep_alive)


def respond(conn: HttpConnection, batch: Batch, cursor: str, if_none_match: str | None,
            cors: Headers, keep_alive: bool, client: str, delta: bool = False) -> None:
    status, headers, body = reply(batch, cursor, if_none_match, cors, delta)
    _send(conn, status, headers, body, keep_alive, client)


def reply(batch: Batch, cursor: str, if_none_match: str | None, cors: Headers,
          delta: bool = False) -> tuple[int, Headers, bytes]:
    """The status, header fields and body answering a poll with ``batch`` (ending at
    ``cursor``); ``304`` if ``If-None-Match`` holds the tag the answer would carry."""
    if batch.gaps:
        return 200, (*JSON_NO_CACHE, *cors), poll.body(batch.messages, cursor, batch.gaps,
                                                       batch.more, delta)
    tag = poll.etag(cursor)
    if if_none_match is not None and (if_none_match == tag or _matches(if_none_match, tag)):
        return 304, (("ETag", tag), *cors), b""
    body = poll.body(batch.messages, cursor, (), batch.more, delta)
    return 200, (*JSON_NO_CACHE, ("ETag", tag), *cors), body


def nothing_new(cursor: Position, if_none_match: str | None, cors: Headers,
                keep_alive: bool) -> tuple[bytes, bytes]:
    """The answer to a poll of one channel that found nothing after ``cursor``, as the
    bytes before and after its client id (the one part that may differ from one poller
    to the next, :func:`around_client_id`): what :func:`answer` sends for such a read."""
    batch = Batch([], {}, {}, [], False)
    status, headers, body = reply(batch, str(cursor), if_none_match, cors)
    return around_client_id(status, headers, body, keep_alive)


def _send(conn: HttpConnection, status: int, headers: Headers, body: bytes, keep_alive: bool,
          client: str) -> None:
    conn.respond(http.response(status, headers, body, keep_alive=keep_alive,
                               lead=client_line(client)), keep_alive)


def _matches(if_none_match: str, tag: str) -> bool:
    """Whether ``If-None-Match`` holds ``tag`` (weak or strong) or ``*``."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False
