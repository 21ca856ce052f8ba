"""Row changes reach subscribers: insert, update, delete; rollbacks; large rows; restarts."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pgkit import Pg, SseReader, long_poll, make_bridge, poll_all, running
from pgkit import pg_fixture as pg_fixture  # the pg fixture
from psycopg.types.json import Json

from conftest import UNIT, ServerFactory, until
from tidings import Server
from tidings.bridges import BrokerSink, HttpSink
from tidings.bridges.postgres import install
from tidings.bridges.sinks import SinkUnavailable
from tidings.settings import AuthSettings

PRICES = "CREATE TABLE {s}.prices (symbol text PRIMARY KEY, price numeric, note text)"


async def prices(pg: Pg) -> str:
    """A captured ``prices`` table, channels ``prices:{symbol}``; returns its name."""
    await pg.execute(PRICES)
    await install(pg.conn, f"{pg.tables}.prices", "prices:{symbol}", pg.outbox)
    return f"{pg.tables}.prices"


def change(message: dict[str, Any]) -> dict[str, Any]:
    """The bridge's data without the fields that vary from run to run."""
    data = dict(message["data"])
    assert isinstance(data.pop("seq"), int)
    assert isinstance(data.pop("source"), str)
    assert isinstance(data.pop("commit_ts"), int)
    return data


async def test_insert_update_delete_reach_sse_and_long_poll(pg: Pg, server: Server) -> None:
    table = await prices(pg)
    async with running(make_bridge(pg, server)), \
            SseReader.open(server.url, "prices:AAPL") as sse:
        await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 187.2, 'a')")
        await pg.execute("UPDATE {s}.prices SET price = 190.5 WHERE symbol = 'AAPL'")
        await pg.execute("DELETE FROM {s}.prices WHERE symbol = 'AAPL'")
        streamed = await sse.take(3)
        polled = await long_poll(server.url, "prices:AAPL", 3)
    row = {"symbol": "AAPL", "price": 187.2, "note": "a"}
    newer = {**row, "price": 190.5}
    expected = [
        {"op": "insert", "table": table, "pk": {"symbol": "AAPL"}, "row": row},
        {"op": "update", "table": table, "pk": {"symbol": "AAPL"}, "row": newer},
        {"op": "delete", "table": table, "pk": {"symbol": "AAPL"}, "row": newer},
    ]
    assert [change(m) for m in streamed] == expected
    assert polled == streamed
    seqs = [m["data"]["seq"] for m in streamed]
    assert seqs == sorted(seqs)
    assert await pg.pending() == 0


async def test_each_row_goes_to_its_own_channel(pg: Pg, server: Server) -> None:
    await prices(pg)
    async with running(make_bridge(pg, server)):
        await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1), ('MSFT', 2)")
        aapl = await long_poll(server.url, "prices:AAPL", 1)
        msft = await long_poll(server.url, "prices:MSFT", 1)
    assert aapl[0]["data"]["row"]["price"] == 1
    assert msft[0]["data"]["row"]["price"] == 2


async def test_a_rolled_back_transaction_publishes_nothing(pg: Pg, server: Server) -> None:
    await prices(pg)
    async with running(make_bridge(pg, server)):
        async with pg.conn.transaction(force_rollback=True):
            await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
            await pg.execute("UPDATE {s}.prices SET price = 2")
        await pg.execute("INSERT INTO {s}.prices VALUES ('MSFT', 3)")  # a marker after it
        await long_poll(server.url, "prices:MSFT", 1)
        assert await poll_all(server.url, "prices:AAPL") == []
    assert await pg.pending() == 0


async def test_a_large_row_is_published_without_the_row(pg: Pg, make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=4096)
    await prices(pg)
    async with running(make_bridge(pg, server)):
        await pg.execute("INSERT INTO {s}.prices VALUES ('BIG', 1, %s)", ["x" * 10_000])
        await pg.execute("INSERT INTO {s}.prices VALUES ('SMALL', 1, 'y')")
        big = await long_poll(server.url, "prices:BIG", 1)
        small = await long_poll(server.url, "prices:SMALL", 1)
    assert change(big[0]) == {"op": "insert", "table": f"{pg.tables}.prices",
                              "pk": {"symbol": "BIG"}, "row_omitted": True}
    assert small[0]["data"]["row"]["note"] == "y"


