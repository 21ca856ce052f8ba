"""``tidings demo --database``: the feed goes through a PostgreSQL table and the bridge.

Needs the PostgreSQL of the machine (``$TIDINGS_TEST_DSN``); without it the
test skips, which fails the run in CI.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from conftest import UNIT
from tidings import Settings
from tidings.bridges.postgres import uninstall
from tidings.demo import start_demo
from tidings.demo.database import BRIDGE_SCHEMA, SCHEMA, TABLE
from tidings.demo.feed import SYMBOLS, Market

DSN = os.environ.get("TIDINGS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def clean() -> None:
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await uninstall(conn, schema=BRIDGE_SCHEMA)
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


@pytest.fixture
async def database() -> AsyncIterator[str]:
    try:
        await clean()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {DSN}: {exc}")
    yield DSN
    await clean()


async def test_price_changes_reach_subscribers_through_the_bridge(database: str) -> None:
    demo = await start_demo(Settings(host="127.0.0.1", port=0), rate=20,
                            market=Market(seed=3), database=database)
    try:
        seen: dict[str, float] = {}
        async with httpx.AsyncClient(base_url=demo.url, timeout=10 * UNIT) as http:
            since = "0"
            async with asyncio.timeout(20 * UNIT):
                while len(seen) < 5:
                    answer = (await http.get("/channels/stocks",
                                             params={"since": since, "wait": 5})).json()
                    since = answer["next"]
                    for message in answer["messages"]:
                        data = message["data"]
                        assert data["op"] == "update" and data["table"] == TABLE
                        row = data["row"]
                        assert row["symbol"] in SYMBOLS and data["pk"] == {"symbol": row["symbol"]}
                        seen[row["symbol"]] = row["price"]
        async with await psycopg.AsyncConnection.connect(database) as conn:
            prices = dict(await (await conn.execute(f"SELECT symbol, price FROM {TABLE}"))
                          .fetchall())
        # What was published is what was committed (the table has moved on since, maybe).
        assert set(seen) <= set(prices)
        async with httpx.AsyncClient(base_url=demo.url) as http:
            (bridge,) = (await http.get("/healthz")).json()["bridges"]
        assert bridge["published"] >= len(seen) and bridge["error"] is None
    finally:
        await demo.aclose()
