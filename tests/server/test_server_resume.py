"""Exact resume on every technique, switching technique, and gap signals.

The guarantee under test: a client that passes the id of the last message it
saw gets every later retained message exactly once, in order, whichever
technique it used before and uses now; and a cursor the log can no longer
honour (expired, or from another epoch) gets an explicit gap first.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from websockets.asyncio.client import connect

from tidings import Server
from tidings.testing import (
    UNIT,
    http_client,
    open_sse,
    poll,
    publish,
    publish_many,
    recv_json,
    recv_messages,
    ws_url,
)

TECHNIQUES = ["poll", "longpoll", "sse", "websocket"]

Live = Callable[[], Awaitable[Any]]


async def read_on(technique: str, server: Server, client: httpx.AsyncClient, channel: str,
                  since: str, count: int, live: Live) -> list[dict[str, Any]]:
    """Read exactly ``count`` messages from ``since``; call ``live`` once reading has begun.

    Polls ask for small pages so that they stop at ``count`` exactly; streams
    are closed with whatever else the server already sent still unread.
    """
    path = f"/channels/{channel}"
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(10 * UNIT):
        if technique in ("poll", "longpoll"):
            cursor = since
            publishing: asyncio.Task[Any] | None = None
            while len(messages) < count:
                params: dict[str, Any] = {"since": cursor, "limit": min(2, count - len(messages))}
                if technique == "longpoll":
                    params["wait"] = 5 * UNIT
                answer = await poll(client, path, **params)
                assert "gap" not in answer
                messages += answer["messages"]
                cursor = answer["next"]
                if publishing is None:
                    # A long poll may be parked when these arrive; a poll finds them later.
                    publishing = asyncio.create_task(live())
                    if technique == "poll":
                        await publishing
            assert publishing is not None
            await publishing
        elif technique == "sse":
            # A resuming EventSource sends Last-Event-ID; a first connection uses ?since=.
            params = {"since": since} if since == "0" else None
            headers = None if since == "0" else {"Last-Event-ID": since}
            async with open_sse(client, path, params=params, headers=headers) as reader:
                opening = await reader.next_block()
                assert opening.retry is not None
                assert opening.id is not None
                await live()
                events = await reader.messages(count)
            for event in events:
                message = event.json()
                assert event.id == message["id"]
                messages.append(message)
        else:
            async with connect(ws_url(server, f"{path}?since={since}")) as ws:
                subscribed = await recv_json(ws)
                assert subscribed["type"] == "subscribed"
                await live()
                messages = await recv_messages(ws, count)
                for message in messages:
                    assert message.pop("type") == "message"
    assert len(messages) == count
    return messages


@pytest.mark.parametrize(("first", "second"), list(itertools.product(TECHNIQUES, repeat=2)))
async def test_resume_exactly_once_in_order_across_techniques(server: Server, first: str,
                                                              second: str) -> None:
    async with http_client(server) as client, http_client(server) as publisher:
        values = [{"n": n, "text": f"message {n}"} for n in range(12)]
        published = await publish_many(publisher, "c", values[:3])

        async def publish_live(chunk: slice) -> None:
            published.extend(await publish_many(publisher, "c", values[chunk]))

        # Technique A reads 5: 3 from history and 2 of the 3 published while it reads.
        seen = await read_on(first, server, client, "c", "0", 5,
                             lambda: publish_live(slice(3, 6)))
        last = seen[-1]["id"]
        # Published while no client is connected.
        await publish_live(slice(6, 9))
        # Technique B resumes from the last id A saw: 4 from history, 3 live.
        seen += await read_on(second, server, client, "c", last, 7,
                              lambda: publish_live(slice(9, 12)))

        assert [m["id"] for m in seen] == published
        assert [m["data"] for m in seen] == values
        assert all(m["channel"] == "c" for m in seen)
        # Nothing more is waiting after the last message B saw.
        assert (await poll(client, "/channels/c", since=seen[-1]["id"]))["messages"] == []


# Gaps ------------------------------------------------------------------------------


async def read_with_gap(technique: str, server: Server, client: httpx.AsyncClient,
                        channel: str, since: str, count: int,
                        live: Live) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read from ``since`` expecting a gap: return ``(gaps, messages)``.

    ``count`` messages are expected from the history after the gap; then
    ``live`` publishes one more, which must arrive too (so the technique
    goes on delivering after the gap).
    """
    path = f"/channels/{channel}"
    async with asyncio.timeout(10 * UNIT):
        if technique in ("poll", "longpoll"):
            params: dict[str, Any] = {"since": since}
            if technique == "longpoll":
                params["wait"] = 5 * UNIT
            answer = await poll(client, path, **params)
            assert answer["gap"] is True
            assert len(answer["messages"]) == count
            await live()
            params["since"] = answer["next"]
            following = await poll(client, path, **params)
            assert "gap" not in following
            return answer["gaps"], answer["messages"] + following["messages"]
        if technique == "sse":
            async with open_sse(client, path, headers={"Last-Event-ID": since}) as reader:
                opening = await reader.next_block()
                event = await reader.next_event()
                assert event.event == "gap", event
                # The opening claims no more than the client's own cursor (it has not
                # been told of the gap yet); the gap's id moves the cursor past it.
                assert opening.id == since
                assert event.id == event.json()["to"]
                history = await reader.messages(count)
                await live()
                history += await reader.messages(1)
            return [event.json()], [e.json() for e in history]
        async with connect(ws_url(server, f"{path}?since={since}")) as ws:
            subscribed = await recv_json(ws)
            assert subscribed["type"] == "subscribed"
            frame = await recv_json(ws)
            assert frame.pop("type") == "gap", frame
            assert frame["to"] == subscribed["next"]
            messages = await recv_messages(ws, count)
            await live()
            messages += await recv_messages(ws, 1)
            return [frame], messages


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_cursor_before_the_retained_window_gets_an_expired_gap(make_server,
                                                                       technique: str) -> None:
    server = await make_server(history_size=3)
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(6)))

        async def live() -> None:
            ids.append(await publish(client, "c", "after the gap"))

        gaps, messages = await read_with_gap(technique, server, client, "c", ids[0], 3, live)
    # Kept: 4, 5, 6 of 6; the reader had seen 1, so it missed 2 and 3.
    assert gaps == [{"channel": "c", "from": ids[0], "to": ids[2], "reason": "expired",
                     "missed": 2}]
    assert [m["id"] for m in messages] == ids[3:]
    assert [m["data"] for m in messages] == [3, 4, 5, "after the gap"]


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_cursor_of_another_epoch_gets_an_epoch_gap(make_server, technique: str) -> None:
    server = await make_server(history_size=3)
    elsewhere = await make_server()  # another server: the same channel in another epoch
    async with http_client(elsewhere) as other:
        foreign = (await publish_many(other, "c", ["x", "y"]))[-1]
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(6)))
        assert foreign.split("-")[0] != ids[0].split("-")[0]

        async def live() -> None:
            ids.append(await publish(client, "c", "after the gap"))

        gaps, messages = await read_with_gap(technique, server, client, "c", foreign, 3, live)
    (gap,) = gaps
    assert gap["channel"] == "c"
    assert gap["reason"] == "epoch"
    assert gap["from"] == foreign
    assert gap["to"] == ids[2]
    assert gap["missed"] is None  # the server cannot know how much of a lost log was missed
    # Delivery continues from the oldest retained message.
    assert [m["id"] for m in messages] == ids[3:]


