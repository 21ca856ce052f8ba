"""Issue 13 with real nodes: Redis restarted from an older snapshot, a node that never read.

Two ``tidings serve`` nodes on a private Redis; a WebSocket client (the
``websockets`` package) reads on A, B never reads the channel. 100 messages,
``SAVE``, 50 more, then Redis is stopped and started from that dump, and B
publishes 20. None of B's ids may be one acknowledged before; the reader on A
gets an ``epoch`` gap and then B's 20, and later syncs delete none of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from nodekit import Node, publish, start_nodes
from websockets.asyncio.client import connect as ws_connect

from rediskit import RedisProcess
from tidings.testing import UNIT, http_client, poll, recv_json, recv_messages

CHANNEL = "restored"


async def publish_when_back(client: httpx.AsyncClient, node: Node, value: Any) -> str:
    """Publish on ``node``, retrying its ``503`` while it reconnects to Redis."""
    async with asyncio.timeout(20 * UNIT):
        while True:
            response = await client.post(f"{node.url}/channels/{CHANNEL}", json=value)
            if response.status_code == 201:
                return str(response.json()["id"])
            assert response.status_code == 503, response.text
            await asyncio.sleep(0.05 * UNIT)


async def test_a_node_that_never_read_gives_no_acknowledged_id_again(
        redis_process: RedisProcess) -> None:
    async with start_nodes(redis_process.url, 2) as (a, b), http_client() as client, \
            ws_connect(a.ws_url(f"/channels/{CHANNEL}?since=0")) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        before = [await publish(client, a, CHANNEL, {"n": n}) for n in range(100)]
        await asyncio.to_thread(redis_process.command, "SAVE")
        snapshot = await asyncio.to_thread(redis_process.snapshot)
        before += [await publish(client, a, CHANNEL, {"n": n}) for n in range(100, 150)]
        assert [m["id"] for m in await recv_messages(ws, 150, within=10 * UNIT)] == before

        await asyncio.to_thread(redis_process.restart, snapshot=snapshot)
        after = [await publish_when_back(client, b, {"b": n}) for n in range(20)]
        assert not set(before) & set(after), "an acknowledged id was given again"
        assert len({i.rsplit("-", 1)[0] for i in after}) == 1
        assert [int(i.rsplit("-", 1)[1]) for i in after] == list(range(1, 21))

        frames = []
        async with asyncio.timeout(20 * UNIT):
            while len([f for f in frames if f["type"] == "message"]) < 20:
                frame = await recv_json(ws, within=None)
                if frame["type"] in ("message", "gap"):
                    frames.append(frame)
        assert frames[0]["type"] == "gap" and frames[0]["reason"] == "epoch"
        assert frames[0]["from"] == before[-1]
        assert [f["id"] for f in frames[1:]] == after
        assert [f["data"] for f in frames[1:]] == [{"b": n} for n in range(20)]

        # Both nodes go on in the new epoch; nothing acknowledged after the restore is lost.
        later = await publish(client, a, CHANNEL, {"a": "later"})
        assert later.rsplit("-", 1)[0] == after[0].rsplit("-", 1)[0]
        for node in (a, b):
            answer = await poll(client, f"{node.url}/channels/{CHANNEL}", since="0")
            assert [m["id"] for m in answer["messages"]] == [*after, later]
