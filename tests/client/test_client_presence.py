"""Presence in the Python client: joins, leaves and member lists on each technique, the
client id kept across reconnects and technique switches, and ``presence()``.

A reader we did not write (a ``websockets`` connection naming itself ``?client=guest``)
comes and goes; what the client yields is compared with ``==`` to the events expected, and
what it believes (its id) with the server's own ``GET /channels/{c}/presence`` (httpx).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from clientkit import TECHNIQUES, StatusLog, fast_client, start_again, stop
from websockets.asyncio.client import connect as ws_connect

from conftest import ServerFactory
from tidings import (
    Connected,
    Join,
    Leave,
    Member,
    Message,
    Presence,
    RequestRefused,
    Server,
    TransportChanged,
    UsageError,
)
from tidings.client._presence import PresenceBook
from tidings.testing import UNIT

PRESENCE = {"presence": True, "presence_timeout": 2.0 * UNIT}


async def next_of(subscription: Any, kind: type, client: str | None = None,
                  within: float = 5 * UNIT) -> Any:
    """The next item of ``kind`` (about ``client``, for a join or leave), skipping others:
    a reader may be told of its own join, once the server counts it."""
    async with asyncio.timeout(within):
        while True:
            item = await anext(subscription)
            if isinstance(item, kind) and (client is None or item.member.client == client):
                return item


async def listed(server: Server, channel: str = "room") -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as http:
        response = await http.get(f"/channels/{channel}/presence")
        assert response.status_code == 200, response.text
        members: list[dict[str, Any]] = response.json()["members"]
        return members


async def until_listed(server: Server, check: Any) -> list[dict[str, Any]]:
    async with asyncio.timeout(10 * UNIT):
        while True:
            members = await listed(server)
            if check(members):
                return members
            await asyncio.sleep(0.02)


def guest_url(server: Server) -> str:
    return server.url.replace("http", "ws") + "/channels/room?client=guest"


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_joins_and_leaves_on_each_technique(make_server: ServerFactory,
                                                  transport: str) -> None:
    server = await make_server(**PRESENCE)
    async with fast_client(server.url, transport) as client:
        subscription = client.subscribe("room", presence=True)
        first = await anext(subscription)
        assert isinstance(first, Presence) and first.channel == "room"
        assert client.client_id is not None
        mine = client.client_id
        members = await until_listed(server, lambda m: [x["client"] for x in m] == [mine])
        assert members[0]["technique"] == transport

        guest = await ws_connect(guest_url(server))
        join = await next_of(subscription, Join, "guest")
        assert join == Join("room", Member("room", "guest", None, None, "websocket",
                                           join.member.since))
        answer = await subscription.presence()
        assert (answer.count, answer.users, answer.more) == (2, 0, False)
        assert {m.client for m in answer.members} == {mine, "guest"}
        assert await client.presence("room", count_only=True) == Presence(
            "room", 2, 0, (), True)

        await guest.close()
        leave = await next_of(subscription, Leave, "guest")
        assert leave == Leave("room", join.member)
        assert client.client_id == mine
        await subscription.aclose()


@pytest.mark.parametrize("transport", ["longpoll", "poll"])
async def test_a_poller_gets_joins_in_order_with_the_messages(make_server: ServerFactory,
                                                              transport: str) -> None:
    server = await make_server(**PRESENCE)
    async with fast_client(server.url, transport, poll_interval=0.5) as client, \
            fast_client(server.url, "websocket") as watcher:
        subscription = client.subscribe("room", presence=True)
        assert isinstance(await anext(subscription), Presence)
        watching = watcher.subscribe("room", presence=True)
        assert isinstance(await anext(watching), Presence)
        before = await client.publish("room", "before")
        guest = await ws_connect(guest_url(server))
        await next_of(watching, Join, "guest")  # the server has logged the join: after "before"
        after = await client.publish("room", "after")
        items = []
        async with asyncio.timeout(5 * UNIT):
            while len(items) < 3:
                item = await anext(subscription)
                if not isinstance(item, Join) or item.member.client == "guest":
                    items.append(item)
        assert [type(i) for i in items] == [Message, Join, Message]
        assert (items[0].id, items[1].member.client, items[2].id) == (before, "guest", after)
        await guest.close()
        await next_of(subscription, Leave, "guest")


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_the_client_id_survives_a_reconnect(make_server: ServerFactory,
                                                  transport: str) -> None:
    server = await make_server(**PRESENCE)
    async with fast_client(server.url, transport) as client:
        subscription = client.subscribe("room", presence=True)
        assert isinstance(await anext(subscription), Presence)
        mine = client.client_id
        assert mine is not None
        old, port = await stop(server)
        server = await start_again(old, port)
        try:
            # The new server's first member list names this client, as the same member.
            await until_listed(server, lambda m: [x["client"] for x in m] == [mine])
            assert client.client_id == mine
        finally:
            await subscription.aclose()
            await server.aclose()


async def test_the_client_id_survives_a_technique_switch(make_server: ServerFactory) -> None:
    server = await make_server(**PRESENCE, transports=["sse", "longpoll", "poll"])
    status = StatusLog()
    async with fast_client(server.url, on_status=status, upgrade_after=0.3) as client:
        subscription = client.subscribe("room", presence=True)
        assert isinstance(await anext(subscription), Presence)
        await status.wait_for(Connected, transport="sse")
        mine = client.client_id
        assert mine is not None
        await until_listed(server, lambda m: [(x["client"], x["technique"]) for x in m]
                           == [(mine, "sse")])
        old, port = await stop(server)
        server = Server(old.settings.replace(port=port, transports=TECHNIQUES),
                        broker=old.broker)
        await server.start()
        try:
            # A fallback tries the better techniques again after upgrade_after, when it
            # next hears from the server: messages keep coming until it has.
            async with asyncio.timeout(10 * UNIT):
                while not any(isinstance(e, TransportChanged) and e.transport == "websocket"
                              for e in status.events):
                    await client.publish("room", "tick")
                    await asyncio.sleep(0.1)
            await until_listed(server, lambda m: [(x["client"], x["technique"]) for x in m]
                               == [(mine, "websocket")])
            assert client.client_id == mine
        finally:
            await subscription.aclose()
            await server.aclose()


async def test_a_chosen_client_id(make_server: ServerFactory) -> None:
    server = await make_server(**PRESENCE)
    for transport in TECHNIQUES:
        async with fast_client(server.url, transport, client_id=f"kiosk-{transport}") as client:
            client.subscribe("room")
            await until_listed(server, lambda m, t=transport: any(
                (x["client"], x["technique"]) == (f"kiosk-{t}", t) for x in m))
    with pytest.raises(UsageError):
        fast_client(server.url, client_id="not valid!")


async def test_presence_off_is_refused_clearly(server: Server) -> None:
    async with fast_client(server.url, "sse") as client:
        subscription = client.subscribe("room", presence=True)
        with pytest.raises(RequestRefused) as refused:
            await anext(subscription)
        assert refused.value.code == "presence_disabled"
        with pytest.raises(RequestRefused) as asked:
            await client.presence("room")
        assert asked.value.code == "presence_disabled"


# The book, without I/O ---------------------------------------------------------------


def member(client: str, since: int = 1) -> dict[str, Any]:
    return {"client": client, "user": None, "info": None, "technique": "sse", "since": since}


def test_the_book_drops_what_it_has_and_tells_differences_after_a_list() -> None:
    book = PresenceBook(["room"])
    a, b, c = (Member("room", x, None, None, "sse", 1) for x in "abc")
    first = book.listed({"channel": "room", "count": 2, "members": [member("a"), member("b")]})
    assert first == [Presence("room", 2, 0, (a, b), False)]
    assert book.changed("join", {"channel": "room", **member("b")}) == []  # an overlap
    assert book.changed("leave", {"channel": "room", **member("x")}) == []  # never there
    # A reconnect: the list differs by a leave and a join, told before it.
    again = book.listed({"channel": "room", "count": 2, "members": [member("b"), member("c")]})
    assert again == [Leave("room", a), Join("room", c), Presence("room", 2, 0, (b, c), False)]
    assert book.changed("join", {"channel": "other", **member("z")}) == []  # not ours


def test_the_book_places_a_poll_answers_events_after_their_message() -> None:
    book = PresenceBook(["a", "b"])
    body = {"presence": [{"type": "join", "channel": "a", "after": None, **member("x")},
                         {"type": "join", "channel": "a", "after": "e-1", **member("y")}],
            "members": {"b": [member("z")]}, "presence_next": "a=q-2,b=q-0"}
    messages = [{"channel": "a", "id": "e-1"}, {"channel": "a", "id": "e-2"}]
    placed = book.answer(body, messages)
    assert [(place, [type(i).__name__ for i in items]) for place, items in placed] == [
        (0, ["Join"]), (1, ["Join"]), (2, ["Presence"])]
    assert book.since() == "a=q-2,b=q-0"
