"""Polling clients that land on another node at every request miss nothing.

A load balancer without sticky sessions sends each request of a long-poll or
poll client to any node. While messages are published at a steady pace on
random nodes, a client that goes A, B, C, A, ... must still get every message
exactly once, in order, with no gap.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nodekit import Node, PacedPublisher, assert_exactly, start_nodes

from tidings.testing import UNIT, http_client

COUNT = 300
#: Seconds between two publishes: 300 messages in a couple of seconds.
PACE = 0.004


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[list[Node]]:
    async with start_nodes(redis_url, 3) as started:
        yield started


async def read_alternating(client: httpx.AsyncClient, nodes: list[Node], channel: str,
                           params: dict[str, Any],
                           interval: float) -> tuple[list[dict[str, Any]], int]:
    """Read from ``since=0`` until COUNT messages came, each request on the next node.

    A regular poll pauses ``interval`` seconds between requests, as a real
    poller does. Returns the messages and the number of requests. Sends each answer's
    ``ETag`` back as ``If-None-Match`` to the next node, so a ``304`` from a
    node that has not seen the cursor's message yet is exercised too.
    """
    received: list[dict[str, Any]] = []
    cursor, etag = "0", None
    requests = 0
    for node in itertools.cycle(nodes):
        if len(received) >= COUNT:
            return received, requests
        headers: dict[str, str] = {"If-None-Match": etag} if etag else {}
        response = await client.get(f"{node.url}/channels/{channel}",
                                    params={"since": cursor, **params}, headers=headers)
        requests += 1
        if response.status_code == 304:
            assert "wait" not in params, f"{node}: 304 to a long poll"
            await asyncio.sleep(interval)
            continue
        assert response.status_code == 200, f"{node}: {response.status_code} {response.text}"
        body = response.json()
        assert not body.get("gap"), f"{node} answered a gap at {cursor}: {body}"
        received.extend(body["messages"])
        if body["messages"]:
            assert body["next"] == body["messages"][-1]["id"], body
        cursor, etag = body["next"], response.headers.get("etag")
        await asyncio.sleep(interval)
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("params", "interval"), [
    pytest.param({"wait": str(5 * UNIT)}, 0.0, id="longpoll"),
    pytest.param({"limit": "7"}, 0.005, id="poll"),
])
async def test_client_alternating_nodes_gets_every_message_once(
        nodes: list[Node], params: dict[str, str], interval: float) -> None:
    channel = "alternating"
    async with http_client() as client:
        publisher = PacedPublisher(client, nodes, channel, COUNT, pace=PACE, seed=5)
        async with asyncio.timeout(30 * UNIT), asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(read_alternating(client, nodes, channel, params,
                                                        interval))
            tasks.create_task(publisher.run())
        received, requests = reader.result()
        assert_exactly([m["id"] for m in received], publisher.ids,
                       f"{params} alternating A, B, C")
        assert [m["data"] for m in received] == list(range(COUNT))
        assert requests >= len(nodes) * 3, "the client did not move between nodes enough"