async def test_over_http_a_413_is_learnt_and_the_row_left_out(
        pg: Pg, make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=4096)
    await prices(pg)
    sink = HttpSink(server.url, max_message_size=None)  # the bridge does not know the limit
    try:
        async with running(make_bridge(pg, sink=sink)):
            await pg.execute("INSERT INTO {s}.prices VALUES ('BIG', 1, %s)", ["x" * 10_000])
            await pg.execute("INSERT INTO {s}.prices VALUES ('SMALL', 1, 'y')")
            big = await long_poll(server.url, "prices:BIG", 1)
            small = await long_poll(server.url, "prices:SMALL", 1)
    finally:
        await sink.aclose()
    assert big[0]["data"]["row_omitted"] is True
    assert "row" not in big[0]["data"]
    assert small[0]["data"]["row"]["note"] == "y"


async def test_changes_made_while_the_bridge_is_stopped_arrive_when_it_starts(
        pg: Pg, server: Server) -> None:
    await prices(pg)
    async with running(make_bridge(pg, server)):
        await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
        await long_poll(server.url, "prices:AAPL", 1)
    for price in range(2, 12):
        await pg.execute("UPDATE {s}.prices SET price = %s", [price])
    assert await pg.pending() == 10
    assert len(await poll_all(server.url, "prices:AAPL")) == 1
    async with running(make_bridge(pg, server)):
        messages = await long_poll(server.url, "prices:AAPL", 11)
    assert [m["data"]["row"]["price"] for m in messages] == list(range(1, 12))
    assert await pg.pending() == 0


class Crash(BaseException):
    """The process died right after a publish was accepted (nothing catches it)."""


class CrashingSink(BrokerSink):
    """Publishes ``survive`` messages, then dies just after the next one is accepted."""

    def __init__(self, server: Server, survive: int) -> None:
        super().__init__(server.broker, server.settings.max_message_size)
        self.left = survive

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> bool:
        stored = await super().publish(channel, data, idempotency_key=idempotency_key)
        if self.left == 0:
            raise Crash
        self.left -= 1
        return stored


async def test_a_crash_after_publishing_repeats_nothing(pg: Pg, server: Server) -> None:
    await prices(pg)
    async with pg.conn.transaction():  # one batch: published, then the crash before marking
        await pg.execute("INSERT INTO {s}.prices VALUES ('S0', 0), ('S1', 1)")
        for n in range(2, 6):
            await pg.execute("UPDATE {s}.prices SET price = %s WHERE symbol = %s",
                             [n, f"S{n % 2}"])
    crashing = make_bridge(pg, sink=CrashingSink(server, survive=3))
    async with asyncio.timeout(5 * UNIT):
        with contextlib.suppress(Crash):
            await crashing.run()
    assert await pg.pending() == 6  # nothing was marked done
    bridge = make_bridge(pg, server)
    async with running(bridge):
        even = await long_poll(server.url, "prices:S0", 3)
        odd = await long_poll(server.url, "prices:S1", 3)
    assert bridge.recovered == 4
    assert bridge.published == 2
    assert [m["data"]["row"]["price"] for m in even] == [0, 2, 4]
    assert [m["data"]["row"]["price"] for m in odd] == [1, 3, 5]
    assert len(await poll_all(server.url, "prices:S0")) == 3  # exactly once each
    assert len(await poll_all(server.url, "prices:S1")) == 3
    assert await pg.pending() == 0


