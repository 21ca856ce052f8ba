"""Long polling over real sockets, with httpx: park, wake on publish, expire."""

from __future__ import annotations

import asyncio
import time

import httpx

from conftest import SAMPLE_VALUES, until
from tidings import Server
from tidings.testing import UNIT, http_client, poll, publish, publish_many


async def wait_until_parked(server: Server, count: int = 1) -> None:
    """Until ``count`` long polls are parked on the server (so a publish must wake them)."""
    await until(lambda: server.statistics()["long_polls"] >= count)


async def test_answers_at_once_when_messages_exist_after_since(server: Server) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "c", ["a", "b"])
        started = time.monotonic()
        async with asyncio.timeout(2 * UNIT):
            answer = await poll(client, "/channels/c", since="0", wait=30)
        assert time.monotonic() - started < UNIT
        assert [m["id"] for m in answer["messages"]] == ids
        assert answer["next"] == ids[-1]


async def test_wakes_as_soon_as_a_message_is_published(server: Server) -> None:
    async with http_client(server) as client, http_client(server) as publisher:
        start = (await poll(client, "/channels/c"))["next"]
        parked = asyncio.create_task(poll(client, "/channels/c", since=start, wait=30))
        await wait_until_parked(server)
        assert not parked.done()
        new = await publish(publisher, "c", {"price": 1.5})
        async with asyncio.timeout(2 * UNIT):
            answer = await parked
        assert [(m["id"], m["data"]) for m in answer["messages"]] == [(new, {"price": 1.5})]
        assert answer["next"] == new
        assert not server.statistics()["long_polls"]


async def test_every_waiter_at_the_end_gets_the_message(server: Server) -> None:
    async with http_client(server) as publisher:
        start = (await poll(publisher, "/channels/c"))["next"]
        clients = [http_client(server) for _ in range(5)]
        try:
            parked = [asyncio.create_task(poll(c, "/channels/c", since=start, wait=30))
                      for c in clients]
            await wait_until_parked(server, 5)
            new = await publish(publisher, "c", "hello")
            async with asyncio.timeout(2 * UNIT):
                answers = await asyncio.gather(*parked)
        finally:
            for c in clients:
                await c.aclose()
    for answer in answers:
        assert answer == {"messages": [answer["messages"][0]], "next": new}
        assert answer["messages"][0]["data"] == "hello"


async def test_published_values_arrive_unchanged(server: Server) -> None:
    async with http_client(server) as client, http_client(server) as publisher:
        cursor = (await poll(client, "/channels/v"))["next"]
        for value in SAMPLE_VALUES:
            parked = asyncio.create_task(poll(client, "/channels/v", since=cursor, wait=30))
            await wait_until_parked(server)
            new = await publish(publisher, "v", value)
            async with asyncio.timeout(2 * UNIT):
                answer = await parked
            assert [(m["id"], m["data"]) for m in answer["messages"]] == [(new, value)]
            cursor = answer["next"]


async def test_answers_empty_with_the_same_next_when_the_wait_ends(server: Server) -> None:
    async with http_client(server) as client:
        last = await publish(client, "c", "old")
        started = time.monotonic()
        async with asyncio.timeout(3 * UNIT):
            answer = await poll(client, "/channels/c", since=last, wait=round(0.2 * UNIT, 3))
        elapsed = time.monotonic() - started
        assert answer == {"messages": [], "next": last}
        assert elapsed >= 0.15 * UNIT
        assert not server.statistics()["long_polls"]


async def test_wait_0_answers_at_once(server: Server) -> None:
    async with http_client(server) as client:
        last = await publish(client, "c", "old")
        async with asyncio.timeout(UNIT):
            answer = await poll(client, "/channels/c", since=last, wait=0)
        assert answer == {"messages": [], "next": last}


async def test_prefer_wait_header_makes_a_long_poll(server: Server) -> None:
    async with http_client(server) as client, http_client(server) as publisher:
        last = await publish(client, "c", "old")
        parked = asyncio.create_task(
            client.get("/channels/c", params={"since": last},
                       headers={"Prefer": "respond-async, wait=30"})
        )
        await wait_until_parked(server)
        new = await publish(publisher, "c", "new")
        async with asyncio.timeout(2 * UNIT):
            response = await parked
        assert response.status_code == 200
        assert [m["id"] for m in response.json()["messages"]] == [new]


async def test_prefer_wait_expires_too(server: Server) -> None:
    async with http_client(server) as client:
        last = await publish(client, "c", "old")
        async with asyncio.timeout(3 * UNIT):
            response = await client.get("/channels/c", params={"since": last},
                                        headers={"Prefer": f"wait={round(0.2 * UNIT, 3)}"})
        assert response.json() == {"messages": [], "next": last}


async def test_a_wait_above_max_wait_is_clamped(make_server) -> None:
    server = await make_server(max_wait=0.3)
    async with http_client(server) as client:
        last = await publish(client, "c", "old")
        started = time.monotonic()
        async with asyncio.timeout(UNIT + 0.3):
            answer = await poll(client, "/channels/c", since=last, wait=100)
        assert answer == {"messages": [], "next": last}
        assert time.monotonic() - started >= 0.25


async def test_the_connection_is_reused_after_a_long_poll(server: Server) -> None:
    """Keep-alive: a long poll answer is a complete response, the next request follows."""
    transport = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=1))
    async with httpx.AsyncClient(base_url=server.url, transport=transport) as client:
        last = await publish(client, "c", 0)
        for _ in range(3):
            answer = await poll(client, "/channels/c", since=last, wait=0.05)
            assert answer["next"] == last
            last = await publish(client, "c", 1)
        assert server.statistics()["http"] == 1


async def test_a_client_that_leaves_is_forgotten(server: Server) -> None:
    async with http_client(server) as client:
        last = await publish(client, "c", "old")
        parked = asyncio.create_task(poll(client, "/channels/c", since=last, wait=30))
        await wait_until_parked(server)
    parked.cancel()  # the client is gone with its connection
    await until(lambda: not server.statistics()["long_polls"])
    async with http_client(server) as client:
        await publish(client, "c", "after the client left")


async def test_multi_channel_long_poll(server: Server) -> None:
    async with http_client(server) as client, http_client(server) as publisher:
        start = (await poll(client, "/subscribe", channel=["a", "b"]))["next"]
        parked = asyncio.create_task(
            poll(client, "/subscribe", channel=["a", "b"], since=start, wait=30))
        await wait_until_parked(server)
        b1 = await publish(publisher, "b", "b1")
        async with asyncio.timeout(2 * UNIT):
            answer = await parked
        assert [(m["channel"], m["id"]) for m in answer["messages"]] == [("b", b1)]
        a_start = start.split(",")[0]
        assert answer["next"] == f"{a_start},b={b1}"

        a1 = await publish(publisher, "a", "a1")
        b2 = await publish(publisher, "b", "b2")
        async with asyncio.timeout(2 * UNIT):
            answer = await poll(client, "/subscribe", channel=["a", "b"], since=answer["next"],
                                wait=30)
        assert sorted(m["id"] for m in answer["messages"]) == sorted([a1, b2])
        assert answer["next"] == f"a={a1},b={b2}"

        # Nothing new: the wait ends with the same cursor.
        again = await poll(client, "/subscribe", channel=["a", "b"], since=answer["next"],
                           wait=0.1)
        assert again == {"messages": [], "next": answer["next"]}
