"""Presence across nodes on Redis: one view of the members whatever node each reader is on.

Two servers in this process, each with its own Redis broker on the test's
redis-server, talked to by clients we did not write (``websockets``, httpx).
Changes travel through Redis in batches (brokers/redis/presence.py), so every
wait for a join or a leave is bounded by a few test units.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from conftest import ServerFactory, until
from rediskit import RedisProcess
from tidings import Server
from tidings.brokers.redis.presence import (
    MAX_CHANGES_PER_SCRIPT,
    SharedPresence,
    encode_member,
    members_of,
    presence_keys,
)
from tidings.core.presence import Identity, Member, Presence
from tidings.testing import UNIT, http_client, open_sse, recv_json, ws_url

TIMEOUT = 20 * UNIT  # presence_timeout, when a test does not wait for it to run out


async def two_nodes(make_server: ServerFactory, url: str,
                    presence_timeout: float = TIMEOUT) -> tuple[Server, Server]:
    settings: dict[str, Any] = {"broker": url, "presence": True,
                                "presence_timeout": presence_timeout}
    return await make_server(**settings), await make_server(**settings)


async def clients_on(http: httpx.AsyncClient, channel: str) -> set[str]:
    response = await http.get(f"/channels/{channel}/presence")
    assert response.status_code == 200, response.text
    body = response.json()
    clients = {member["client"] for member in body["members"]}
    assert body["count"] == len(clients)
    return clients


async def wait_clients(http: httpx.AsyncClient, channel: str, wanted: set[str],
                       within: float = 5 * UNIT) -> None:
    """Until ``GET /channels/{channel}/presence`` lists exactly ``wanted``."""
    seen: set[str] = set()
    try:
        async with asyncio.timeout(within):
            while True:
                seen = await clients_on(http, channel)
                if seen == wanted:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{http.base_url} lists {seen}, not {wanted}") from None


async def frame_until(ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool],
                      within: float = 5 * UNIT) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            frame = await recv_json(ws)
            if wanted(frame):
                return frame


def local(server: Server) -> Presence:
    """The node's own readers (not the shared view)."""
    table = server.presence.table
    assert isinstance(table, SharedPresence)
    return table.local


