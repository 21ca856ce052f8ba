"""WebSockets over real sockets, with the ``websockets`` package (and one raw client)."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import Any
from unittest.mock import ANY

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import SAMPLE_VALUES, until
from tidings import Server
from tidings.testing import (
    UNIT,
    RawWebSocket,
    command,
    http_client,
    poll,
    publish,
    publish_many,
    recv_json,
    recv_messages,
    seq_of,
    ws_url,
)


async def test_url_subscription_says_subscribed_then_delivers(server: Server) -> None:
    async with http_client(server) as client:
        last = await publish(client, "c", "before")
        async with connect(ws_url(server, "/channels/c")) as ws:
            assert await recv_json(ws) == {"type": "subscribed", "channel": "c",
                                           "next": last, "client": ANY}
            ids = await publish_many(client, "c", ["x", {"y": 1}])
            frames = await recv_messages(ws, 2)
    assert [f["id"] for f in frames] == ids
    assert [f["data"] for f in frames] == ["x", {"y": 1}]
    for frame in frames:
        assert frame["channel"] == "c"
        assert isinstance(frame["time"], int)


async def test_published_values_arrive_unchanged(server: Server) -> None:
    async with http_client(server) as client, connect(ws_url(server, "/channels/v")) as ws:
        await recv_json(ws)
        ids = await publish_many(client, "v", SAMPLE_VALUES)
        frames = await recv_messages(ws, len(SAMPLE_VALUES))
    assert [f["id"] for f in frames] == ids
    assert [f["data"] for f in frames] == SAMPLE_VALUES


async def test_url_subscription_with_since_replays_then_goes_live(server: Server) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(4)))
        async with connect(ws_url(server, f"/channels/c?since={ids[1]}")) as ws:
            assert await recv_json(ws) == {"type": "subscribed", "channel": "c",
                                           "next": ids[1], "client": ANY}
            assert [f["id"] for f in await recv_messages(ws, 2)] == ids[2:]
            new = await publish(client, "c", "live")
            assert [f["id"] for f in await recv_messages(ws, 1)] == [new]


async def test_commands_subscribe_unsubscribe_publish_ping(server: Server) -> None:
    async with connect(ws_url(server, "/subscribe")) as ws:
        ack = await command(ws, type="ping", req=1)
        assert ack == {"type": "ack", "req": 1}

        ack = await command(ws, type="subscribe", req="s1", channel="news")
        assert ack["type"] == "ack" and ack["req"] == "s1" and ack["channel"] == "news"
        assert seq_of(ack["next"]) == 0

        early: list[dict[str, Any]] = []
        ack = await command(ws, early, type="publish", req=2, channel="news",
                            data={"headline": "é"})
        assert ack["type"] == "ack" and ack["channel"] == "news"
        published = ack["id"]
        # Our own subscription delivers what we published (ack and message in any order).
        (frame,) = early or await recv_messages(ws, 1)
        assert frame["type"] == "message"
        assert frame["id"] == published and frame["data"] == {"headline": "é"}

        ack = await command(ws, type="unsubscribe", req=3, channel="news")
        assert ack == {"type": "ack", "req": 3, "channel": "news"}
        ack = await command(ws, type="publish", req=4, channel="news", data="unseen")
        assert ack["type"] == "ack"
        # Not subscribed any more: the next frame is the reply to the next command.
        await ws.send(json.dumps({"type": "ping", "req": 5}))
        assert await recv_json(ws) == {"type": "ack", "req": 5}

    async with http_client(server) as client:
        answer = await poll(client, "/channels/news", since="0")
        assert [m["data"] for m in answer["messages"]] == [{"headline": "é"}, "unseen"]


async def test_publish_command_reaches_other_techniques(server: Server) -> None:
    async with http_client(server) as client:
        start = (await poll(client, "/channels/c"))["next"]
        async with connect(ws_url(server, "/subscribe")) as ws:
            ack = await command(ws, type="publish", req=1, channel="c", data=[1, "two"])
        answer = await poll(client, "/channels/c", since=start)
        assert [(m["id"], m["data"]) for m in answer["messages"]] == [(ack["id"], [1, "two"])]


async def test_subscribe_command_with_since_resumes(server: Server) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(5)))
        async with connect(ws_url(server, "/subscribe")) as ws:
            ack = await command(ws, type="subscribe", req=1, channel="c", since=ids[2])
            assert ack == {"type": "ack", "req": 1, "channel": "c", "next": ids[2], "client": ANY}
            assert [f["id"] for f in await recv_messages(ws, 2)] == ids[3:]
            ack = await command(ws, type="subscribe", req=2, channel="d", since="0")
            assert seq_of(ack["next"]) == 0
            d = await publish(client, "d", "d")
            c = await publish(client, "c", "c")
            frames = await recv_messages(ws, 2)
            assert [(f["channel"], f["id"]) for f in frames] == [("d", d), ("c", c)]


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("not json", "invalid_json"),
        ('{"type": "ping"}', "invalid_command"),
        ('{"type": "dance", "req": 7}', "unknown_command"),
        ('{"type": "subscribe", "req": 7, "channel": "bad name!"}', None),
        ('{"type": "subscribe", "req": 7, "channel": "c", "since": "nonsense"}', None),
        ('{"type": "subscribe", "req": 7, "channel": "c", "since": 5}', "invalid_command"),
        ('{"type": "publish", "req": 7, "channel": "c"}', "invalid_command"),
        ("[1, 2]", "invalid_command"),
    ],
)
async def test_errors_keep_the_connection_open(server: Server, frame: str,
                                               error: str | None) -> None:
    async with connect(ws_url(server, "/channels/c")) as ws:
        await recv_json(ws)
        await ws.send(frame)
        reply = await recv_json(ws)
        assert reply["type"] == "error"
        assert isinstance(reply["error"], str) and reply["error"]
        assert isinstance(reply["message"], str) and reply["message"]
        if error is not None:
            assert reply["error"] == error
        if '"req": 7' in frame:
            assert reply["req"] == 7
        assert await command(ws, type="ping", req="after") == {"type": "ack", "req": "after"}
        # And it still delivers.
        async with http_client(server) as client:
            new = await publish(client, "c", "still here")
        assert [f["id"] for f in await recv_messages(ws, 1)] == [new]


async def test_subscribing_twice_is_an_error(server: Server) -> None:
    async with connect(ws_url(server, "/channels/c")) as ws:
        await recv_json(ws)
        reply = await command(ws, type="subscribe", req=1, channel="c")
        assert reply["type"] == "error" and reply["error"] == "already_subscribed"
        assert await command(ws, type="ping", req=2) == {"type": "ack", "req": 2}


async def test_a_cursor_ahead_of_the_log_is_refused_with_an_error(server: Server) -> None:
    async with http_client(server) as client:
        last = await publish(client, "c", 1)
    ahead = f"{last.rsplit('-', 1)[0]}-{seq_of(last) + 10}"
    async with connect(ws_url(server, "/subscribe")) as ws:
        reply = await command(ws, type="subscribe", req=1, channel="c", since=ahead)
        assert reply["type"] == "error" and reply["req"] == 1
        assert await command(ws, type="ping", req=2) == {"type": "ack", "req": 2}


async def test_multi_channel_url_subscription(server: Server) -> None:
    async with http_client(server) as client:
        a0 = await publish(client, "a", "a0")
        async with connect(ws_url(server, "/subscribe?channel=a&channel=b")) as ws:
            first, second = await recv_json(ws), await recv_json(ws)
            assert first == {"type": "subscribed", "channel": "a", "next": a0, "client": ANY}
            assert second["type"] == "subscribed" and second["channel"] == "b"
            published = [("a", await publish(client, "a", "a1")),
                         ("b", await publish(client, "b", "b1")),
                         ("b", await publish(client, "b", "b2")),
                         ("a", await publish(client, "a", "a2"))]
            frames = await recv_messages(ws, 4)
            assert [(f["channel"], f["id"]) for f in frames] == published


async def test_multi_channel_url_subscription_resumes_from_a_multi_cursor(server: Server) -> None:
    async with http_client(server) as client:
        a = await publish_many(client, "a", ["a1", "a2", "a3"])
        b = await publish_many(client, "b", ["b1", "b2"])
        cursor = f"a={a[0]},b={b[1]}"
        async with connect(ws_url(server, f"/subscribe?channel=a&channel=b&since={cursor}")) as ws:
            frames = [await recv_json(ws) for _ in range(4)]
            # Each subscription says where it starts, then replays what it missed.
            assert frames == [
                {"type": "subscribed", "channel": "a", "next": a[0], "client": ANY},
                *[{"type": "message", "channel": "a", "id": i, "data": d, "time": f["time"]}
                  for i, d, f in zip(a[1:], ["a2", "a3"], frames[1:3], strict=True)],
                {"type": "subscribed", "channel": "b", "next": b[1], "client": ANY},
            ]
            new = await publish(client, "b", "b3")
            assert [f["id"] for f in await recv_messages(ws, 1)] == [new]


async def test_server_pings_are_answered_and_the_connection_stays_open(make_server) -> None:
    server = await make_server(heartbeat_interval=0.1)
    async with connect(ws_url(server, "/channels/c"), ping_interval=None) as ws:
        await recv_json(ws)
        # Let five intervals pass: twice the no-pong limit (the client answers pings itself).
        await asyncio.sleep(0.5)
        assert await command(ws, type="ping", req=1) == {"type": "ack", "req": 1}
        async with http_client(server) as client:
            new = await publish(client, "c", "x")
        assert [f["id"] for f in await recv_messages(ws, 1)] == [new]


async def test_server_pings_arrive_and_a_silent_client_is_closed_with_4000(make_server) -> None:
    server = await make_server(heartbeat_interval=0.1)
    raw = await RawWebSocket.connect(server, "/channels/c")
    try:
        started = time.monotonic()
        opcode, payload = await raw.read_frame()
        assert opcode == 0x1 and json.loads(payload)["type"] == "subscribed"
        pings = 0
        async with asyncio.timeout(3 * UNIT):  # pings alone must not go on for ever
            while True:
                opcode, payload = await raw.read_frame()
                if opcode != 0x9:
                    break
                pings += 1
        elapsed = time.monotonic() - started
        assert opcode == 0x8, opcode
        (code,) = struct.unpack("!H", payload[:2])
        assert code == 4000
        assert payload[2:].decode()  # a reason a person can read
        assert pings >= 1
        assert elapsed >= 0.2  # more than two intervals of silence
        async with asyncio.timeout(2 * UNIT):
            assert await raw.reader.read() == b""  # then the server closes the TCP connection
    finally:
        await raw.aclose()


async def test_a_client_that_answers_pings_by_hand_stays_open(make_server) -> None:
    server = await make_server(heartbeat_interval=0.1)
    raw = await RawWebSocket.connect(server, "/channels/c")
    try:
        await raw.read_frame()  # subscribed
        deadline = time.monotonic() + 0.6  # six intervals, more than the 2.5 allowed silent
        pings = 0
        while time.monotonic() < deadline:
            opcode, payload = await raw.read_frame(within=2 * UNIT)
            assert opcode == 0x9, (opcode, payload)
            pings += 1
            raw.send_frame(0xA, payload)
        assert pings >= 3
    finally:
        await raw.aclose()


async def test_a_close_from_the_client_is_echoed(server: Server) -> None:
    ws = await connect(ws_url(server, "/channels/c"))
    await recv_json(ws)
    async with asyncio.timeout(5 * UNIT):
        await ws.close(code=1000, reason="bye")
    assert ws.close_code == 1000
    await until(lambda: not server.statistics()["streams"])


async def test_a_binary_frame_closes_with_1003(server: Server) -> None:
    async with connect(ws_url(server, "/channels/c")) as ws:
        await recv_json(ws)
        await ws.send(b"\x00\x01")
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
