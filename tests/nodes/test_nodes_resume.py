"""A reader that moves to another node resumes from its last id: no duplicate, no hole.

While a publisher goes on publishing at a steady pace on random nodes, an SSE
client hops A → B → C → A with ``Last-Event-ID``, and a WebSocket client hops
with ``?since=`` and with the ``subscribe`` command's ``since``. A cursor that
the next node has not seen yet (published on another node a moment ago) is a
valid position there, not a ``400``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from unittest.mock import ANY

import pytest
from nodekit import Node, PacedPublisher, assert_exactly, open_sse, publish, start_nodes
from websockets.asyncio.client import connect as ws_connect

from tidings.testing import UNIT, epoch_of, http_client, recv_json, recv_messages, seq_of

COUNT = 160
#: Messages read on each node before moving to the next.
PER_HOP = 40
#: Messages published while the reader is away, before it reconnects: it
#: resumes from a backlog while new messages keep coming.
AWAY = 10


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[list[Node]]:
    async with start_nodes(redis_url, 3) as started:
        yield started


async def while_publishing(
        nodes: list[Node], channel: str,
        read: Callable[[PacedPublisher], Coroutine[Any, Any, list[dict[str, Any]]]]) -> None:
    """Run ``read`` while COUNT messages are published; it must return them exactly."""
    async with http_client() as client:
        publisher = PacedPublisher(client, nodes, channel, COUNT, seed=7)
        async with asyncio.timeout(30 * UNIT), asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(read(publisher))
            tasks.create_task(publisher.run())
    received = reader.result()
    assert_exactly([m["id"] for m in received], publisher.ids, "after moving between nodes")
    assert [m["data"] for m in received] == list(range(COUNT))


async def test_sse_reconnects_to_another_node_with_last_event_id(nodes: list[Node]) -> None:
    a, b, c = nodes
    channel = "sse-moves"

    async def read(publisher: PacedPublisher) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        last_id: str | None = None
        async with http_client() as client:
            for node in (a, b, c, a):
                headers = {"Last-Event-ID": last_id} if last_id else {}
                path = f"/channels/{channel}" + ("" if last_id else "?since=0")
                async with open_sse(client, node, path, headers) as stream:
                    received += await stream.message_objects(PER_HOP, within=10 * UNIT)
                    last_id = stream.last_id
                assert last_id == received[-1]["id"]
                await publisher.wait_for(len(received) + AWAY)
        return received

    await while_publishing(nodes, channel, read)


async def test_websocket_moves_with_since_in_the_url_and_in_subscribe(
        nodes: list[Node]) -> None:
    a, b, c = nodes
    channel = "ws-moves"

    async def by_url(node: Node, since: str) -> list[dict[str, Any]]:
        async with ws_connect(node.ws_url(f"/channels/{channel}?since={since}")) as ws:
            subscribed = await recv_json(ws)
            assert subscribed == {"type": "subscribed", "channel": channel,
                                  "next": subscribed["next"], "client": ANY}, subscribed
            if since != "0":
                assert subscribed["next"] == since, subscribed
            return await recv_messages(ws, PER_HOP, within=10 * UNIT)

    async def by_command(node: Node, since: str) -> list[dict[str, Any]]:
        async with ws_connect(node.ws_url("/subscribe")) as ws:
            await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": channel,
                                      "since": since}))
            ack = await recv_json(ws)
            assert ack == {"type": "ack", "req": 1, "channel": channel, "next": since,
                           "client": ANY}, ack
            return await recv_messages(ws, PER_HOP, within=10 * UNIT)

    async def read(publisher: PacedPublisher) -> list[dict[str, Any]]:
        received = await by_url(a, "0")
        for node, subscribe in ((b, by_url), (c, by_command), (a, by_command)):
            await publisher.wait_for(len(received) + AWAY)
            received += await subscribe(node, received[-1]["id"])
        return received

    await while_publishing(nodes, channel, read)


async def test_sse_on_two_channels_moves_with_the_multi_channel_cursor(
        nodes: list[Node]) -> None:
    """``/subscribe?channel=x&channel=y``: ``Last-Event-ID`` names a position per channel."""
    channels = ("multi-x", "multi-y")
    per_channel = 60
    async with http_client() as client:
        publishers = [PacedPublisher(client, nodes, channel, per_channel, pace=0.02, seed=n)
                      for n, channel in enumerate(channels)]

        async def read() -> list[dict[str, Any]]:
            received: list[dict[str, Any]] = []
            last_id: str | None = None
            query = "&".join(f"channel={channel}" for channel in channels)
            for node in nodes:
                headers = {"Last-Event-ID": last_id} if last_id else {}
                path = f"/subscribe?{query}" + ("" if last_id else "&since=0")
                async with open_sse(client, node, path, headers) as stream:
                    received += await stream.message_objects(per_channel * 2 // 3, within=10 * UNIT)
                    last_id = stream.last_id
                assert last_id is not None and "=" in last_id, last_id
                for publisher in publishers:
                    await publisher.wait_for(len(received) // 2 + AWAY)
            return received

        async with asyncio.timeout(30 * UNIT), asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(read())
            for publisher in publishers:
                tasks.create_task(publisher.run())
    received = reader.result()
    for channel, publisher in zip(channels, publishers, strict=True):
        assert_exactly([m["id"] for m in received if m["channel"] == channel], publisher.ids,
                       f"{channel} read on A, B, C")


async def test_a_cursor_from_another_node_is_valid_at_once(nodes: list[Node]) -> None:
    """Published on A, read on B at once from that id, by every technique: never a 400."""
    a, b, _c = nodes
    channel = "just-published"
    async with http_client() as client:
        # B has never read the channel: it loads it from Redis.
        first = await publish(client, a, channel, "first")
        body = (await client.get(f"{b.url}/channels/{channel}", params={"since": first})).json()
        assert body == {"messages": [], "next": first}, body

        # B follows the channel now; each id is read there before B may have heard of it.
        async with open_sse(client, b, f"/channels/{channel}?since={first}") as stream:
            for n in range(30):
                latest = await publish(client, a, channel, n)
                response = await client.get(f"{b.url}/channels/{channel}",
                                            params={"since": latest})
                assert response.status_code == 200, (n, response.text)
                assert response.json() == {"messages": [], "next": latest}, n
                (message,) = await stream.message_objects(1)
                assert message["id"] == latest, n

        # A long poll from an id B has not seen waits for the next message.
        latest = await publish(client, a, channel, "before")
        waiting = asyncio.create_task(client.get(f"{b.url}/channels/{channel}",
                                                 params={"since": latest, "wait": 5 * UNIT}))
        following = await publish(client, a, channel, "after")
        body = (await waiting).json()
        assert [m["id"] for m in body["messages"]] == [following], body

        # An SSE stream and a WebSocket from such an id start right there.
        latest = await publish(client, a, channel, "sse")
        async with open_sse(client, b, f"/channels/{channel}",
                            {"Last-Event-ID": latest}) as stream:
            following = await publish(client, a, channel, "next")
            (message,) = await stream.message_objects(1)
            assert message["id"] == following
        latest = await publish(client, a, channel, "websocket")
        async with ws_connect(b.ws_url(f"/channels/{channel}?since={latest}")) as ws:
            assert (await recv_json(ws))["next"] == latest
            following = await publish(client, a, channel, "next")
            (frame,) = await recv_messages(ws, 1)
            assert frame["id"] == following

        # A cursor ahead of the whole log is still refused, after B asked Redis.
        ahead = f"{epoch_of(following)}-{seq_of(following) + 1000}"
        response = await client.get(f"{b.url}/channels/{channel}", params={"since": ahead})
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_cursor"
