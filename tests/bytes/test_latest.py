"""``?latest=1`` on every technique: the newest message of each channel, the others counted.

Read with httpx (poll, long poll, SSE) and the ``websockets`` package.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect

from conftest import until
from tidings import Server
from tidings.testing import (
    UNIT,
    http_client,
    open_sse,
    poll,
    publish,
    publish_many,
    recv_json,
    require_error,
    ws_url,
)


def gap(channel: str, start: str, to: str, missed: int) -> dict[str, object]:
    return {"channel": channel, "from": start, "to": to, "reason": "latest", "missed": missed}


async def test_a_poll_answers_the_newest_message_and_counts_the_others(server: Server) -> None:
    async with http_client(server) as http:
        ids = await publish_many(http, "prices", [{"p": n} for n in range(1, 6)])
        answer = await poll(http, "/channels/prices", since=ids[0], latest="1")
        assert [m["id"] for m in answer["messages"]] == [ids[4]]
        assert answer["messages"][0]["data"] == {"p": 5}
        assert answer["gaps"] == [gap("prices", ids[0], ids[3], 3)]
        assert answer["next"] == ids[4] and "more" not in answer
        again = await poll(http, "/channels/prices", since=answer["next"], latest="1")
        assert again["messages"] == [] and "gap" not in again
        next_to_last = await poll(http, "/channels/prices", since=ids[3], latest="1")
        assert [m["id"] for m in next_to_last["messages"]] == [ids[4]]
        assert "gap" not in next_to_last  # nothing skipped
        from_origin = await poll(http, "/channels/prices", since="0", latest="1")
        assert [m["id"] for m in from_origin["messages"]] == [ids[4]]


async def test_a_poll_of_several_channels_takes_the_newest_of_each(server: Server) -> None:
    async with http_client(server) as http:
        a = await publish_many(http, "a", [1, 2, 3])
        b = await publish_many(http, "b", [4, 5])
        answer = await poll(http, "/subscribe", channel=["a", "b"], since="0", latest="1")
        assert [m["id"] for m in answer["messages"]] == [a[2], b[1]]
        assert answer["next"] == f"a={a[2]},b={b[1]}"


async def test_a_long_poll_answers_at_once_or_with_the_first_message(server: Server) -> None:
    async with http_client(server) as http:
        ids = await publish_many(http, "prices", [1, 2, 3])
        answer = await poll(http, "/channels/prices", since=ids[0], latest="1", wait="5")
        assert [m["id"] for m in answer["messages"]] == [ids[2]]
        assert answer["gaps"] == [gap("prices", ids[0], ids[1], 1)]
        parked = asyncio.create_task(
            poll(http, "/channels/prices", since=ids[2], latest="1", wait=str(5 * UNIT)))
        await until(lambda: server.statistics()["long_polls"] == 1)
        async with http_client(server) as publisher:
            new = await publish_many(publisher, "prices", [4, 5])
        answer = await parked
        assert [m["id"] for m in answer["messages"]] == [new[0]]  # the first one answers it
        assert "gap" not in answer


async def test_sse_starts_with_the_newest_message_then_goes_live(server: Server) -> None:
    async with http_client(server) as http:
        ids = await publish_many(http, "prices", [1, 2, 3, 4])
        async with open_sse(http, "/channels/prices", {"since": ids[0], "latest": "1"}) as stream:
            assert (await stream.opening()).id == ids[0]
            first = await stream.next_event()
            assert first.event == "gap" and first.json() == gap("prices", ids[0], ids[2], 2)
            assert first.id == ids[2]
            (newest,) = await stream.message_objects(1)
            assert newest["id"] == ids[3]
            live = await publish(http, "prices", 5)
            (then,) = await stream.message_objects(1)
            assert then["id"] == live


async def test_a_websocket_starts_with_the_newest_message_then_goes_live(server: Server) -> None:
    async with http_client(server) as http:
        ids = await publish_many(http, "prices", [1, 2, 3, 4])
        url = ws_url(server, f"/channels/prices?since={ids[1]}&latest=1")
        async with connect(url) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            assert await recv_json(ws) == {"type": "gap", **gap("prices", ids[1], ids[2], 1)}
            assert (await recv_json(ws))["id"] == ids[3]
            live = await publish(http, "prices", 5)
            assert (await recv_json(ws))["id"] == live


async def test_latest_takes_1_or_0(server: Server) -> None:
    async with http_client(server) as http:
        for value in ("2", "yes", ""):
            response = await http.get("/channels/prices", params={"latest": value})
            require_error(response, 400, "invalid_latest", "a bad latest")
        plain = await poll(http, "/channels/prices", since="0", latest="0")
        assert plain["messages"] == []