async def test_over_http_a_restart_repeats_nothing(pg: Pg, server: Server) -> None:
    await prices(pg)
    await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1), ('MSFT', 2)")
    # A bridge published both, then died before deleting them: put them back.
    saved = await pg.execute(f"SELECT * FROM {pg.outbox}.outbox ORDER BY seq")
    async with running(make_bridge(pg, server)):
        await long_poll(server.url, "prices:AAPL", 1)
        await long_poll(server.url, "prices:MSFT", 1)
    columns = ", ".join(["%s"] * len(saved[0]))
    for row in saved:
        await pg.execute(f"INSERT INTO {pg.outbox}.outbox VALUES ({columns})",
                         [*row[:5], Json(row[5]), row[6]])
    await pg.execute("INSERT INTO {s}.prices VALUES ('IBM', 3)")
    sink = HttpSink(server.url)
    bridge = make_bridge(pg, sink=sink)
    try:
        async with running(bridge):
            await long_poll(server.url, "prices:IBM", 1)
    finally:
        await sink.aclose()
    assert (bridge.recovered, bridge.published) == (2, 1)
    assert len(await poll_all(server.url, "prices:AAPL")) == 1
    assert len(await poll_all(server.url, "prices:MSFT")) == 1


async def test_over_http_a_refused_api_key_loses_nothing(
        pg: Pg, make_server: ServerFactory) -> None:
    server = await make_server(auth=AuthSettings(api_key="right"))
    await prices(pg)
    await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
    sink = HttpSink(server.url, api_key="wrong")
    bridge = make_bridge(pg, sink=sink)
    try:
        async with running(bridge), asyncio.timeout(5 * UNIT):
            while bridge.state != "publish_failing":
                bridge.changed.clear()
                await bridge.changed.wait()
    finally:
        await sink.aclose()
    assert "401" in str(bridge.error)
    assert (bridge.published, bridge.skipped) == (0, 0)
    assert await pg.pending() == 1  # still waiting, not dropped
    sink = HttpSink(server.url, api_key="right")
    try:
        async with running(make_bridge(pg, sink=sink)):
            [message] = await long_poll(server.url, "prices:AAPL", 1,
                                        headers={"Authorization": "Bearer right"})
    finally:
        await sink.aclose()
    assert message["data"]["row"]["symbol"] == "AAPL"


async def test_the_bridge_reconnects_when_the_database_drops_it(pg: Pg, server: Server) -> None:
    await prices(pg)
    bridge = make_bridge(pg, server)
    async with running(bridge):
        killed = await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'tidings bridge' AND query LIKE %s", [f"%{pg.outbox}%"])
        assert killed == [(True,)]
        async with asyncio.timeout(5 * UNIT):
            while bridge.state != "reconnecting":
                bridge.changed.clear()
                await bridge.changed.wait()
        await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")  # while it reconnects
        [message] = await long_poll(server.url, "prices:AAPL", 1)
    assert message["data"]["op"] == "insert"


class LosingSink(BrokerSink):
    """Stores every publish, but loses the answer of the first ``lose`` of them."""

    def __init__(self, server: Server, lose: int) -> None:
        super().__init__(server.broker, server.settings.max_message_size)
        self.lose = lose
        self.keys: list[str | None] = []
        self.read_back_after_a_loss = 0

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> bool:
        self.keys.append(idempotency_key)
        stored = await super().publish(channel, data, idempotency_key=idempotency_key)
        if self.lose:
            self.lose -= 1
            raise SinkUnavailable("the answer was lost")
        return stored

    async def last_seq(self, channel: str, source: str) -> int:
        if len(self.keys) > 0:
            self.read_back_after_a_loss += 1
        return await super().last_seq(channel, source)


async def test_a_lost_answer_is_retried_with_its_key_not_read_back(
        pg: Pg, server: Server) -> None:
    await prices(pg)
    sink = LosingSink(server, lose=2)
    bridge = make_bridge(pg, sink=sink)
    async with running(bridge):
        await pg.execute("INSERT INTO {s}.prices VALUES ('AAPL', 1)")
        await pg.execute("UPDATE {s}.prices SET price = 2")
        messages = await long_poll(server.url, "prices:AAPL", 2)
        await until(lambda: bridge.published + bridge.recovered == 2)
    assert [m["data"]["row"]["price"] for m in messages] == [1, 2]
    assert len(await poll_all(server.url, "prices:AAPL")) == 2  # each once
    first_key = sink.keys[0]
    assert first_key is not None and sink.keys[:3] == [first_key] * 3
    assert sink.read_back_after_a_loss == 0
    assert (bridge.published, bridge.recovered) == (1, 1)
