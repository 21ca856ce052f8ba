"""The Python client reading its user's channels (``Client.subscribe_server_side``).

On each technique: the channels the server reads for the user are announced
(:class:`tidings.Subscribed`), one the application adds while reading arrives,
a restart of the server is resumed exactly (a channel added while away
included), a channel removed is announced (:class:`tidings.Unsubscribed`) and
nothing more of it comes, also when it was removed while the client was away.
Every wait is bounded by ``UNIT``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from clientkit import FAST, TECHNIQUES, StatusLog

import tidings
from tidings import ConnectRequest, Identity, Server, Settings
from tidings.brokers.memory import MemoryBroker
from tidings.testing import UNIT

COOKIE = {"Cookie": "user=alice"}


class Node:
    """A server naming the user of the ``user`` cookie, restartable on its port and broker;
    while :attr:`open` is cleared, ``on_connect`` holds every connection back."""

    def __init__(self) -> None:
        self.broker = MemoryBroker()
        self.settings = Settings(host="127.0.0.1", port=0)
        self.server: Server | None = None
        self.open = asyncio.Event()
        self.open.set()

    async def start(self) -> Server:
        server = Server(self.settings, broker=self.broker)

        @server.on_connect
        async def on_connect(request: ConnectRequest) -> Identity | None:
            await self.open.wait()
            user = request.cookies.get("user")
            return Identity(user) if user else None

        await server.start()
        self.settings = self.settings.replace(port=server.port)
        self.server = server
        return server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.aclose()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"


@asynccontextmanager
async def node() -> AsyncIterator[Node]:
    served = Node()
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


async def until(subscription: tidings.Subscription[Any], *wanted: Any,
                within: float = 10 * UNIT) -> list[Any]:
    """Items of ``subscription`` until every one of ``wanted`` came (an item ``==`` it, or a
    message whose data is it)."""
    items: list[Any] = []
    missing = list(wanted)
    async with asyncio.timeout(within):
        async for item in subscription:
            items.append(item)
            for want in missing:
                if item == want or (isinstance(item, tidings.Message) and item.data == want):
                    missing.remove(want)
                    break
            if not missing:
                return items
    raise AssertionError(f"the subscription ended before {missing!r}: {items}")


def what(items: list[Any]) -> list[Any]:
    """Items as comparable tuples: messages by channel and data, announcements by channel."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, tidings.Message):
            out.append((item.channel, item.data))
        elif isinstance(item, tidings.Subscribed):
            out.append(("+", item.channel))
        elif isinstance(item, tidings.Unsubscribed):
            out.append(("-", item.channel))
        else:
            out.append(item)
    return out


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_reads_added_channels_resumes_them_and_stops_removed_ones(technique: str) -> None:
    async with node() as served, tidings.connect(served.url, technique, headers=COOKIE,
                                                 **FAST) as client:
        assert served.server is not None
        await served.server.subscribe_user("alice", "inbox:alice")
        mine = client.subscribe_server_side()
        first = await anext(mine)
        assert isinstance(first, tidings.Subscribed) and first.channel == "inbox:alice"
        assert first.next is not None
        await served.server.publish("inbox:alice", "hello")
        assert what(await until(mine, "hello")) == [("inbox:alice", "hello")]

        await served.server.subscribe_user("alice", "room:b")
        await served.server.publish("room:b", "one")
        assert what(await until(mine, "one")) == [("+", "room:b"), ("room:b", "one")]
        assert mine.channels == ("inbox:alice", "room:b")

        await served.stop()  # the server restarts: added and published meanwhile
        server = await served.start()
        await server.publish("room:b", "two")
        await server.subscribe_user("alice", "room:c")
        await server.publish("room:c", "three")
        await server.publish("room:b", "four")
        got = what(await until(mine, "three", "four", within=20 * UNIT))
        assert [i for i in got if i[0] == "room:b"] == [("room:b", "two"), ("room:b", "four")]
        assert got.index(("+", "room:c")) < got.index(("room:c", "three"))
        cursor = mine.cursor
        assert cursor is not None and "room:c=" in cursor and "room:b=" in cursor

        await server.unsubscribe_user("alice", "room:b")
        await server.publish("room:b", "five")
        await server.publish("room:c", "six")
        got = what(await until(mine, "six"))
        if ("-", "room:b") not in got:
            await server.publish("room:c", "seven")  # a parked long poll had the old set
            got += what(await until(mine, "seven"))
        assert ("-", "room:b") in got
        if technique != "longpoll":
            assert ("room:b", "five") not in got
        await server.publish("room:b", "eight")
        await server.publish("room:c", "nine")
        assert what(await until(mine, "nine")) == [("room:c", "nine")]
        assert mine.channels == ("inbox:alice", "room:c")


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_channel_removed_while_away_is_announced(technique: str) -> None:
    async with node() as served, tidings.connect(served.url, technique, headers=COOKIE,
                                                 **FAST) as client:
        assert served.server is not None
        await served.server.subscribe_user("alice", "room:a")
        await served.server.subscribe_user("alice", "room:b")
        mine = client.subscribe_server_side()
        async with asyncio.timeout(10 * UNIT):
            assert {(await anext(mine)).channel for _ in range(2)} == {"room:a", "room:b"}
        served.open.clear()
        await served.stop()
        server = await served.start()
        await server.unsubscribe_user("alice", "room:a")
        await server.publish("room:b", "still here")
        served.open.set()
        got = what(await until(mine, "still here", tidings.Unsubscribed("room:a"),
                               within=20 * UNIT))
        assert sorted(got) == [("-", "room:a"), ("room:b", "still here")]
        assert mine.channels == ("room:b",)


