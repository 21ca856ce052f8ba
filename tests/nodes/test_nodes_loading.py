"""A node loading a channel from Redis while more readers of that channel arrive.

The first read of a channel on a node loads it from Redis; reads that come
meanwhile wait for that load. A reader whose cursor is a message published
*after* the load fetched the log (it read it on another node) must not be
refused: its cursor is a real position. Node B talks to Redis through a
:class:`~nodekit.RedisGate`, which holds Redis's answers at the right moment,
so the interleaving is the same on every run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nodekit import Node, RedisGate, health, publish, start_nodes

from rediskit import RedisProcess
from tidings.testing import UNIT, http_client


@pytest.fixture
async def gate(redis_url: str, shared_redis: RedisProcess) -> AsyncIterator[RedisGate]:
    """A gate to the Redis of ``redis_url`` (emptied for this test)."""
    async with RedisGate(shared_redis.port) as started:
        yield started


@pytest.fixture
async def nodes(redis_url: str, gate: RedisGate) -> AsyncIterator[list[Node]]:
    """A on Redis directly, B through the gate."""
    async with start_nodes([redis_url, gate.url]) as started:
        yield started


async def raw_get(node: Node, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send ``GET target`` and return once the request is in the node's socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def raw_answer(reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the answer to :func:`raw_get`."""
    try:
        async with asyncio.timeout(10 * UNIT):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), dict(json.loads(body))


async def test_a_newer_cursor_that_arrives_during_the_load_is_not_refused(
        nodes: list[Node], gate: RedisGate) -> None:
    a, b = nodes
    channel = "loading"
    async with http_client() as client:
        # B syncs one channel first, so Redis has its sync script from now on.
        warm = await client.get(f"{b.url}/channels/warm", params={"since": "0"})
        assert warm.status_code == 200, warm.text

        # 1. The first reader of the channel on B: B subscribes, then syncs it
        #    from Redis. Redis runs that sync on an empty log; B waits for the answer.
        gate.hold_after_next_script()
        first = await raw_get(b, f"/channels/{channel}?since=0")
        async with asyncio.timeout(5 * UNIT):
            await gate.script_answered.wait()

        # 2. Meanwhile a message is published on A, and a reader who got it
        #    there comes to B with its id, while B is still loading.
        latest = await publish(client, a, channel, "published during the load")
        second = await raw_get(b, f"/channels/{channel}?since={latest}")
        # B takes requests in the order they come: once it answered this one,
        # it has taken the second reader's (which now waits for the load).
        assert (await health(client, b))["broker"]["kind"] == "redis"

        # 3. Redis's answer to the sync reaches B; the pub/sub notice of the new
        #    message is still on its way.
        gate.release("commands")
        status, body = await raw_answer(*first)
        assert (status, body["messages"]) == (200, []), body
        status, body = await raw_answer(*second)
        gate.release("pubsub")
        assert status == 200, (
            f"B refused a cursor it was about to receive: {status} {body}. "
            "After waiting for a load that another read started, RedisBroker.prepare() "
            "must sync again if the loaded log does not reach the reader's cursor.")
        assert body == {"messages": [], "next": latest}, body

        # And the channel goes on normally on B.
        following = await publish(client, a, channel, "after")
        response = await client.get(f"{b.url}/channels/{channel}",
                                    params={"since": latest, "wait": 5 * UNIT})
        assert [m["id"] for m in response.json()["messages"]] == [following], response.text
