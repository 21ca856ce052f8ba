"""Regular polling and the first read of a long poll: answer with what is new since the cursor.

A thin driver of the reader (session/reader.py): it reads one page and
answers. An answer with no gap carries an ``ETag`` naming its ``next``
cursor; for one URL (one ``since``) that cursor names the whole body, so a
poll whose ``If-None-Match`` holds the tag its answer would carry gets
``304`` and no body, as HTTP says. A client polling ``since=<next>`` with the
tag it was given gets ``304`` while nothing is new, so idle polling costs one
short exchange. A long poll that finds nothing parks (server/longpoll.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from tidings.core.cursor import Start
from tidings.server.connection import HttpConnection
from tidings.server.metrics import count_page
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
    count_page(server.stats, "poll", batch)
    respond(conn, batch, reader.cursor(), if_none_match, cors, keep_alive)


def respond(conn: HttpConnection, batch: Batch, cursor: str, if_none_match: str | None,
            cors: Headers, keep_alive: bool) -> None:
    if batch.gaps:
        body = poll.body(batch.messages, cursor, batch.gaps, batch.more)
        conn.answer(200, (*JSON_NO_CACHE, *cors), body, keep_alive)
        return
    tag = poll.etag(cursor)
    if if_none_match is not None and _matches(if_none_match, tag):
        conn.answer(304, (("ETag", tag), *cors), b"", keep_alive)
        return
    body = poll.body(batch.messages, cursor, (), batch.more)
    conn.answer(200, (*JSON_NO_CACHE, ("ETag", tag), *cors), body, keep_alive)


def _matches(if_none_match: str, tag: str) -> bool:
    """Whether ``If-None-Match`` holds ``tag`` (weak or strong) or ``*``."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False
