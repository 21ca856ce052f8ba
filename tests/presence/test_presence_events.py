"""Joins and leaves, for readers that ask: WebSocket frames, SSE events, poll answers.

Changes are coalesced and told once per tick of the server's sweep (about a
second), so each wait here is bounded by a few test units.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from conftest import ServerFactory, until
from tidings import Server
from tidings.core.cursor import Position
from tidings.core.presence import Identity, Join, Leave, Member, PresenceLog
from tidings.server.presence import MAX_BATCH_EVENTS
from tidings.testing import (
    UNIT,
    SseStream,
    command,
    http_client,
    open_sse,
    publish,
    recv_json,
    require_error,
    ws_url,
)


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    # Long enough that a log outlives the waits of a test (it is kept presence_timeout after
    # the last poll that read it).
    return await make_server(presence=True, presence_timeout=20 * UNIT)


async def frame_until(ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool],
                      within: float = 5 * UNIT) -> dict[str, Any]:
    """The first frame ``wanted`` accepts (others are skipped), within ``within``."""
    async with asyncio.timeout(within):
        while True:
            frame = await recv_json(ws)
            if wanted(frame):
                return frame


async def event_until(stream: SseStream, wanted: Callable[[str | None, Any], bool],
                      within: float = 5 * UNIT) -> tuple[str | None, Any]:
    async with asyncio.timeout(within):
        while True:
            block = await stream.next_event()
            value = block.json()
            if wanted(block.event, value):
                return block.event, value


def is_(kind: str, client: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame.get("type") == kind and frame.get("client") == client


# WebSocket and SSE ----------------------------------------------------------------------------


async def test_a_websocket_that_asks_gets_the_members_then_joins_and_leaves(
        server: Server) -> None:
    async with connect(ws_url(server, "/subscribe?client=watcher")) as ws:
        others: list[dict[str, Any]] = []
        ack = await command(ws, others, type="subscribe", req=1, channel="room", presence=True)
        assert ack["type"] == "ack" and ack["client"] == "watcher"
        members = await frame_until(ws, lambda f: f["type"] == "presence")
        assert members["channel"] == "room"
        assert [m["client"] for m in members["members"]] == ["watcher"]
        async with connect(ws_url(server, "/channels/room?client=guest")) as guest:
            await recv_json(guest)
            join = await frame_until(ws, is_("join", "guest"))
            assert join == {"type": "join", "channel": "room", "client": "guest", "user": None,
                            "info": None, "technique": "websocket", "since": join["since"]}
        leave = await frame_until(ws, is_("leave", "guest"))
        assert leave["channel"] == "room"
        # Without asking, no presence frames: a message is the next frame.
        async with connect(ws_url(server, "/channels/room?client=plain")) as plain:
            await recv_json(plain)
            async with http_client(server) as http:
                message_id = await publish(http, "room", "hello")
            assert (await recv_json(plain))["id"] == message_id


async def test_an_sse_stream_with_presence_1_gets_the_members_then_joins_and_leaves(
        server: Server) -> None:
    async with http_client(server) as http, open_sse(
            http, "/channels/room", {"presence": "1", "client": "s"}) as stream:
        await stream.opening()
        event, members = await event_until(stream, lambda e, v: e == "presence")
        assert [m["client"] for m in members["members"]] == ["s"]
        assert members["count"] == 1
        async with connect(ws_url(server, "/channels/room?client=g")) as guest:
            await recv_json(guest)
            event, join = await event_until(stream, lambda e, v: v.get("client") == "g")
            assert event == "join" and join["technique"] == "websocket"
        event, leave = await event_until(stream, lambda e, v: e == "leave")
        assert leave["client"] == "g"
        # A message still arrives as a message, with its id.
        message_id = await publish(http, "room", 1)
        event, message = await event_until(stream, lambda e, v: e is None)
        assert message["id"] == message_id


async def test_a_join_and_leave_within_one_tick_are_never_told(server: Server) -> None:
    async with connect(ws_url(server, "/channels/room?client=w&presence=1")) as ws:
        await frame_until(ws, lambda f: f["type"] == "presence")
        # Come and go inside one tick of the sweep: coalesced away.
        server.presence.hold(["room"], Identity("flash"), "websocket")
        server.presence.release(["room"], "flash")
        server.presence.hold(["room"], Identity("stays"), "websocket")
        join = await frame_until(ws, lambda f: f["type"] in ("join", "leave")
                                 and f["client"] != "w")
        assert join["client"] == "stays" and join["type"] == "join"


# Polls ------------------------------------------------------------------------------------------


async def test_a_poller_sees_who_came_and_went_between_two_polls_in_order(
        server: Server) -> None:
    async with http_client(server) as http:
        first = (await http.get("/channels/room", params={"presence": "1", "client": "p"}))
        assert first.status_code == 200 and "etag" not in first.headers
        body = first.json()
        # No presence cursor yet: the member list, and the cursor to go on from.
        assert body["members"] == {"room": [body["members"]["room"][0]]}
        assert body["members"]["room"][0]["client"] == "p"
        assert body["presence"] == []
        since, presence_since = body["next"], body["presence_next"]
        async with connect(ws_url(server, "/channels/room?client=early")) as early:
            await recv_json(early)
            await until(lambda: _logged(server, "room", "early"))
            message = await publish(http, "room", "between")
            async with connect(ws_url(server, "/channels/room?client=late")) as late:
                await recv_json(late)
                await until(lambda: _logged(server, "room", "late"))
        await until(lambda: _logged(server, "room", "late", "leave"))
        answer = (await http.get("/channels/room", params={
            "presence": "1", "client": "p", "since": since,
            "presence_since": presence_since})).json()
        assert [m["id"] for m in answer["messages"]] == [message]
        assert "members" not in answer
        told = [(e["type"], e["client"], e["after"]) for e in answer["presence"]
                if e["client"] != "p"]
        # early joined before the message, late after it; both left after it.
        assert told == [("join", "early", None), ("join", "late", message),
                        ("leave", "late", message), ("leave", "early", message)]
        # Asking again from the new cursor: nothing more.
        again = (await http.get("/channels/room", params={
            "presence": "1", "client": "p", "since": answer["next"],
            "presence_since": answer["presence_next"]})).json()
        assert again["presence"] == [] and again["messages"] == []


async def test_joins_after_the_messages_of_a_page_wait_for_the_next_page(
        server: Server) -> None:
    async with http_client(server) as http:
        start = (await http.get("/channels/room", params={"presence": "1", "client": "p"})
                 ).json()
        first = await publish(http, "room", 1)
        await publish(http, "room", 2)
        server.presence.hold(["room"], Identity("after-two"), "websocket")
        await until(lambda: _logged(server, "room", "after-two"))
        query = {"presence": "1", "client": "p", "limit": "1", "since": start["next"],
                 "presence_since": start["presence_next"]}
        page = (await http.get("/channels/room", params=query)).json()
        assert [m["id"] for m in page["messages"]] == [first] and page["more"] is True
        assert [e["client"] for e in page["presence"] if e["client"] != "p"] == []
        query.update(since=page["next"], presence_since=page["presence_next"])
        page = (await http.get("/channels/room", params=query)).json()
        assert [e["client"] for e in page["presence"] if e["client"] != "p"] == ["after-two"]


async def test_a_poller_that_missed_too_much_gets_the_member_list(server: Server) -> None:
    async with http_client(server) as http:
        for presence_since in ("0", "zzzzzzzz-5"):  # no position; another life of the log
            body = (await http.get("/channels/room", params={
                "presence": "1", "client": "p", "presence_since": presence_since})).json()
            assert [m["client"] for m in body["members"]["room"]] == ["p"]
            assert body["presence_next"].startswith(server.presence.logs["room"].epoch)
        response = await http.get("/channels/room", params={
            "presence": "1", "client": "p", "presence_since": "not a cursor"})
        require_error(response, 400, "invalid_cursor", "a malformed presence_since")


async def test_a_parked_long_poll_wakes_for_a_join(server: Server) -> None:
    async with http_client(server) as http, http_client(server) as poller:
        start = (await http.get("/channels/room", params={"presence": "1", "client": "lp"})
                 ).json()
        caught_up = (await http.get("/channels/room", params={
            "presence": "1", "client": "lp", "since": start["next"],
            "presence_since": start["presence_next"]})).json()
        parked = asyncio.create_task(poller.get("/channels/room", params={
            "presence": "1", "client": "lp", "wait": "30", "since": caught_up["next"],
            "presence_since": caught_up["presence_next"]}))
        await until(lambda: server.statistics()["long_polls"] == 1)
        async with connect(ws_url(server, "/channels/room?client=visitor")) as ws:
            await recv_json(ws)
            async with asyncio.timeout(5 * UNIT):
                answer = (await parked).json()
        assert answer["messages"] == []
        assert [(e["type"], e["client"]) for e in answer["presence"]] == [("join", "visitor")]


async def test_multi_channel_polls_carry_a_multi_channel_presence_cursor(
        server: Server) -> None:
    async with http_client(server) as http:
        body = (await http.get("/subscribe", params={
            "channel": ["a", "b"], "presence": "1", "client": "m"})).json()
        assert set(body["members"]) == {"a", "b"}
        assert [part.split("=")[0] for part in body["presence_next"].split(",")] == ["a", "b"]
        server.presence.hold(["b"], Identity("bee"), "sse")
        await until(lambda: _logged(server, "b", "bee"))
        answer = (await http.get("/subscribe", params={
            "channel": ["a", "b"], "presence": "1", "client": "m", "since": body["next"],
            "presence_since": body["presence_next"]})).json()
        assert [(e["channel"], e["client"]) for e in answer["presence"]
                if e["client"] != "m"] == [("b", "bee")]


# Refusals ---------------------------------------------------------------------------------------


async def test_asking_for_joins_and_leaves_where_it_cannot_be_served(
        make_server: ServerFactory) -> None:
    server = await make_server(presence=False)
    async with http_client(server) as http:
        for headers in ({}, {"Accept": "text/event-stream"}):
            require_error(await http.get("/channels/c", params={"presence": "1", "client": "x"},
                                         headers=headers),
                          404, "presence_disabled", "presence=1 where presence is off")
        async with connect(ws_url(server, "/subscribe")) as ws:
            reply = await command(ws, type="subscribe", req=1, channel="c", presence=True)
            assert (reply["type"], reply["error"]) == ("error", "presence_disabled")
            reply = await command(ws, type="subscribe", req=2, channel="c", presence="yes")
            assert (reply["type"], reply["error"]) == ("error", "invalid_command")


async def test_bad_presence_requests_are_400(server: Server) -> None:
    async with http_client(server) as http:
        require_error(await http.get("/channels/c", params={"presence": "2"}), 400,
                      "invalid_presence", "presence=2")
        require_error(await http.get("/channels/c", params={"presence": "1"}), 400,
                      "client_required", "a poll asking for joins and leaves without a client")
        require_error(await http.get("/channels/c", params={"presence": "1", "wait": "1"}), 400,
                      "client_required", "a long poll asking without a client")


async def test_delivering_messages_touches_no_presence(server: Server) -> None:
    async with connect(ws_url(server, "/channels/room?client=w&presence=1")) as ws, \
            http_client(server) as http:
        await frame_until(ws, lambda f: f["type"] == "presence")
        changes = server.presence.table.changes
        log = len(server.presence.logs["room"])
        for value in range(50):
            await publish(http, "room", value)
        await frame_until(ws, lambda f: f.get("data") == 49)
        assert server.presence.table.changes == changes
        assert len(server.presence.logs["room"]) == log


# The log, driven directly ----------------------------------------------------------


def test_the_presence_log_reads_from_a_cursor_and_says_when_it_cannot() -> None:
    log = PresenceLog("e")
    member = Member("x", None, None, "poll", 0)
    log.append(Join("c", member), None, now=1.0)
    log.append(Leave("c", member), Position("m", 3), now=2.0)
    events, cursor = log.read(Position("e", 0)) or ([], None)
    assert [e.seq for e in events] == [1, 2] and cursor == Position("e", 2)
    assert log.read(Position("e", 2)) == ([], Position("e", 2))
    assert log.read(Position("other", 0)) is None
    assert log.read(Position("e", 9)) is None  # from the future
    assert log.read(None) is None
    held = log.read(Position("e", 0), upto=Position("m", 2))
    assert held is not None and [e.seq for e in held[0]] == [1] and held[1] == Position("e", 1)
    log.trim(before=1.5)
    assert log.read(Position("e", 0)) is None  # join 1 was dropped: it cannot say
    assert log.read(Position("e", 1)) is not None


def _logged(server: Server, channel: str, client: str, kind: str = "join") -> bool:
    log = server.presence.logs.get(channel)
    if log is None:
        return False
    read = log.read(Position(log.epoch, 0))
    return read is not None and any(
        entry.change.kind == kind and entry.change.member.client == client for entry in read[0])


# A storm ---------------------------------------------------------------------------------------


async def test_a_storm_of_joins_and_leaves_settles_to_the_truth(server: Server) -> None:
    """1,600 readers join within one step of the loop (as the drivers record them), half of
    them leave at once: too many to tell one by one, so a watcher is told the member list
    (bounded), once; then all leave, and it is told the list again."""
    storm = 1600  # half stay: fewer than MAX_LISTED_MEMBERS, all listed
    async with connect(ws_url(server, "/channels/crowd?client=w&presence=1"),
                       max_queue=None) as ws, http_client(server) as http:
        await frame_until(ws, lambda f: f["type"] == "presence")
        for number in range(storm):
            server.presence.hold(["crowd"], Identity(f"r{number}"), "websocket")
        for number in range(0, storm, 2):  # gone before the sweep
            server.presence.release(["crowd"], f"r{number}")
        listed = await frame_until(ws, lambda f: f["type"] != "message", within=10 * UNIT)
        assert listed["type"] == "presence"  # not 1,000 join frames
        assert (listed["count"], listed["more"]) == (storm // 2 + 1, False)
        assert {m["client"] for m in listed["members"]} == {
            "w", *(f"r{number}" for number in range(1, storm, 2))}
        body = (await http.get("/channels/crowd/presence", params={"count": ""})).json()
        assert body["count"] == storm // 2 + 1
        for number in range(1, storm, 2):
            server.presence.release(["crowd"], f"r{number}")
        listed = await frame_until(ws, lambda f: f["type"] != "message", within=10 * UNIT)
        assert listed["type"] == "presence"
        assert [m["client"] for m in listed["members"]] == ["w"]


async def test_a_batch_small_enough_is_told_one_by_one(server: Server) -> None:
    async with connect(ws_url(server, "/channels/few?client=w&presence=1"),
                       max_queue=None) as ws:
        await frame_until(ws, lambda f: f["type"] == "presence")
        for number in range(MAX_BATCH_EVENTS):
            server.presence.hold(["few"], Identity(f"f{number}"), "sse")
        joined: set[str] = set()
        async with asyncio.timeout(10 * UNIT):
            while len(joined) < MAX_BATCH_EVENTS:
                frame = await recv_json(ws)
                assert frame["type"] == "join", frame
                joined.add(frame["client"])
        assert joined == {f"f{number}" for number in range(MAX_BATCH_EVENTS)}
