"""tidings.js in headless Chromium, on a server over the local Redis Cluster, while the
slot of the channel it reads is moved live to another Redis node.

The page reads one channel on one forced technique from one server; a
publisher keeps publishing over HTTP to another; the channel's slot is moved
with ``CLUSTER SETSLOT`` and ``MIGRATE`` (tests/rediskit.py). The page must
get every message once, in order, with no gap, no broker notice and no
reconnection.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from browserkit import browser, page, serving
from test_browser_client import TECHNIQUES, open_client, wait_for, wait_for_ids

from conftest import UNIT
from rediskit import RedisClusterProcesses

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures


def two_channels_on_two_nodes(cluster: RedisClusterProcesses, prefix: str) -> list[tuple[str, int]]:
    """Two channels (name, slot) whose slots are on two different nodes."""
    chosen: list[tuple[str, int]] = []
    owners: set[int] = set()
    for n in range(200):
        channel = f"{prefix}-{n}"
        slot = cluster.nodes[0].command("CLUSTER", "KEYSLOT", f"tidings:{{{channel}}}:log")
        assert isinstance(slot, int)
        owner = cluster.owner(slot)
        if owner not in owners:
            owners.add(owner)
            chosen.append((channel, slot))
        if len(chosen) == 2:
            return chosen
    raise AssertionError("no two channels on two nodes")


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_tidings_js_reads_through_a_live_slot_migration(
    page: Any, technique: str, redis_cluster: RedisClusterProcesses, redis_cluster_url: str,
) -> None:
    (moving, slot), (stays, stays_slot) = two_channels_on_two_nodes(redis_cluster, technique)
    target = redis_cluster.owner(stays_slot)
    published: dict[str, list[str]] = {moving: [], stays: []}
    refused: list[str] = []
    progress = asyncio.Event()
    stop = asyncio.Event()

    async def keep_publishing(client: httpx.AsyncClient, channel: str) -> None:
        n = 0
        while not stop.is_set():
            response = await client.post(f"/channels/{channel}", json={"n": n})
            if response.status_code == 201:
                published[channel].append(response.json()["id"])
                progress.set()
            else:
                refused.append(response.text)
            n += 1

    async def more(count: int, *channels: str) -> None:
        targets = {c: len(published[c]) + count for c in channels}
        async with asyncio.timeout(10 * UNIT):
            while any(len(published[c]) < n for c, n in targets.items()):
                progress.clear()
                await progress.wait()

    # Published through another server: the page's server hears of each message
    # over pub/sub only, as a node of a cluster of tidings nodes does.
    async with serving(broker=redis_cluster_url) as served, \
            serving(broker=redis_cluster_url) as publisher, \
            httpx.AsyncClient(base_url=publisher.url, timeout=10 * UNIT) as client:
        await open_client(page, served, [moving], transports=[technique])
        await wait_for(page, "window.client.state === 'open'")
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(keep_publishing(client, c)) for c in (moving, stays)]
            try:
                await more(5, moving, stays)
                source = await asyncio.to_thread(redis_cluster.begin_migration, slot, target)
                await more(3, stays)
                await asyncio.to_thread(redis_cluster.move_keys, slot, source, target)
                await more(3, stays)
                await asyncio.to_thread(redis_cluster.end_migration, slot, source, target)
                await more(10, moving, stays)
            finally:
                stop.set()
            for task in tasks:
                await task
        assert refused == []
        await wait_for_ids(page, moving, published[moving])
        assert await page.evaluate("window.log.gaps") == []
        assert await page.evaluate("window.log.broker") == []
        assert await page.evaluate("window.log.errors") == []
        states = [s["state"] for s in await page.evaluate("window.log.states")]
        assert states == ["open"]
        assert await page.evaluate("window.client.transport") == technique
