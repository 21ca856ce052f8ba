"""A bridge's lag and backlog in ``/metrics``, with the real PostgreSQL (tests/bridges/pgkit.py).

The bridge publishes through a sink held shut until the test opens it, so the
changes wait in the outbox for as long as the test wants; each scrape is
parsed with prometheus_client's parser.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from test_ops_metrics import Samples, scrape, value

from conftest import UNIT, until
from tidings import Server
from tidings.bridges import BrokerSink
from tidings.bridges.postgres import install

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bridges"))
from pgkit import Pg, make_bridge, running
from pgkit import pg_fixture as pg_fixture  # the pg fixture


class HeldSink(BrokerSink):
    """Publishes into the broker once :attr:`open` is set."""

    def __init__(self, server: Server) -> None:
        super().__init__(server.broker, server.settings.max_message_size)
        self.open = asyncio.Event()
        self.waiting = asyncio.Event()

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> bool:
        self.waiting.set()
        await self.open.wait()
        return await super().publish(channel, data, idempotency_key=idempotency_key)


def lag(samples: Samples) -> float:
    return value(samples, "tidings_bridge_lag_seconds", bridge="0")


async def test_lag_and_pending_changes_grow_while_the_bridge_cannot_publish(
        pg: Pg, server: Server) -> None:
    await pg.execute("CREATE TABLE {s}.prices (symbol text PRIMARY KEY, price numeric)")
    await install(pg.conn, f"{pg.tables}.prices", "prices:{symbol}", pg.outbox)
    sink = HeldSink(server)
    bridge = make_bridge(pg, sink=sink, poll_interval=0.05 * UNIT)
    server.health_extra["bridges"] = lambda: [bridge.health()]  # as serve.attach does
    async with running(bridge):
        samples = await scrape(server)
        assert lag(samples) == 0
        assert value(samples, "tidings_bridge_pending_changes", bridge="0") == 0
        assert value(samples, "tidings_bridge_state", bridge="0", state="running") == 1

        await pg.execute("INSERT INTO {s}.prices VALUES ('A', 1), ('B', 2), ('C', 3)")
        async with asyncio.timeout(5 * UNIT):
            await sink.waiting.wait()  # the bridge read them and is stuck on the first
        first = await scrape(server)
        assert lag(first) > 0
        assert value(first, "tidings_bridge_pending_changes", bridge="0") == 3
        await until(lambda: bridge.lag() > lag(first) + 0.1)
        later = await scrape(server)
        assert lag(later) > lag(first) + 0.1  # it grows while nothing is published

        sink.open.set()
        await until(lambda: bridge.health()["pending"] == 0 and bridge.lag() == 0)
        caught_up = await scrape(server)
        assert lag(caught_up) == 0
        assert value(caught_up, "tidings_bridge_pending_changes", bridge="0") == 0
        assert value(caught_up, "tidings_bridge_published_changes_total", bridge="0") == 3
        assert value(caught_up, "tidings_bridge_last_seq", bridge="0") == 3
