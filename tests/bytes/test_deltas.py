"""``?delta=1`` and ``"delta": true`` on every technique, read with httpx and ``websockets``.

A reader that asks gets a message whose previous message it was sent on the
same connection (or in the same poll answer) as a delta against it, the
others whole: the first, after a gap, after a resume, on another technique.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from conftest import ServerFactory, until
from tidings import Server
from tidings.demo.feed import Market
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
from tidings.wire import delta


def ticks(count: int, seed: int = 7) -> list[dict[str, Any]]:
    market = Market(seed=seed)
    return [market.tick() for _ in range(count)]


class Applier:
    """What a client does: keep each channel's last whole value, apply deltas to it."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[str, Any]] = {}

    def whole(self, message: dict[str, Any]) -> Any:
        channel = message["channel"]
        if "delta" in message:
            base_id, base = self.last[channel]
            assert message["base"] == base_id, "a delta against a message this reader lacks"
            assert "data" not in message
            data = delta.apply(base, message["delta"])
        else:
            data = message["data"]
        self.last[channel] = (message["id"], data)
        return data


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return ["delta" if "delta" in m else "whole" for m in messages]


async def test_a_poll_page_sends_each_message_after_the_first_as_a_delta(server: Server) -> None:
    values = ticks(4)
    async with http_client(server) as http:
        ids = await publish_many(http, "stocks", values)
        answer = await poll(http, "/channels/stocks", since="0", delta="1")
        assert kinds(answer["messages"]) == ["whole", "delta", "delta", "delta"]
        applier = Applier()
        assert [applier.whole(m) for m in answer["messages"]] == values
        assert [m["base"] for m in answer["messages"][1:]] == ids[:3]
        assert answer["next"] == ids[3]
        # the next poll is a resume: its first message is whole
        more = await publish_many(http, "stocks", ticks(6)[4:])
        again = await poll(http, "/channels/stocks", since=ids[3], delta="1")
        assert kinds(again["messages"]) == ["whole", "delta"]
        assert [m["id"] for m in again["messages"]] == more
        plain = await poll(http, "/channels/stocks", since="0")
        assert kinds(plain["messages"]) == ["whole"] * 6


async def test_a_poll_of_several_channels_diffs_each_against_its_own_channel(
        server: Server) -> None:
    async with http_client(server) as http:
        a = ticks(2, seed=1)
        b = ticks(2, seed=2)
        await publish(http, "a", a[0])
        await publish(http, "b", b[0])
        await publish(http, "a", a[1])
        await publish(http, "b", b[1])
        answer = await poll(http, "/subscribe", channel=["a", "b"], since="0", delta="1")
        assert kinds(answer["messages"]) == ["whole", "whole", "delta", "delta"]
        applier = Applier()
        assert [applier.whole(m) for m in answer["messages"]] == [a[0], b[0], a[1], b[1]]


async def test_a_long_poll_diffs_within_its_answer_and_parks_for_a_whole_message(
        server: Server) -> None:
    values = ticks(3)
    async with http_client(server) as http:
        ids = await publish_many(http, "stocks", values[:2])
        answer = await poll(http, "/channels/stocks", since="0", delta="1", wait="5")
        assert kinds(answer["messages"]) == ["whole", "delta"]
        parked = asyncio.create_task(
            poll(http, "/channels/stocks", since=ids[1], delta="1", wait=str(5 * UNIT)))
        await until(lambda: server.statistics()["long_polls"] == 1)
        async with http_client(server) as publisher:
            await publish(publisher, "stocks", values[2])
        (message,) = (await parked)["messages"]
        assert message["data"] == values[2]  # its first message: whole


