"""The client receives live and retained messages with every technique."""

from __future__ import annotations

from typing import Any

import pytest
from clientkit import TECHNIQUES, StatusLog, fast_client, take

from tidings import BrokerStatus, Connected, Disconnected, Message, Server

SAMPLES: list[Any] = [
    {"nested": {"list": [1, 2.5, True, None]}}, "line one\nline two\r\nthree\rend",
    "unicode: héllo ✓ 😀 \u2028", 12345678901234567890, [], None,
    "data: not an sse field\n\nid: nor this",
]


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_live_messages_arrive_unchanged_and_in_order(server: Server, transport: str) -> None:
    status = StatusLog()
    async with fast_client(server.url, transport, on_status=status) as client:
        subscription = client.subscribe("news")
        # A subscription from "now" starts once connected: wait for that first.
        await status.wait_for(Connected, transport=transport)
        ids = [await client.publish("news", value) for value in SAMPLES]
        items = await take(subscription, len(SAMPLES))
        assert items == [Message("news", id, value, item.time)
                         for id, value, item in zip(ids, SAMPLES, items, strict=True)]
        assert subscription.transport == transport
        assert subscription.cursor == ids[-1]


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_several_channels_in_one_subscription(server: Server, transport: str) -> None:
    async with fast_client(server.url, transport) as client:
        retained = await client.publish("a", "old")
        subscription = client.subscribe("a", "b", since="0")
        first = await take(subscription, 1)
        assert first[0].id == retained
        b1 = await client.publish("b", 1)
        a2 = await client.publish("a", 2)
        items = await take(subscription, 2)
        assert [(i.channel, i.id) for i in items] == [("b", b1), ("a", a2)]
        assert subscription.cursor is not None
        assert f"a={a2}" in subscription.cursor and f"b={b1}" in subscription.cursor


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_resume_from_an_id_of_another_technique(server: Server, transport: str) -> None:
    async with fast_client(server.url, "poll") as poller:
        ids = [await poller.publish("log", n) for n in range(5)]
    async with fast_client(server.url, transport) as client:
        items = await take(client.subscribe("log", since=ids[1]), 3)
        assert [i.data for i in items] == [2, 3, 4]


async def test_websocket_subscriptions_share_one_connection(server: Server) -> None:
    async with fast_client(server.url, "websocket") as client:
        news = client.subscribe("news", since="0")
        prices = client.subscribe("prices", since="0")
        again = client.subscribe("news", since="0")  # same channel: a private link
        await client.publish("news", "n")
        await client.publish("prices", "p")
        assert [i.data for i in await take(news, 1)] == ["n"]
        assert [i.data for i in await take(prices, 1)] == ["p"]
        assert [i.data for i in await take(again, 1)] == ["n"]
        shared = client._link
        assert shared is not None and set(shared.routes) == {"news", "prices"}


async def test_publishing_goes_over_the_websocket(server: Server,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with fast_client(server.url, "websocket") as client:

        async def no_http(*args: object, **kwargs: object) -> None:
            raise AssertionError("published over HTTP")

        monkeypatch.setattr(client._http, "post", no_http)
        subscription = client.subscribe("chat", since="0")
        message_id = await client.publish("chat", {"hi": 1})
        assert (await take(subscription, 1))[0].id == message_id


async def test_closing_a_subscription_ends_its_loop(server: Server) -> None:
    async with fast_client(server.url, "websocket") as client:
        async with client.subscribe("x", since="0") as subscription:
            await client.publish("x", 1)
            await take(subscription, 1)
        assert subscription.state == "closed"
        with pytest.raises(StopAsyncIteration):
            await anext(subscription)
        assert client._link is not None and "x" not in client._link.routes


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_broker_status_notices_reach_on_status(server: Server, transport: str) -> None:
    """A stream is told when the message store goes away and comes back; it stays connected."""
    status = StatusLog()
    async with fast_client(server.url, transport, on_status=status) as client:
        subscription = client.subscribe("news")
        await status.wait_for(Connected, transport=transport)
        assert server.broker.on_status is not None
        server.broker.on_status(False, "Redis at test: connection refused")
        away = await status.wait_for(BrokerStatus, available=False)
        assert away.transport == transport and "nothing is lost yet" in away.message
        server.broker.on_status(True, "Redis at test")
        await status.wait_for(BrokerStatus, available=True)
        message_id = await client.publish("news", "still here")
        assert (await take(subscription, 1))[0].id == message_id
        assert not [e for e in status.events if isinstance(e, Disconnected)]
