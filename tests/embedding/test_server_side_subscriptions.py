"""Server-side subscriptions: ``GET /subscribe`` without ``channel`` reads its user's channels.

Channels from ``on_connect`` and from the token's ``channels.read`` claim;
``server.subscribe_user`` / ``unsubscribe_user`` reaching live SSE streams and
WebSockets (announced, then read from the moment of the subscription), polls
at their next request, and resumes (``Last-Event-ID``) that read an added
channel exactly. Clients we did not write: httpx, ``websockets``.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import ServerFactory, until
from tidings import ConnectRequest, Identity, Server
from tidings.testing import (
    UNIT,
    command,
    http_client,
    open_sse,
    open_ws,
    poll,
    recv_json,
    recv_messages,
    require_error,
)

SESSIONS = {"s-alice": "alice", "s-bob": "bob"}
ALICE = {"Cookie": "session=s-alice"}
BOB = {"Cookie": "session=s-bob"}


def install(server: Server) -> None:
    """Users by session cookie; each reads ``lobby`` and ``inbox:<user>`` without asking."""

    @server.on_connect
    async def on_connect(request: ConnectRequest) -> Identity | None:
        user = SESSIONS.get(request.cookies.get("session", ""))
        if user is None:
            return None
        return Identity(user, info={"name": user.title()}, channels=("lobby", f"inbox:{user}"))


async def test_on_connect_channels_are_read_on_every_technique(server: Server) -> None:
    install(server)
    async with http_client(server) as http:
        first = await poll(http, "/subscribe", headers=ALICE)
        assert first["messages"] == []
        assert set(part.split("=")[0] for part in first["next"].split(",")) == {
            "lobby", "inbox:alice"}
        async with open_sse(http, "/subscribe", headers=ALICE) as stream, \
                open_ws(server, "/subscribe", additional_headers=ALICE) as ws:
            opening = await stream.opening()
            assert opening.json()["user"] == "alice"
            subscribed = [await recv_json(ws), await recv_json(ws)]
            assert {f["channel"] for f in subscribed} == {"lobby", "inbox:alice"}
            assert all(f["type"] == "subscribed" for f in subscribed)
            parked = asyncio.ensure_future(http.get("/subscribe", headers=ALICE,
                                                    params={"since": first["next"], "wait": 5}))
            await until(lambda: server.registry.statistics()["long_polls"] == 1)
            await server.publish("inbox:alice", {"n": 1})
            await server.publish("inbox:bob", {"n": "not alice's"})
            await server.publish("lobby", {"n": 2})
            events = await stream.message_objects(2)
            frames = await recv_messages(ws, 2)
            long_polled = (await parked).json()
        polled = await poll(http, "/subscribe", headers=ALICE, since=first["next"])
    for got in (events, frames, polled["messages"]):  # (no order between channels)
        assert sorted((m["channel"], m["data"]["n"]) for m in got) == [
            ("inbox:alice", 1), ("lobby", 2)]
    assert [m["data"] for m in long_polled["messages"]] == [{"n": 1}]


async def test_without_a_user_a_read_still_names_its_channels(server: Server) -> None:
    install(server)
    async with http_client(server) as http:
        answer = await http.get("/subscribe")
    require_error(answer, 400, "no_channel", "a read of nobody's channels")


async def test_subscribe_user_reaches_live_streams_from_the_moment_of_subscription(
        server: Server) -> None:
    install(server)
    async with http_client(server) as http, \
            open_sse(http, "/subscribe", headers=ALICE) as stream, \
            open_ws(server, "/subscribe", additional_headers=ALICE) as ws, \
            open_ws(server, "/subscribe", additional_headers=BOB) as bobs:
        await stream.opening()
        for socket in (ws, bobs):
            await recv_json(socket)
            await recv_json(socket)
        await server.publish("room:7", "before")  # not for anyone yet
        assert await server.subscribe_user("alice", "room:7") is True
        assert await server.subscribe_user("alice", "room:7") is False  # there already
        await server.publish("room:7", "after")
        async with asyncio.timeout(UNIT):  # within a second
            announced = await stream.next_event()
            frame = await recv_json(ws)
        assert announced.event == "subscribed"
        begin = announced.json()["next"]
        assert f"room:7={begin}" in (announced.id or "")
        assert frame == {"type": "subscribed", "channel": "room:7", "next": begin,
                         "client": frame["client"]}
        assert [m["data"] for m in await stream.message_objects(1)] == ["after"]
        assert [m["data"] for m in await recv_messages(ws, 1)] == ["after"]
        # Bob was not subscribed: his next frame is his own inbox's message.
        await server.publish("inbox:bob", "bob's")
        assert (await recv_json(bobs))["data"] == "bob's"
        # Unsubscribed: announced, and nothing more of the channel.
        assert await server.unsubscribe_user("alice", "room:7") is True
        assert await server.unsubscribe_user("alice", "room:7") is False
        gone = await stream.next_event()
        assert gone.event == "unsubscribed" and gone.json() == {"channel": "room:7"}
        assert "room:7" not in (gone.id or "")
        assert await recv_json(ws) == {"type": "unsubscribed", "channel": "room:7"}
        await server.publish("room:7", "no longer")
        await server.publish("lobby", "still")
        assert [m["data"] for m in await stream.message_objects(1)] == ["still"]
        assert [m["data"] for m in await recv_messages(ws, 1)] == ["still"]


async def test_sse_resumes_an_added_channel_exactly(server: Server) -> None:
    install(server)
    async with http_client(server) as http:
        async with open_sse(http, "/subscribe", headers=ALICE) as stream:
            await stream.opening()
            await server.subscribe_user("alice", "room:1")
            await server.publish("room:1", 1)
            assert (await stream.next_event()).event == "subscribed"
            assert [m["data"] for m in await stream.message_objects(1)] == [1]
            cursor = stream.last_id
        assert cursor is not None and "room:1=" in cursor
        await server.publish("room:1", 2)
        await server.publish("lobby", 3)
        # The client was away when this one was added: its cursor does not name it.
        await server.subscribe_user("alice", "room:2")
        await server.publish("room:2", 4)
        async with open_sse(http, "/subscribe", headers={**ALICE, "Last-Event-ID": cursor}
                            ) as again:
            await again.opening()
            got = await again.message_objects(3)
    assert sorted((m["channel"], m["data"]) for m in got) == [("lobby", 3), ("room:1", 2),
                                                              ("room:2", 4)]


async def test_polls_and_long_polls_see_a_channel_at_their_next_request(server: Server) -> None:
    install(server)
    async with http_client(server) as http:
        first = await poll(http, "/subscribe", headers=ALICE)
        await server.subscribe_user("alice", "room:3")
        await server.publish("room:3", "since the subscription")
        second = await poll(http, "/subscribe", headers=ALICE, since=first["next"])
        long_polled = (await http.get("/subscribe", headers=ALICE,
                                      params={"since": first["next"], "wait": 5})).json()
        await server.unsubscribe_user("alice", "room:3")
        await server.publish("room:3", "after")
        third = await poll(http, "/subscribe", headers=ALICE, since=second["next"])
    assert [m["data"] for m in second["messages"]] == ["since the subscription"]
    assert long_polled["messages"] == second["messages"]
    assert "room:3=" in second["next"]
    assert third["messages"] == [] and "room:3" not in third["next"]


async def test_a_websocket_may_take_over_a_server_side_channel(server: Server) -> None:
    install(server)
    await server.publish("lobby", "old")
    async with open_ws(server, "/subscribe", additional_headers=ALICE) as ws:
        await recv_json(ws)
        await recv_json(ws)
        ack = await command(ws, type="subscribe", req=1, channel="lobby", since="0")
        assert ack["type"] == "ack" and ack["channel"] == "lobby"
        assert [m["data"] for m in await recv_messages(ws, 1)] == ["old"]
        # Now the client's own: the server's unsubscribe leaves it alone.
        await server.subscribe_user("alice", "lobby")
        await server.unsubscribe_user("alice", "lobby")
        await server.publish("lobby", "new")
        assert [m["data"] for m in await recv_messages(ws, 1)] == ["new"]


async def test_presence_shows_the_user_on_connect_named(make_server: ServerFactory) -> None:
    server = await make_server(presence=True)
    install(server)
    async with http_client(server) as http, \
            open_ws(server, "/subscribe", additional_headers=ALICE) as ws:
        await recv_json(ws)
        answer = (await http.get("/channels/lobby/presence", headers=ALICE)).json()
    assert [(m["user"], m["info"]) for m in answer["members"]] == [
        ("alice", {"name": "Alice"})]


async def test_the_application_must_name_a_good_user_and_channel(server: Server) -> None:
    from tidings import ProtocolError, UsageError
    for user, channel, code in (("", "c", "invalid_user"), ("a\n", "c", "invalid_user"),
                                ("alice", "bad channel", "invalid_channel")):
        with pytest.raises(ProtocolError) as caught:
            await server.subscribe_user(user, channel)
        assert caught.value.code == code
    with pytest.raises(UsageError):
        await server.subscribe_user(42, "c")  # type: ignore[arg-type]


async def test_a_user_has_at_most_max_channels(make_server: ServerFactory) -> None:
    from tidings import ProtocolError
    server = await make_server(max_channels_per_subscription=2)
    await server.subscribe_user("alice", "a")
    await server.subscribe_user("alice", "b")
    with pytest.raises(ProtocolError) as caught:
        await server.subscribe_user("alice", "c")
    assert caught.value.code == "too_many_channels"


async def test_bad_channels_from_on_connect_are_the_applications_bug(server: Server) -> None:
    @server.on_connect
    async def on_connect(request: ConnectRequest) -> Identity:
        return Identity("alice", channels=("no spaces allowed",))

    async with http_client(server) as http:
        answer = await http.get("/subscribe")
    require_error(answer, 503, "hook_unavailable", "on_connect returned a bad channel")


async def test_a_bad_cursor_is_refused_to_that_client_alone(server: Server) -> None:
    install(server)
    async with http_client(server) as http, \
            open_ws(server, "/subscribe", additional_headers=ALICE) as ws:
        await recv_json(ws)
        await recv_json(ws)
        for headers, params in (({"Last-Event-ID": "garbage", "Accept": "text/event-stream"},
                                 {}),
                                ({}, {"since": "lobby=zzzzzzzz-1,inbox:alice="}),
                                ({}, {"since": "k2j4h5g6-3"})):  # an id names one channel
            answer = await http.get("/subscribe", headers={**ALICE, **headers}, params=params)
            require_error(answer, 400, "invalid_cursor", f"a bad cursor {headers} {params}")
        await server.publish("lobby", "still served")
        assert [m["data"] for m in await recv_messages(ws, 1)] == ["still served"]