async def test_sse_sends_deltas_live_and_a_whole_message_after_a_resume(server: Server) -> None:
    values = ticks(6)
    applier = Applier()
    async with http_client(server) as http:
        ids = await publish_many(http, "stocks", values[:3])
        async with open_sse(http, "/channels/stocks", {"since": "0", "delta": "1"}) as stream:
            await stream.opening()
            backlog = await stream.message_objects(3)
            assert kinds(backlog) == ["whole", "delta", "delta"]
            live = await publish(http, "stocks", values[3])
            (then,) = await stream.message_objects(1)
            assert then["id"] == live and then["base"] == ids[2]
            assert [applier.whole(m) for m in [*backlog, then]] == values[:4]
        await publish_many(http, "stocks", values[4:])
        # Last-Event-ID: a resume, whole first
        async with open_sse(http, "/channels/stocks", {"delta": "1"},
                            headers={"Last-Event-ID": live}) as stream:
            await stream.opening()
            resumed = await stream.message_objects(2)
            assert kinds(resumed) == ["whole", "delta"]
            assert [applier.whole(m) for m in resumed] == values[4:]


async def test_sse_of_several_channels_sends_deltas_with_the_whole_cursor(server: Server) -> None:
    values = ticks(2)
    async with http_client(server) as http:
        await publish_many(http, "a", values)
        async with open_sse(http, "/subscribe", {"channel": ["a", "b"], "since": "0",
                                                 "delta": "1"}) as stream:
            await stream.opening()
            blocks = await stream.messages(2)
            objects = [block.json() for block in blocks]
            assert kinds(objects) == ["whole", "delta"]
            assert blocks[1].id.startswith("a=") and ",b=" in blocks[1].id


async def test_a_websocket_url_with_delta_gets_deltas(server: Server) -> None:
    values = ticks(5)
    applier = Applier()
    async with http_client(server) as http:
        ids = await publish_many(http, "stocks", values[:2])
        async with connect(ws_url(server, "/channels/stocks?since=0&delta=1")) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            got = [await recv_json(ws), await recv_json(ws)]
            await publish_many(http, "stocks", values[2:4])
            got += [await recv_json(ws), await recv_json(ws)]
            assert {m["type"] for m in got} == {"message"}
            assert kinds(got) == ["whole", "delta", "delta", "delta"]
            assert [applier.whole(m) for m in got] == values[:4]
        # a technique switch: from the WebSocket to a poll, at the last id
        await publish(http, "stocks", values[4])
        answer = await poll(http, "/channels/stocks", since=got[-1]["id"], delta="1")
        assert kinds(answer["messages"]) == ["whole"]
        assert ids[0] == got[0]["id"]


async def test_subscribe_with_delta_true_on_a_compressed_websocket(server: Server) -> None:
    values = ticks(4)
    async with http_client(server) as http, connect(ws_url(server, "/subscribe")) as ws:
        assert ws.protocol.extensions  # websockets offers permessage-deflate
        await publish(http, "plain", values[0])
        await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": "stocks",
                                  "delta": True}))
        await ws.send(json.dumps({"type": "subscribe", "req": 2, "channel": "plain",
                                  "since": "0"}))
        assert (await recv_json(ws))["req"] == 1
        assert (await recv_json(ws))["req"] == 2
        assert kinds([await recv_json(ws)]) == ["whole"]  # plain's backlog
        await publish_many(http, "stocks", values)
        await publish_many(http, "plain", values[1:3])
        got = [await recv_json(ws) for _ in range(6)]
        stocks = [m for m in got if m["channel"] == "stocks"]
        plain = [m for m in got if m["channel"] == "plain"]
        assert kinds(stocks) == ["whole", "delta", "delta", "delta"]
        assert kinds(plain) == ["whole", "whole"]  # no delta asked for it
        applier = Applier()
        assert [applier.whole(m) for m in stocks] == values
        # unsubscribe, subscribe again from the last id: a resume, whole first
        await ws.send(json.dumps({"type": "unsubscribe", "req": 3, "channel": "stocks"}))
        assert (await recv_json(ws))["req"] == 3
        await publish_many(http, "stocks", ticks(6)[4:])
        await ws.send(json.dumps({"type": "subscribe", "req": 4, "channel": "stocks",
                                  "since": stocks[-1]["id"], "delta": True}))
        assert (await recv_json(ws))["req"] == 4
        assert kinds([await recv_json(ws), await recv_json(ws)]) == ["whole", "delta"]