def is_(kind: str, client: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame.get("type") == kind and frame.get("client") == client


async def test_readers_of_each_technique_on_two_nodes_are_seen_from_either(
        make_server: ServerFactory, redis_url: str) -> None:
    a, b = await two_nodes(make_server, redis_url)
    async with contextlib.AsyncExitStack() as stack:
        http = {name: await stack.enter_async_context(http_client(node))
                for name, node in (("a", a), ("b", b))}
        assert await clients_on(http["a"], "room") == set()
        streams: list[Any] = []
        event_streams: list[Any] = []
        long_polls: list[asyncio.Task[httpx.Response]] = []
        techniques: dict[str, str] = {}
        for name, node in (("a", a), ("b", b)):
            ws = await stack.enter_async_context(
                connect(ws_url(node, f"/channels/room?client=ws-{name}")))
            await recv_json(ws)
            streams.append(ws)
            sse = await stack.enter_async_context(
                open_sse(http[name], "/channels/room", {"client": f"sse-{name}"}))
            await sse.opening()
            event_streams.append(sse)  # kept: a stream dropped by the GC closes its connection
            first = await http[name].get("/channels/room", params={"client": f"poll-{name}"})
            assert first.status_code == 200
            parked = await stack.enter_async_context(http_client(node))
            long_polls.append(asyncio.create_task(parked.get("/channels/room", params={
                "client": f"lp-{name}", "since": first.json()["next"],
                "wait": str(10 * UNIT)})))
            techniques.update({f"ws-{name}": "websocket", f"sse-{name}": "sse",
                               f"poll-{name}": "poll", f"lp-{name}": "longpoll"})
        everyone = set(techniques)
        await wait_clients(http["a"], "room", everyone)
        await wait_clients(http["b"], "room", everyone)
        for name in ("a", "b"):
            body = (await http[name].get("/channels/room/presence")).json()
            assert {m["client"]: m["technique"] for m in body["members"]} == techniques
            assert body["users"] == 0 and body["more"] is False
            counted = (await http[name].get("/channels/room/presence?count")).json()
            assert counted == {"channel": "room", "count": 8, "users": 0}
        await http["a"].post("/channels/room", json="wake")  # the long polls answer
        for long_poll in long_polls:
            assert (await long_poll).status_code == 200
        for ws in streams:
            await ws.close()
        # The WebSockets went: gone from both views; the others stay.
        rest = everyone - {"ws-a", "ws-b"}
        await wait_clients(http["b"], "room", rest)
        await wait_clients(http["a"], "room", rest)


async def test_the_websocket_presence_command_counts_every_node(
        make_server: ServerFactory, redis_url: str) -> None:
    a, b = await two_nodes(make_server, redis_url)
    async with connect(ws_url(b, "/channels/hall?client=on-b")) as on_b:
        await recv_json(on_b)
        async with connect(ws_url(a, "/subscribe")) as asker:
            async with asyncio.timeout(5 * UNIT):
                while True:
                    await asker.send('{"type": "presence", "req": 1, "channel": "hall"}')
                    ack = await frame_until(asker, lambda f: f.get("req") == 1)
                    if ack["count"] == 1:
                        break
                    await asyncio.sleep(0.02)
            assert [m["client"] for m in ack["members"]] == ["on-b"]


async def test_joins_and_leaves_on_one_node_are_told_on_the_other(
        make_server: ServerFactory, redis_url: str) -> None:
    a, b = await two_nodes(make_server, redis_url)
    async with connect(ws_url(a, "/channels/room?client=watcher&presence=1")) as watcher:
        members = await frame_until(watcher, lambda f: f["type"] == "presence")
        assert [m["client"] for m in members["members"]] in ([], ["watcher"])
        async with connect(ws_url(b, "/channels/room?client=guest")) as guest:
            await recv_json(guest)
            join = await frame_until(watcher, is_("join", "guest"))
            assert join["technique"] == "websocket" and join["channel"] == "room"
        leave = await frame_until(watcher, is_("leave", "guest"))
        assert leave["client"] == "guest"
        # An SSE stream watching on B is told of a reader on A too.
        async with http_client(b) as http, open_sse(
                http, "/channels/room", {"presence": "1", "client": "sse"}) as stream:
            await stream.opening()
            async with connect(ws_url(a, "/channels/room?client=late")) as late:
                await recv_json(late)
                async with asyncio.timeout(5 * UNIT):
                    while True:
                        block = await stream.next_event()
                        if block.event == "join" and block.json()["client"] == "late":
                            break


async def test_a_client_moving_between_nodes_is_neither_a_leave_nor_a_join(
        make_server: ServerFactory, redis_url: str) -> None:
    a, b = await two_nodes(make_server, redis_url)
    async with connect(ws_url(a, "/channels/room?client=watcher&presence=1")) as watcher, \
            http_client(a) as http:
        async with connect(ws_url(a, "/channels/room?client=mover")) as first:
            await recv_json(first)
            await frame_until(watcher, is_("join", "mover"))
            async with connect(ws_url(b, "/channels/room?client=mover")) as second:
                await recv_json(second)
                await until(lambda: local(b).count("room")[0] == 1)
                await first.close()
                await until(lambda: local(a).count("room")[0] == 1)  # the watcher only
                # B still holds it: present, and the watcher is told nothing.
                assert "mover" in await clients_on(http, "room")
                async with connect(ws_url(b, "/channels/room?client=marker")) as marker:
                    await recv_json(marker)
                    # Batches go in order: the join of the marker comes after any leave.
                    frame = await frame_until(watcher, lambda f: f["type"] in ("join", "leave"))
                    assert frame == {**frame, "type": "join", "client": "marker"}
            leave = await frame_until(watcher, is_("leave", "mover"))
            assert leave["client"] == "mover"
        await wait_clients(http, "room", {"watcher"})


async def test_a_poller_that_stops_leaves_on_every_node(
        make_server: ServerFactory, redis_url: str) -> None:
    timeout = 2 * UNIT
    a, b = await two_nodes(make_server, redis_url, presence_timeout=timeout)
    async with connect(ws_url(a, "/channels/room?client=watcher&presence=1")) as watcher, \
            http_client(b) as http:
        assert (await http.get("/channels/room", params={"client": "p"})).status_code == 200
        await frame_until(watcher, is_("join", "p"))
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await frame_until(watcher, is_("leave", "p"), within=timeout + 5 * UNIT)
        assert loop.time() - stopped >= timeout * 0.9


async def test_a_closed_node_takes_its_members_out_at_once(
        make_server: ServerFactory, redis_url: str) -> None:
    a, b = await two_nodes(make_server, redis_url)
    async with http_client(a) as http, connect(ws_url(b, "/channels/room?client=on-b")) as on_b:
        await recv_json(on_b)
        await wait_clients(http, "room", {"on-b"})
        b.presence.touch(["room"], Identity("poller-on-b"), "poll")
        await wait_clients(http, "room", {"on-b", "poller-on-b"})
        await b.aclose()  # a graceful stop: gone now, not presence_timeout later
        await wait_clients(http, "room", set(), within=2 * UNIT)


async def test_a_node_whose_broker_vanished_loses_its_members_within_presence_timeout(
        make_server: ServerFactory, redis_url: str) -> None:
    timeout = 3 * UNIT
    a, b = await two_nodes(make_server, redis_url, presence_timeout=timeout)
    async with http_client(a) as http:
        b.presence.touch(["room"], Identity("stuck"), "poll")  # renewed below, never expires
        await wait_clients(http, "room", {"stuck"})
        # B stops talking to Redis without cleaning up (as a killed process would).
        table = b.presence.table
        assert isinstance(table, SharedPresence)
        task = table._task
        assert task is not None
        task.cancel()
        table._closed = True
        loop = asyncio.get_running_loop()
        vanished = loop.time()
        await wait_clients(http, "room", set(), within=timeout + 5 * UNIT)
        assert loop.time() - vanished <= timeout + 2 * UNIT


async def test_a_storm_of_joins_is_sent_in_batches_and_settles(
        make_server: ServerFactory, redis_url: str) -> None:
    a, b = await two_nodes(make_server, redis_url)
    table = b.presence.table
    assert isinstance(table, SharedPresence)
    storm = 10_000
    async with connect(ws_url(a, "/channels/room?client=watcher&presence=1")) as watcher, \
            http_client(a) as http:
        await frame_until(watcher, lambda f: f["type"] == "presence")
        await until(lambda: a.presence.table.count("room")[0] == 1)
        scripts = table.scripts
        for n in range(storm):  # as the drivers would, within one step of the loop
            b.presence.touch(["room"], Identity(f"p{n}"), "poll")
        await until(lambda: a.presence.table.count("room")[0] == storm + 1, within=10 * UNIT)
        counted = (await http.get("/channels/room/presence?count")).json()
        assert counted["count"] == storm + 1
        # Round trips per batch, not per reader (a refresh or two may run meanwhile).
        assert table.scripts - scripts <= storm // MAX_CHANGES_PER_SCRIPT + 3
        # The watcher is told the member list instead of 10,000 frames.
        listed = await frame_until(watcher, lambda f: f["type"] == "presence"
                                   and f["count"] == storm + 1, within=5 * UNIT)
        assert len(listed["members"]) == 1000 and listed["more"] is True
        # The node restarts: all of its members leave together.
        await b.aclose()
        await until(lambda: a.presence.table.count("room")[0] == 1, within=10 * UNIT)


@pytest.mark.parametrize("technique", ["websocket", "sse"])
async def test_on_a_redis_cluster_both_nodes_see_both(
        make_server: ServerFactory, redis_cluster_url: str, technique: str) -> None:
    a, b = await two_nodes(make_server, redis_cluster_url)
    async with http_client(a) as http_a, http_client(b) as http_b:
        channels = [f"room{n}" for n in range(4)]  # on different slots
        async with connect(ws_url(a, "/subscribe?client=c-a")) as ws:
            for n, channel in enumerate(channels):
                await ws.send(f'{{"type": "subscribe", "req": {n}, "channel": "{channel}"}}')
                await frame_until(ws, lambda f, n=n: f.get("req") == n)  # type: ignore[misc]
            if technique == "websocket":
                async with connect(ws_url(b, f"/channels/{channels[0]}?client=c-b")) as other:
                    await recv_json(other)
                    await wait_clients(http_a, channels[0], {"c-a", "c-b"})
                    await wait_clients(http_b, channels[0], {"c-a", "c-b"})
            else:
                async with open_sse(http_b, f"/channels/{channels[0]}",
                                    {"client": "c-b"}) as stream:
                    await stream.opening()
                    await wait_clients(http_a, channels[0], {"c-a", "c-b"})
            for channel in channels[1:]:
                await wait_clients(http_b, channel, {"c-a"})
        for channel in channels:
            await wait_clients(http_b, channel, set())


async def test_members_come_back_after_redis_restarts_empty(
        make_server: ServerFactory, redis_process: RedisProcess) -> None:
    timeout = 3 * UNIT
    a, b = await two_nodes(make_server, redis_process.url, presence_timeout=timeout)
    async with http_client(a) as http, \
            connect(ws_url(b, "/channels/room?client=on-b")) as on_b:
        await recv_json(on_b)
        await wait_clients(http, "room", {"on-b"})
        redis_process.restart()  # same port, nothing in it
        # B finds its members gone at its next refresh and sends them all again.
        (members_key, _nodes_key) = presence_keys("room")
        await until(lambda: redis_process.command("HLEN", members_key) == 1,
                    within=timeout + 10 * UNIT)
        # A node that starts now reads them from Redis; A's copy is loaded again too.
        c = await make_server(broker=redis_process.url, presence=True,
                              presence_timeout=timeout)
        async with http_client(c) as http_c:
            await wait_clients(http_c, "room", {"on-b"})
        await wait_clients(http, "room", {"on-b"})


async def test_a_poller_moving_to_another_node_gets_the_member_list_not_a_silent_difference(
        make_server: ServerFactory, redis_url: str) -> None:
    a, b = await two_nodes(make_server, redis_url)
    async with http_client(a) as on_a, http_client(b) as on_b:
        first = (await on_a.get("/channels/room", params={"presence": "1", "client": "p"}))
        assert first.status_code == 200
        cursor = first.json()["presence_next"]
        await wait_clients(on_b, "room", {"p"})
        # B numbers its joins and leaves on its own: A's cursor cannot say what was missed.
        moved = (await on_b.get("/channels/room", params={
            "presence": "1", "client": "p", "presence_since": cursor})).json()
        assert [m["client"] for m in moved["members"]["room"]] == ["p"]
        assert moved["presence"] == []
        # Going on on B from B's cursor: joins made on A are told in order.
        async with connect(ws_url(a, "/channels/room?client=new")) as new:
            await recv_json(new)
            await wait_clients(on_b, "room", {"p", "new"})
            async with asyncio.timeout(5 * UNIT):
                while True:
                    body = (await on_b.get("/channels/room", params={
                        "presence": "1", "client": "p",
                        "presence_since": moved["presence_next"]})).json()
                    assert "members" not in body
                    if body["presence"]:
                        break
                    await asyncio.sleep(0.02)
            assert [(e["type"], e["client"]) for e in body["presence"]] == [("join", "new")]


def test_a_copy_of_members_from_elsewhere_is_put_and_dropped_with_coalesced_changes() -> None:
    copy = Presence()
    copy.watch("room")
    alice = Member("c1", "alice", {"name": "Alice"}, "websocket", 5)
    assert copy.put("room", alice) is True
    assert copy.put("room", alice) is False  # the same again: nothing changed
    assert copy.count("room") == (1, 1)
    assert [type(change).__name__ for change in copy.drain()] == ["Join"]
    assert copy.drop("room", "c1") is True and copy.drop("room", "c1") is False
    assert copy.put("room", alice) is True
    assert copy.drain() == []  # left and came back as it was: never told
    copy.forget("room")
    assert copy.count("room") == (0, 0) and copy.drain() == []


def test_members_in_redis_are_listed_once_per_client_oldest_first() -> None:
    first = Member("c1", None, None, "poll", 10)
    later = Member("c1", None, None, "websocket", 20)
    other = Member("c2", "bob", None, "sse", 15)
    listing = [b"c1 node-b", encode_member(later), b"c2 node-a", encode_member(other),
               b"c1 node-a", encode_member(first), b"c3 node-a", b"not json"]
    assert members_of(listing) == [first, other]
