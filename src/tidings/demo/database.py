"""The demo's feed through PostgreSQL: the whole path an application would use.

``tidings demo --database DSN`` keeps the prices in a table
(:data:`TABLE`) and updates the moved rows in one transaction per tick; the
PostgreSQL bridge (docs/bridge.md), running inside the demo's server,
publishes every committed row change on the channel ``stocks``::

    {"op": "update", "table": "tidings_demo.prices", "pk": {"symbol": "AAPL"},
     "row": {"symbol": "AAPL", "price": 187.23, "change": 0.03}, "seq": ..., ...}

The pages take these as well as the direct feed's ticks. Nothing here
publishes by itself: if a change does not reach the page, it was not committed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg

from tidings.bridges.postgres import PostgresBridge, attach
from tidings.client import Backoff
from tidings.demo.feed import CHANNEL, MAX_LAG, Market
from tidings.settings import BridgeConfig

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.demo")

#: The schema of the demo's table, and the table.
SCHEMA = "tidings_demo"
TABLE = f"{SCHEMA}.prices"
#: The schema of the bridge's outbox for the demo.
BRIDGE_SCHEMA = "tidings_demo_bridge"


async def prepare(dsn: str, market: Market) -> None:
    """Create the prices table if needed and write the market's opening prices into it."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (symbol text PRIMARY KEY, "
            "price double precision NOT NULL, change double precision NOT NULL)")
        async with conn.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO {TABLE} (symbol, price, change) VALUES (%s, %s, %s) "
                "ON CONFLICT (symbol) DO UPDATE SET price = excluded.price, "
                "change = excluded.change",
                [(q["symbol"], q["price"], q["change"])
                 for q in map(market.quote, market.cents)])


def attach_bridge(server: Server, dsn: str) -> PostgresBridge:
    """Run the bridge that publishes :data:`TABLE`'s changes on ``stocks``, inside ``server``."""
    (bridge,) = attach(server, [BridgeConfig(dsn, schema=BRIDGE_SCHEMA,
                                             tables=((TABLE, CHANNEL),))])
    return bridge


async def run_database_feed(dsn: str, rate: float, market: Market) -> None:
    """Update the moved prices ``rate`` times a second, one transaction per tick, until cancelled.

    A lost database connection is retried with backoff; ticks missed meanwhile
    are not made up (the market moves on, as a real one would).
    """
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    backoff = Backoff(initial=0.5, maximum=10.0)
    attempt = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                attempt = 0
                due = loop.time()
                while True:
                    before = dict(market.cents)
                    market.tick()
                    moved = [market.quote(s) for s, cents in market.cents.items()
                             if cents != before[s]]
                    async with conn.transaction(), conn.cursor() as cursor:
                        await cursor.executemany(
                            f"UPDATE {TABLE} SET price = %s, change = %s WHERE symbol = %s",
                            [(q["price"], q["change"], q["symbol"]) for q in moved])
                    due += interval
                    delay = due - loop.time()
                    if delay < -MAX_LAG:
                        due, delay = loop.time(), 0.0
                    await asyncio.sleep(max(delay, 0.0))
        except psycopg.Error as exc:
            delay = backoff.delay(attempt)
            attempt += 1
            logger.warning("demo feed: database error (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