async def test_a_websocket_subscribe_command_reports_a_gap(make_server) -> None:
    server = await make_server(history_size=2)
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(5)))
    async with connect(ws_url(server, "/subscribe")) as ws:
        await ws.send('{"type": "subscribe", "req": 1, "channel": "c", "since": "%s"}' % ids[0])
        ack = await recv_json(ws)
        assert ack == {"type": "ack", "req": 1, "channel": "c", "next": ids[2], "client": ANY}
        gap = await recv_json(ws)
        assert gap == {"type": "gap", "channel": "c", "from": ids[0], "to": ids[2],
                       "reason": "expired", "missed": 2}
        assert [f["id"] for f in await recv_messages(ws, 2)] == ids[3:]


async def test_no_gap_at_the_edge_of_the_window(make_server) -> None:
    """The cursor just before the oldest retained message misses nothing."""
    server = await make_server(history_size=3)
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(6)))
        answer = await poll(client, "/channels/c", since=ids[2])
        assert "gap" not in answer
        assert [m["id"] for m in answer["messages"]] == ids[3:]


async def test_a_multi_channel_poll_reports_the_gap_of_each_channel(make_server) -> None:
    server = await make_server(history_size=2)
    async with http_client(server) as client:
        a = await publish_many(client, "a", list(range(4)))
        b = await publish_many(client, "b", list(range(2)))
        answer = await poll(client, "/subscribe", channel=["a", "b"], since=f"a={a[0]},b={b[0]}")
        assert answer["gap"] is True
        assert answer["gaps"] == [{"channel": "a", "from": a[0], "to": a[1], "reason": "expired",
                                   "missed": 1}]
        assert sorted(m["id"] for m in answer["messages"]) == sorted(a[2:] + b[1:])
        assert answer["next"] == f"a={a[-1]},b={b[-1]}"


async def test_a_multi_channel_stream_reports_a_gap_and_resumes(make_server) -> None:
    server = await make_server(history_size=2)
    async with http_client(server) as client:
        a = await publish_many(client, "a", list(range(4)))
        b = await publish_many(client, "b", list(range(1)))
        async with open_sse(client, "/subscribe", params={"channel": ["a", "b"]},
                            headers={"Last-Event-ID": f"a={a[0]},b={b[0]}"}) as reader:
            await reader.next_block()
            gap = await reader.next_event()
            assert gap.event == "gap"
            assert gap.json()["reason"] == "expired" and gap.json()["channel"] == "a"
            assert gap.id == f"a={a[1]},b={b[0]}"
            events = await reader.messages(2)
            assert [e.json()["id"] for e in events] == a[2:]
            assert reader.last_id == f"a={a[3]},b={b[0]}"