async def test_a_gap_makes_the_next_message_whole(make_server: ServerFactory) -> None:
    server = await make_server(history_size=3)
    values = ticks(6)
    async with http_client(server) as http:
        ids = await publish_many(http, "stocks", values)
        async with connect(ws_url(server, f"/channels/stocks?since={ids[0]}&delta=1")) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            first = await recv_json(ws)
            assert first["type"] == "gap" and first["to"] == ids[2]
            got = [await recv_json(ws) for _ in range(3)]
            assert kinds(got) == ["whole", "delta", "delta"]
        answer = await poll(http, "/channels/stocks", since=ids[0], delta="1")
        assert answer["gap"] is True and kinds(answer["messages"]) == ["whole", "delta", "delta"]


async def test_subscribe_with_latest_true_starts_with_the_newest_message(server: Server) -> None:
    async with http_client(server) as http, connect(ws_url(server, "/subscribe")) as ws:
        ids = await publish_many(http, "prices", [1, 2, 3, 4])
        await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": "prices",
                                  "since": ids[0], "latest": True}))
        assert (await recv_json(ws))["type"] == "ack"
        skipped = await recv_json(ws)
        assert skipped == {"type": "gap", "channel": "prices", "from": ids[0], "to": ids[2],
                           "reason": "latest", "missed": 2}
        assert (await recv_json(ws))["id"] == ids[3]
        live = await publish(http, "prices", 5)
        assert (await recv_json(ws))["id"] == live
        # without it, the whole backlog
        await ws.send(json.dumps({"type": "subscribe", "req": 2, "channel": "other"}))
        assert (await recv_json(ws))["type"] == "ack"


async def test_a_delta_is_sent_only_when_shorter(server: Server) -> None:
    async with http_client(server) as http:
        await publish_many(http, "n", [1, 2, {"a": list(range(40))},
                                          {"a": list(range(40)), "b": 1}])
        answer = await poll(http, "/channels/n", since="0", delta="1")
        assert kinds(answer["messages"]) == ["whole", "whole", "whole", "delta"]


async def test_delta_takes_1_or_0_and_subscribe_takes_a_boolean(server: Server) -> None:
    async with http_client(server) as http:
        for value in ("2", "yes", ""):
            response = await http.get("/channels/stocks", params={"delta": value})
            require_error(response, 400, "invalid_delta", "a bad delta")
        response = await http.get("/channels/stocks", params={"delta": "x"},
                                  headers={"Accept": "text/event-stream"})
        require_error(response, 400, "invalid_delta", "a bad delta on SSE")
    async with connect(ws_url(server, "/subscribe")) as ws:
        for flag in ("delta", "latest"):
            await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": "c",
                                      flag: "yes"}))
            reply = await recv_json(ws)
            assert reply["type"] == "error" and reply["error"] == "invalid_command"
        await ws.send(json.dumps({"type": "ping", "req": 2}))
        assert (await recv_json(ws))["req"] == 2  # the connection stays


async def test_deltas_across_two_nodes_on_redis(make_server: ServerFactory,
                                                redis_url: str) -> None:
    """Published on one node, read on another: the reader's node computes the deltas of the
    messages it follows, live and from the log alike."""
    writer = await make_server(broker=redis_url)
    reader = await make_server(broker=redis_url)
    channel = f"stocks-{id(writer)}"
    values = ticks(6)
    applier = Applier()
    async with http_client(writer) as http:
        ids = await publish_many(http, channel, values[:3])
        async with connect(ws_url(reader, f"/channels/{channel}?since=0&delta=1")) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            got = [await recv_json(ws) for _ in range(3)]
            live = await publish_many(http, channel, values[3:])
            got += [await recv_json(ws) for _ in range(3)]
        assert [m["id"] for m in got] == ids + live
        assert kinds(got) == ["whole"] + ["delta"] * 5
        assert [applier.whole(m) for m in got] == values
    async with http_client(reader) as http:
        answer = await poll(http, f"/channels/{channel}", since="0", delta="1")
        assert kinds(answer["messages"]) == ["whole"] + ["delta"] * 5