async def test_since_resumes_a_saved_cursor_in_another_client() -> None:
    async with node() as served:
        server = served.server
        assert server is not None
        await server.subscribe_user("alice", "inbox:alice")
        async with tidings.connect(served.url, "sse", headers=COOKIE, **FAST) as client:
            mine = client.subscribe_server_side()
            assert isinstance(await anext(mine), tidings.Subscribed)
            await server.publish("inbox:alice", 1)
            await until(mine, 1)
            saved = mine.cursor
        await server.publish("inbox:alice", 2)
        await server.publish("inbox:alice", 3)
        assert saved is not None and saved.startswith("inbox:alice=")
        async with tidings.connect(served.url, "poll", headers=COOKIE, **FAST) as client:
            mine = client.subscribe_server_side(since=saved)
            got = what(await until(mine, 3))
        assert got == [("inbox:alice", 2), ("inbox:alice", 3)]


async def test_without_a_user_http_reads_are_refused() -> None:
    server = Server(Settings(host="127.0.0.1", port=0))
    async with server, tidings.connect(server.url, "poll", **FAST) as client:
        mine = client.subscribe_server_side()
        with pytest.raises(tidings.RequestRefused) as refused:
            async with asyncio.timeout(10 * UNIT):
                await anext(mine)
    assert refused.value.code == "no_channel"


def test_bad_arguments_are_usage_errors() -> None:
    client = tidings.connect("http://127.0.0.1:9")
    with pytest.raises(tidings.UsageError):
        client.subscribe_server_side(since="k2j4h5g6-3")  # names no channel
    with pytest.raises(tidings.UsageError):
        client.subscribe_server_side(on_gap="ignore")


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_channel_added_to_an_empty_set_loses_nothing(technique: str) -> None:
    """Reading an empty set, the cursor is "" (names no channel), not none: a channel added
    between two polls is read from where it was added, not from its end."""
    log = StatusLog()
    async with node() as served, tidings.connect(served.url, technique, headers=COOKIE,
                                                 longpoll_wait=1, on_status=log,
                                                 **FAST) as client:
        assert served.server is not None
        mine = client.subscribe_server_side()
        await log.wait_for(tidings.Connected)  # the server named the (empty) set
        await served.server.subscribe_user("alice", "room:x")
        await served.server.publish("room:x", "first")
        got = what(await until(mine, "first"))
    assert got == [("+", "room:x"), ("room:x", "first")]


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_channel_added_to_an_empty_set_while_away_loses_nothing(technique: str) -> None:
    log = StatusLog()
    async with node() as served, tidings.connect(served.url, technique, headers=COOKIE,
                                                 longpoll_wait=1, on_status=log,
                                                 **FAST) as client:
        mine = client.subscribe_server_side()
        await log.wait_for(tidings.Connected)
        served.open.clear()  # the reconnection waits in on_connect
        await served.stop()
        server = await served.start()
        await server.subscribe_user("alice", "room:x")
        await server.publish("room:x", "first")
        served.open.set()
        got = what(await until(mine, "first", within=20 * UNIT))
    assert got == [("+", "room:x"), ("room:x", "first")]
