"""Regular polling and the first read of a long poll: answer with what is new since the cursor.

A thin driver of the reader (session/reader.py): it reads one page and
answers. An answer with no gap carries an ``ETag`` naming its ``next``
cursor; a poll that repeats it in ``If-None-Match`` while nothing is new gets
``304`` and no body, so idle polling costs one short exchange. A long poll
that finds nothing parks (server/longpoll.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tidings.core.cursor import Start
from tidings.server.connection import HttpConnection
from tidings.session.batch import Batch
from tidings.session.reader import Reader
from tidings.wire import http, poll
from tidings.wire.http import Headers

if TYPE_CHECKING:
    from tidings.server.app import Server

JSON_NO_CACHE: Headers = (http.JSON, ("Cache-Control", "no-cache"))


def answer(server: Server, conn: HttpConnection, starts: Mapping[str, Start], multi: bool,
           limit: int, if_none_match: str | None, cors: Headers, keep_alive: bool) -> None:
    """Answer a regular poll at once (its reader writes nothing: it is never on the hub)."""
    reader = Reader(server.broker, poll.ANSWERS, multi=multi)
    batch = reader.open(starts, limit)
    respond(conn, batch, reader.cursor(), if_none_match, cors, keep_alive)


def respond(conn: HttpConnection, batch: Batch, cursor: str, if_none_match: str | None,
            cors: Headers, keep_alive: bool) -> None:
    if batch.gaps:
        body = poll.body(batch.messages, cursor, batch.gaps, batch.more)
        conn.answer(200, (*JSON_NO_CACHE, *cors), body, keep_alive)
        return
    tag = poll.etag(cursor)
    if not batch.messages and if_none_match is not None and tag in if_none_match:
        conn.answer(304, (("ETag", tag), *cors), b"", keep_alive)
        return
    body = poll.body(batch.messages, cursor, (), batch.more)
    conn.answer(200, (*JSON_NO_CACHE, ("ETag", tag), *cors), body, keep_alive)
