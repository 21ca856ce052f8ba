"""The Python client with tokens: a function that refreshes, resume with nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from authkit import AUTH, publish_ok, token

import tidings
from tidings import Backoff
from tidings.errors import RequestRefused, UsageError
from tidings.testing import UNIT, http_client

TTL = 1.5 * UNIT
FAST = {"backoff": Backoff(initial=0.01, maximum=0.1), "poll_interval": 0.1 * UNIT,
        "longpoll_wait": 30.0}


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll", "poll"])
async def test_a_token_function_is_called_again_when_the_token_expires(
        make_server: Any, transport: str) -> None:
    server = await make_server(auth=AUTH)
    calls = 0

    async def fetch_token() -> str:
        nonlocal calls
        calls += 1
        return token(subscribe=["chat:a"], ttl=TTL)

    async with tidings.connect(server.url, transport, token=fetch_token, **FAST) as client, \
            http_client(server) as publisher:
        subscription = client.subscribe("chat:a", since="0")
        published: list[str] = []

        async def publish_across_expiries() -> None:
            # Messages before, during and after at least one expiry and reconnection.
            while len(published) < 10:
                published.append(await publish_ok(publisher, "chat:a", len(published)))
                await asyncio.sleep(TTL / 4)

        received = []
        async with asyncio.timeout(20 * UNIT), asyncio.TaskGroup() as tasks:
            tasks.create_task(publish_across_expiries())
            async for item in subscription:
                assert isinstance(item, tidings.Message), item
                received.append(item.id)
                if len(received) == 10:
                    break
        assert received == published
        assert calls >= 2, "the token was never refreshed"
        if transport == "websocket":  # refreshed on the open connection (test_auth_refresh.py)
            assert subscription.reconnects == 0
        else:
            assert subscription.reconnects >= 1


async def test_a_plain_string_token_and_publishing(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    granted = token(subscribe=["chat:*"], publish=["chat:*"])
    async with tidings.connect(server.url, "sse", token=granted) as client:
        subscription = client.subscribe("chat:a", since="0")
        message_id = await client.publish("chat:a", "over HTTP")
        async with asyncio.timeout(5 * UNIT):
            item = await anext(subscription)
        assert isinstance(item, tidings.Message) and item.id == message_id
        with pytest.raises(RequestRefused) as info:
            await client.publish("public:a", 1)
        assert (info.value.status, info.value.code) == (403, "forbidden")
    async with tidings.connect(server.url, "websocket", token=granted) as client:
        assert await client.publish("chat:b", "over the WebSocket")


async def test_publish_retries_once_with_a_fresh_token(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    tokens = iter([token(publish=["chat:*"], ttl=-5), token(publish=["chat:*"])])
    async with tidings.connect(server.url, "sse", token=lambda: next(tokens)) as client:
        assert await client.publish("chat:a", 1)


async def test_an_expired_plain_token_ends_the_subscription(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    expired = token(subscribe=["chat:a"], ttl=-5)
    async with tidings.connect(server.url, "longpoll", token=expired) as client:
        with pytest.raises(RequestRefused) as info:
            async with asyncio.timeout(5 * UNIT):
                async for _ in client.subscribe("chat:a"):
                    pass
        assert (info.value.status, info.value.code) == (401, "token_expired")


def test_a_bad_token_option_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        tidings.connect("http://127.0.0.1:1", token=42)  # type: ignore[arg-type]
