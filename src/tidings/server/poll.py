"""Regular polling: answer at once with what is new since the cursor.

An answer with no gap carries an ``ETag`` naming its ``next`` cursor; a poll
that repeats it in ``If-None-Match`` while nothing is new gets ``304`` and no
body, so idle polling costs one short exchange.
"""

from __future__ import annotations

from tidings.server.connection import HttpConnection
from tidings.server.reading import Batch
from tidings.wire import http, poll
from tidings.wire.http import Headers

JSON_NO_CACHE: Headers = (http.JSON, ("Cache-Control", "no-cache"))


def answer(conn: HttpConnection, batch: Batch, multi: bool, if_none_match: str | None,
           cors: Headers, keep_alive: bool) -> None:
    cursor = batch.cursor(multi)
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
