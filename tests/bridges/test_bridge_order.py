"""1,000 changes in 50 concurrent transactions arrive exactly once, in commit order.

What "commit order" means here, and how the test knows it: each transaction
takes a number from a counter row with ``UPDATE ... RETURNING``. The row
stays locked until that transaction ends, so the next transaction gets its
number only after the previous one committed: the numbers are the commit
order. Each transaction takes its number at a random point among its own
writes, so the order in which rows were *written* (the table's ``serial`` ids)
differs from the order in which they *committed*; the test checks it does.
"""

from __future__ import annotations

import asyncio
import random

import psycopg
from pgkit import Pg, long_poll, make_bridge, running
from pgkit import pg_fixture as pg_fixture  # the pg fixture

from conftest import UNIT, ServerFactory
from tidings.bridges.postgres import install

TRANSACTIONS = 50
CHANGES = 20  #: per transaction: 19 inserts, then an update of the first row


async def one_transaction(pg: Pg, txn: int, rng: random.Random) -> None:
    lock_at = rng.randrange(CHANGES + 1)
    async with await psycopg.AsyncConnection.connect(pg.dsn) as conn, conn.transaction():
        for step in range(CHANGES + 1):
            if step == lock_at:
                cursor = await conn.execute(
                    f"UPDATE {pg.tables}.counter SET n = n + 1 RETURNING n")
                row = await cursor.fetchone()
                assert row is not None
                await conn.execute(f"INSERT INTO {pg.tables}.commits VALUES (%s, %s)",
                                   [row[0], txn])
            if step < CHANGES - 1:
                await conn.execute(f"INSERT INTO {pg.tables}.orders (txn, step) VALUES (%s, %s)",
                                   [txn, step])
            elif step == CHANGES - 1:
                await conn.execute(f"UPDATE {pg.tables}.orders SET step = %s "
                                   "WHERE txn = %s AND step = 0", [step, txn])


async def test_concurrent_transactions_arrive_once_in_commit_order(
        pg: Pg, make_server: ServerFactory) -> None:
    server = await make_server(history_size=2 * TRANSACTIONS * CHANGES)
    await pg.execute("CREATE TABLE {s}.orders (id serial PRIMARY KEY, txn int, step int)")
    await pg.execute("CREATE TABLE {s}.counter (n int NOT NULL)")
    await pg.execute("INSERT INTO {s}.counter VALUES (0)")
    await pg.execute("CREATE TABLE {s}.commits (n int PRIMARY KEY, txn int)")
    await install(pg.conn, f"{pg.tables}.orders", "orders", pg.outbox)
    rng = random.Random(7)
    async with running(make_bridge(pg, server)):
        async with asyncio.timeout(20 * UNIT):
            await asyncio.gather(*(one_transaction(pg, txn, rng)
                                   for txn in range(TRANSACTIONS)))
        messages = await long_poll(server.url, "orders", TRANSACTIONS * CHANGES,
                                   within=20 * UNIT)
    commit_order = [txn for (txn,) in await pg.execute("SELECT txn FROM {s}.commits ORDER BY n")]
    assert len(commit_order) == TRANSACTIONS
    expected: list[tuple[int, str, int]] = []
    for txn in commit_order:
        expected += [(txn, "insert", step) for step in range(CHANGES - 1)]
        expected.append((txn, "update", CHANGES - 1))
    got = [(m["data"]["row"]["txn"], m["data"]["op"], m["data"]["row"]["step"])
           for m in messages]
    assert got == expected  # every change once, transactions whole and in commit order
    seqs = [m["data"]["seq"] for m in messages]
    assert seqs == sorted(seqs)
    # The test can tell: rows were written in another order than they committed.
    written = [txn for (txn,) in await pg.execute(
        "SELECT txn FROM {s}.orders ORDER BY id")]
    assert list(dict.fromkeys(written)) != commit_order
    assert await pg.pending() == 0


async def independent_transaction(pg: Pg, txn: int) -> None:
    async with await psycopg.AsyncConnection.connect(pg.dsn) as conn, conn.transaction():
        for step in range(CHANGES):
            await conn.execute(f"INSERT INTO {pg.tables}.orders (txn, step) VALUES (%s, %s)",
                               [txn, step])


async def test_transactions_committing_together_are_never_split_or_lost(
        pg: Pg, make_server: ServerFactory) -> None:
    """Nothing orders these commits but the bridge: each arrives whole, once, seq rising.

    This is what the outbox's commit-time lock is for. Without it, commits
    running at the same moment interleave their ``seq`` numbers, and the
    bridge can read a later ``seq`` before an earlier one commits (and
    delete that one unpublished, or publish it out of order).
    """
    server = await make_server(history_size=2 * TRANSACTIONS * CHANGES)
    await pg.execute("CREATE TABLE {s}.orders (id serial PRIMARY KEY, txn int, step int)")
    await install(pg.conn, f"{pg.tables}.orders", "orders", pg.outbox)
    async with running(make_bridge(pg, server, batch_size=7)):
        async with asyncio.timeout(20 * UNIT):
            await asyncio.gather(*(independent_transaction(pg, txn)
                                   for txn in range(TRANSACTIONS)))
        messages = await long_poll(server.url, "orders", TRANSACTIONS * CHANGES,
                                   within=20 * UNIT)
    got = [(m["data"]["row"]["txn"], m["data"]["row"]["step"]) for m in messages]
    order = list(dict.fromkeys(txn for txn, _step in got))
    assert sorted(order) == list(range(TRANSACTIONS))
    assert got == [(txn, step) for txn in order for step in range(CHANGES)]
    seqs = [m["data"]["seq"] for m in messages]
    assert seqs == sorted(seqs)
    assert await pg.pending() == 0
