"""Our Python client (``tidings.connect``) across nodes.

A client talks to one URL, so moving to another node is closing it and
connecting to the other with the saved ``Subscription.cursor``; the resume
must be exact even when the technique changes at the same time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nodekit import Node, PacedPublisher, assert_exactly, start_nodes

import tidings
from tidings.testing import UNIT, http_client

COUNT = 150
PER_HOP = 30
#: Messages published while the reader is away, before it reconnects.
AWAY = 8
#: Client settings that keep a test short: poll often, and never wait long to retry.
FAST = {"poll_interval": 0.02, "longpoll_wait": 5 * UNIT,
        "backoff": tidings.Backoff(initial=0.02, maximum=0.2)}


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[list[Node]]:
    async with start_nodes(redis_url, 3) as started:
        yield started


async def take(node: Node, channel: str, transport: str, since: str,
               count: int) -> tuple[list[tidings.Message], str | None]:
    """Read ``count`` messages from ``since`` with a new client on ``node``; return the cursor."""
    items: list[tidings.Message] = []
    async with tidings.connect(node.url, transport, **FAST) as client, \
            client.subscribe(channel, since=since) as subscription:
        async with asyncio.timeout(10 * UNIT):
            async for item in subscription:
                assert isinstance(item, tidings.Message), f"{transport} on {node}: {item}"
                items.append(item)
                if len(items) == count:
                    break
        assert subscription.transport == transport
        return items, subscription.cursor


async def test_client_moves_between_nodes_and_techniques(nodes: list[Node]) -> None:
    a, b, c = nodes
    channel = "client-moves"
    hops = [(a, "sse"), (b, "longpoll"), (c, "websocket"), (a, "poll"), (b, "sse")]
    assert len(hops) * PER_HOP == COUNT

    async def read(publisher: PacedPublisher) -> list[tidings.Message]:
        received: list[tidings.Message] = []
        cursor = "0"
        for node, transport in hops:
            items, cursor_after = await take(node, channel, transport, cursor, PER_HOP)
            received += items
            assert cursor_after == received[-1].id, (transport, node)
            cursor = cursor_after
            await publisher.wait_for(len(received) + AWAY)
        return received

    async with http_client() as client:
        publisher = PacedPublisher(client, nodes, channel, COUNT, seed=11)
        async with asyncio.timeout(30 * UNIT), asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(read(publisher))
            tasks.create_task(publisher.run())
    received = reader.result()
    assert_exactly([m.id for m in received], publisher.ids, "our client moving between nodes")
    assert [m.data for m in received] == list(range(COUNT))
    assert all(m.channel == channel for m in received)


async def test_client_publishes_on_a_and_every_technique_reads_on_b(nodes: list[Node]) -> None:
    a, b, _c = nodes
    channel = "client-techniques"
    values: list[Any] = [{"n": n} for n in range(40)]

    async def read(transport: str, since: str) -> list[tidings.Message]:
        received: list[tidings.Message] = []
        async with tidings.connect(b.url, transport, **FAST) as reader, \
                reader.subscribe(channel, since=since) as subscription, \
                asyncio.timeout(10 * UNIT):
            async for item in subscription:
                assert isinstance(item, tidings.Message), (transport, item)
                received.append(item)
                if len(received) == len(values):
                    break
        return received

    async with tidings.connect(a.url, "websocket", **FAST) as publisher:
        start = await publisher.publish(channel, "start")
        async with asyncio.TaskGroup() as tasks:
            readers = {transport: tasks.create_task(read(transport, start))
                       for transport in ("websocket", "sse", "longpoll", "poll")}
            # Over A's WebSocket, each acknowledged once the message is in Redis.
            published = [await publisher.publish(channel, value) for value in values]
    for transport, reader in readers.items():
        received = reader.result()
        assert_exactly([m.id for m in received], published, f"{transport} on B")
        assert [m.data for m in received] == values
