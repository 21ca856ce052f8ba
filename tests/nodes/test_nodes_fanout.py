"""Three real nodes on one Redis: a message published on one reaches readers on the others.

Clients we did not write (``httpx``, ``websockets``) talk to ``tidings serve``
child processes (tests/nodes/nodekit.py) sharing a Redis of the test's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nodekit import Node, assert_exactly, health, open_sse, publish, start_nodes
from websockets.asyncio.client import connect as ws_connect

from tidings.testing import UNIT, http_client, recv_json, recv_messages

COUNT = 200


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[list[Node]]:
    async with start_nodes(redis_url, 3) as started:
        yield started


async def test_published_on_a_reaches_sse_on_b_and_websocket_on_c(nodes: list[Node]) -> None:
    a, b, c = nodes
    channel = "fanout"
    async with http_client() as client, open_sse(client, b, f"/channels/{channel}") as stream, \
            ws_connect(c.ws_url(f"/channels/{channel}")) as ws:
        # Both are subscribed once the SSE head and the "subscribed" frame are out.
        subscribed = await recv_json(ws)
        assert subscribed["type"] == "subscribed", subscribed
        values = [{"n": n, "text": f"message {n}"} for n in range(COUNT)]
        reading = asyncio.gather(stream.message_objects(COUNT, within=20 * UNIT),
                                 recv_messages(ws, COUNT, within=20 * UNIT))
        published = [await publish(client, a, channel, value) for value in values]
        by_sse, by_ws = await reading
        assert_exactly([m["id"] for m in by_sse], published, "SSE on B")
        assert_exactly([m["id"] for m in by_ws], published, "WebSocket on C")
        assert [m["data"] for m in by_sse] == values
        assert [m["data"] for m in by_ws] == values
        # Nothing more was sent: a ping answered next proves no extra message was queued.
        await ws.send('{"type": "ping", "req": "last"}')
        assert await recv_json(ws) == {"type": "ack", "req": "last"}


async def test_healthz_on_every_node_reports_redis_ok(nodes: list[Node],
                                                      redis_url: str) -> None:
    address = redis_url.removeprefix("redis://")
    async with http_client() as client:
        for node in nodes:
            body = await health(client, node)
            assert body["status"] == "ok", (node, body)
            broker = body["broker"]
            assert broker["kind"] == "redis", (node, body)
            assert broker["status"] == "ok", (node, body)
            assert broker["redis"] == address, (node, body)
