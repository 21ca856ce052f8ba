"""Clear errors: bad URLs and arguments, refused connections, refusals, closed clients.

Also the synchronous :class:`tidings.Publisher`, run in a thread while the
server runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from clientkit import UNIT, fast_client, free_port, take

import tidings
from tidings import (
    ClientClosed,
    ConnectionFailed,
    Publisher,
    RequestRefused,
    Server,
    UsageError,
)

ServerFactory = Callable[..., Awaitable[Server]]


@pytest.mark.parametrize("url", ["", "127.0.0.1:8000", "ftp://host", "http://", "http://h/?q=1",
                                 "http://exa mple.com"])
def test_bad_urls_are_refused_at_once(url: str) -> None:
    with pytest.raises(UsageError, match="URL"):
        tidings.connect(url)
    with pytest.raises(UsageError, match="URL"):
        Publisher(url)


@pytest.mark.parametrize("url", ["http://h:1", "https://h/prefix/", "ws://h:1", "wss://h"])
def test_good_urls(url: str) -> None:
    client = tidings.connect(url)
    assert client.url.startswith("http")
    assert not client.url.endswith("/")


@pytest.mark.parametrize("options", [{"transport": "pigeon"}, {"poll_interval": 0},
                                     {"buffer": 0}, {"connect_timeout": -1}])
def test_bad_options_are_usage_errors(options: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        tidings.connect("http://h", **options)  # type: ignore[arg-type]


async def test_bad_subscriptions_and_publishes_are_usage_errors(server: Server) -> None:
    async with fast_client(server.url) as client:
        with pytest.raises(UsageError, match="characters"):
            client.subscribe("no spaces")
        with pytest.raises(UsageError):
            client.subscribe("a", "b", since="abcdefgh-1")
        with pytest.raises(UsageError):
            client.subscribe()
        with pytest.raises(UsageError):
            client.subscribe("a", on_gap="ignore")
        with pytest.raises(UsageError, match="JSON"):
            await client.publish("a", float("nan"))
        with pytest.raises(UsageError, match="JSON"):
            await client.publish("a", object())


@pytest.mark.parametrize("transport", ["auto", "websocket", "poll"])
async def test_publishing_to_nothing_fails_at_once(transport: str) -> None:
    async with fast_client(f"http://127.0.0.1:{free_port()}", transport) as client:
        async with asyncio.timeout(2 * UNIT):
            with pytest.raises(ConnectionFailed, match="cannot"):
                await client.publish("a", 1)


@pytest.mark.parametrize("transport", ["auto", "websocket", "poll"])
async def test_refusals_carry_the_servers_explanation(make_server: ServerFactory,
                                                      transport: str) -> None:
    server = await make_server(max_message_size=100)
    async with fast_client(server.url, transport) as client:
        with pytest.raises(RequestRefused) as caught:
            await client.publish("a", "x" * 200)
    assert caught.value.code == "payload_too_large"
    assert caught.value.status == (None if transport == "websocket" else 413)
    assert "100" in caught.value.message
    assert "payload_too_large" in str(caught.value)


@pytest.mark.parametrize("transport", ["websocket", "sse", "longpoll", "poll"])
async def test_a_refused_subscription_ends_with_the_refusal(server: Server,
                                                            transport: str) -> None:
    # The server refuses a cursor ahead of its log with 400 invalid_cursor.
    async with fast_client(server.url, transport) as client:
        message_id = await client.publish("a", 1)
        ahead = message_id.rsplit("-", 1)[0] + "-99"
        subscription = client.subscribe("a", since=ahead)
        with pytest.raises(RequestRefused) as caught:
            await take(subscription, 1)
    assert caught.value.code == "invalid_cursor"
    assert subscription.state == "closed"


async def test_a_wrong_path_is_not_found(server: Server) -> None:
    async with fast_client(server.url + "/nothing-here", "sse") as client:
        with pytest.raises(RequestRefused) as caught:
            await take(client.subscribe("a"), 1)
    assert (caught.value.status, caught.value.code) == (404, "not_found")


async def test_a_closed_client(server: Server) -> None:
    client = fast_client(server.url)
    async with client:
        subscription = client.subscribe("a", since="0")
    with pytest.raises(ClientClosed):
        await anext(subscription)
    with pytest.raises(ClientClosed):
        client.subscribe("a")
    with pytest.raises(ClientClosed):
        await client.publish("a", 1)
    await client.aclose()  # idempotent


async def test_closing_the_client_ends_a_waiting_loop(server: Server) -> None:
    client = fast_client(server.url, "longpoll")
    subscription = client.subscribe("quiet")
    waiting = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)  # let it start waiting
    await client.aclose()
    with pytest.raises(ClientClosed):
        async with asyncio.timeout(2 * UNIT):
            await waiting


async def test_the_synchronous_publisher(server: Server) -> None:
    async with fast_client(server.url) as client:
        subscription = client.subscribe("jobs", since="0")

        def cron_job() -> list[str]:
            with Publisher(server.url) as publisher:
                return [publisher.publish("jobs", {"n": n}) for n in range(3)]

        ids = await asyncio.to_thread(cron_job)
        items = await take(subscription, 3)
        assert [(i.id, i.data) for i in items] == [(id, {"n": n}) for n, id in enumerate(ids)]


async def test_the_synchronous_publisher_errors(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=100)

    def misuse() -> list[type[Exception]]:
        caught: list[type[Exception]] = []
        publisher = Publisher(server.url)
        for channel, data in [("bad channel", 1), ("ok", "x" * 200), ("ok", {1, 2})]:
            try:
                publisher.publish(channel, data)
            except (UsageError, RequestRefused) as exc:
                caught.append(type(exc))
        publisher.close()
        try:
            publisher.publish("ok", 1)
        except ClientClosed as exc:
            caught.append(type(exc))
        try:
            Publisher(f"http://127.0.0.1:{free_port()}", timeout=UNIT).publish("ok", 1)
        except ConnectionFailed as exc:
            caught.append(type(exc))
        return caught

    assert await asyncio.to_thread(misuse) == [UsageError, RequestRefused, UsageError,
                                              ClientClosed, ConnectionFailed]
