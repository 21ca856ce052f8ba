"""Helpers of the bridge tests: the real PostgreSQL, a running bridge, readers not ours.

The database is ``$TIDINGS_TEST_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``). If it cannot be reached the
tests are skipped, and in CI a skip is a failure (tests/conftest.py): CI must
provide it. Each test gets a fresh schema for its tables and another for its
outbox, dropped afterwards. Test modules import the fixture::

    from pgkit import pg_fixture  # noqa: F401 - the ``pg`` fixture

Readers are the public test kit's (:mod:`tidings.testing`: long polls, an
event stream); every wait is bounded by a multiple of ``UNIT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tidings import Server
from tidings.backoff import Backoff
from tidings.bridges import BrokerSink, Sink
from tidings.bridges.postgres import PostgresBridge
from tidings.testing import UNIT, SseStream, http_client, open_sse, poll

DSN = os.environ.get("TIDINGS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
#: Retry delays that keep tests fast.
FAST = Backoff(initial=0.01, maximum=0.05)


def new_names() -> tuple[str, str]:
    """A fresh schema for a test's tables, and one for its outbox."""
    tag = secrets.token_hex(4)
    return f"t_{tag}", f"t_{tag}_out"


@dataclass
class Pg:
    conn: psycopg.AsyncConnection
    dsn: str
    tables: str  #: the schema of the test's tables
    outbox: str  #: the schema of the test's outbox

    async def execute(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        cursor = await self.conn.execute(query.replace("{s}", self.tables), params)
        return await cursor.fetchall() if cursor.description else []

    async def pending(self) -> int:
        rows = await self.execute(f"SELECT count(*) FROM {self.outbox}.outbox")
        return int(rows[0][0])


@pytest.fixture(name="pg")
async def pg_fixture() -> AsyncIterator[Pg]:
    """A connection, a schema for the test's tables and one for its outbox; dropped after."""
    try:
        conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {DSN}: {exc}")
    tables, outbox = new_names()
    async with conn:
        await conn.execute(f"CREATE SCHEMA {tables}")
        try:
            yield Pg(conn, DSN, tables, outbox)
        finally:
            await conn.execute(f"DROP SCHEMA IF EXISTS {tables} CASCADE")
            await conn.execute(f"DROP SCHEMA IF EXISTS {outbox} CASCADE")


def make_bridge(pg: Pg, server: Server | None = None, sink: Sink | None = None,
                **options: Any) -> PostgresBridge:
    if sink is None:
        assert server is not None
        sink = BrokerSink(server.broker, server.settings.max_message_size)
    options.setdefault("backoff", FAST)
    return PostgresBridge(pg.dsn, sink, schema=pg.outbox, **options)


@contextlib.asynccontextmanager
async def running(bridge: PostgresBridge) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``bridge`` until the block ends; enter once it is publishing."""
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(5 * UNIT):
            done, _ = await asyncio.wait([task, asyncio.create_task(bridge.running.wait())],
                                         return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what ended it
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def long_poll(url: str, channel: str, count: int, since: str = "0",
                    within: float = 10 * UNIT,
                    headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The next ``count`` messages of ``channel`` after ``since``, read by long polls."""
    messages: list[dict[str, Any]] = []
    async with http_client(url, timeout=within, headers=headers) as http, \
            asyncio.timeout(within):
        while len(messages) < count:
            answer = await poll(http, f"/channels/{channel}", since=since, wait=5, limit=1000)
            assert "gap" not in answer, answer
            messages.extend(answer["messages"])
            since = answer["next"]
    return messages


async def poll_all(url: str, channel: str) -> list[dict[str, Any]]:
    """Every retained message of ``channel`` (regular polls from ``since=0``)."""
    messages: list[dict[str, Any]] = []
    since = "0"
    async with http_client(url, timeout=5 * UNIT) as http:
        while True:
            answer = await poll(http, f"/channels/{channel}", since=since, limit=1000)
            messages.extend(answer["messages"])
            if not answer.get("more"):
                return messages
            since = answer["next"]


class SseReader:
    """An event stream on a channel, with a client of its own; :meth:`take` the next messages."""

    def __init__(self, stream: SseStream) -> None:
        self.stream = stream

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, channel: str) -> AsyncIterator[SseReader]:
        """Subscribed (the opening block read) when it yields."""
        async with http_client(url, timeout=None) as http, \
                open_sse(http, f"/channels/{channel}") as stream:
            await stream.opening()
            yield cls(stream)

    async def take(self, count: int, within: float = 5 * UNIT) -> list[dict[str, Any]]:
        """The next ``count`` messages, as the JSON objects of their events."""
        return await self.stream.message_objects(count, within)
