"""Server-Sent Events over real sockets, read with httpx streaming."""

from __future__ import annotations

import contextlib

from conftest import SAMPLE_VALUES, until
from tidings import Server
from tidings.testing import (
    UNIT,
    SseStream,
    http_client,
    open_sse,
    poll,
    publish,
    publish_many,
    seq_of,
)


async def opening(reader: SseStream) -> str:
    """Read the first block: a ``retry:`` hint and the starting cursor; return the cursor."""
    block = await reader.next_block()
    assert block.retry is not None and block.retry > 0
    assert block.id is not None
    assert block.event == "client" and isinstance(block.json()["client"], str)
    return block.id


async def test_headers_retry_and_opening_id(make_server) -> None:
    server = await make_server(sse_retry_ms=1234)
    async with http_client(server) as client:
        last = await publish(client, "c", "before")
        async with open_sse(client, "/channels/c") as reader:
            headers = reader.response.headers
            assert headers["content-type"].startswith("text/event-stream")
            assert headers["cache-control"] == "no-cache"
            assert headers["x-accel-buffering"] == "no"
            block = await reader.next_block()
            assert block.retry == 1234
            # Without since, the stream starts at the end: its id is the last message's.
            assert block.id == last


async def test_live_events_carry_the_message_id(server: Server) -> None:
    async with http_client(server) as client, http_client(server) as publisher:
        async with open_sse(client, "/channels/c") as reader:
            await opening(reader)
            ids = await publish_many(publisher, "c", ["x", "y"])
            events = await reader.messages(2)
        assert [e.id for e in events] == ids
        assert [e.json()["id"] for e in events] == ids
        assert [e.json()["data"] for e in events] == ["x", "y"]
        assert all(e.json()["channel"] == "c" for e in events)


async def test_published_values_arrive_unchanged(server: Server) -> None:
    async with (http_client(server) as client, http_client(server) as publisher,
                open_sse(client, "/channels/v") as reader):
        await opening(reader)
        ids = await publish_many(publisher, "v", SAMPLE_VALUES)
        events = await reader.messages(len(SAMPLE_VALUES))
    assert [e.id for e in events] == ids
    assert [e.json()["data"] for e in events] == SAMPLE_VALUES


async def test_since_0_replays_the_retained_history_then_goes_live(server: Server) -> None:
    async with http_client(server) as client:
        old = await publish_many(client, "c", [1, 2, 3])
        async with open_sse(client, "/channels/c", params={"since": "0"}) as reader:
            start = await opening(reader)
            assert seq_of(start) == 0
            backlog = await reader.messages(3)
            new = await publish(client, "c", 4)
            live = await reader.messages(1)
    assert [e.id for e in backlog + live] == [*old, new]


async def test_resume_with_last_event_id(server: Server) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(5)))
        async with open_sse(client, "/channels/c",
                            headers={"Last-Event-ID": ids[1]}) as reader:
            assert await opening(reader) == ids[1]
            events = await reader.messages(3)
    assert [e.id for e in events] == ids[2:]


async def test_resume_with_since(server: Server) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(5)))
        async with open_sse(client, "/channels/c", params={"since": ids[2]}) as reader:
            assert await opening(reader) == ids[2]
            events = await reader.messages(2)
    assert [e.id for e in events] == ids[3:]


async def test_last_event_id_wins_over_since(server: Server) -> None:
    """A page that reconnects with ``?since=`` in its URL resumes from the newer id."""
    async with http_client(server) as client:
        ids = await publish_many(client, "c", list(range(5)))
        async with open_sse(client, "/channels/c", params={"since": ids[0]},
                            headers={"Last-Event-ID": ids[3]}) as reader:
            assert await opening(reader) == ids[3]
            events = await reader.messages(1)
            assert [e.id for e in events] == ids[4:]
            new = await publish(client, "c", "live")
            assert [e.id for e in await reader.messages(1)] == [new]


async def test_reconnecting_like_an_eventsource_loses_nothing(server: Server) -> None:
    """Disconnect, publish meanwhile, reconnect with the last id seen: each message once."""
    async with http_client(server) as client:
        seen: list[str] = []
        async with open_sse(client, "/channels/c", params={"since": "0"}) as reader:
            await opening(reader)
            published = await publish_many(client, "c", ["a", "b", "c"])
            seen += [e.id for e in await reader.messages(2)]
            last = reader.last_id
        assert last == seen[-1]
        published += await publish_many(client, "c", ["d", "e"])
        async with open_sse(client, "/channels/c", params={"since": "0"},
                            headers={"Last-Event-ID": last}) as reader:
            await opening(reader)
            seen += [e.id for e in await reader.messages(3)]
            published += [await publish(client, "c", "f")]
            seen += [e.id for e in await reader.messages(1)]
    assert seen == published


async def test_an_opening_id_resumes_a_stream_that_saw_no_message(server: Server) -> None:
    """The opening ``id:`` is the cursor an EventSource sends back if it saw nothing else."""
    async with http_client(server) as client:
        async with open_sse(client, "/channels/c") as reader:
            await opening(reader)
            last = reader.last_id
        missed = await publish(client, "c", "published while away")
        assert last is not None
        async with open_sse(client, "/channels/c", headers={"Last-Event-ID": last}) as reader:
            await opening(reader)
            assert [e.id for e in await reader.messages(1)] == [missed]


async def test_heartbeats_are_comment_lines(make_server) -> None:
    server = await make_server(heartbeat_interval=0.2)
    async with http_client(server) as client, open_sse(client, "/channels/quiet") as reader:
        await opening(reader)
        for _ in range(2):
            block = await reader.next_block(within=UNIT + 0.4)
            assert block.comments and block.data is None and block.event is None


async def test_many_subscribers_get_every_message(server: Server) -> None:
    async with contextlib.AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(http_client(server))
        readers = []
        for _ in range(3):
            client = await stack.enter_async_context(http_client(server))
            readers.append(await stack.enter_async_context(open_sse(client, "/channels/c")))
        for reader in readers:
            await opening(reader)
        ids = await publish_many(publisher, "c", list(range(10)))
        for reader in readers:
            assert [e.id for e in await reader.messages(10)] == ids


async def test_a_closed_stream_is_unsubscribed(server: Server) -> None:
    async with http_client(server) as client:
        async with open_sse(client, "/channels/c") as reader:
            await opening(reader)
            assert server.statistics()["streams"] == 1
        await until(lambda: not server.statistics()["streams"])
        await publish(client, "c", "nobody listens")
        assert server.broker.hub.subscribers("c") == 0


async def test_multi_channel_stream_resumes_every_channel_exactly(server: Server) -> None:
    async with http_client(server) as client:
        a_old = await publish(client, "a", "a-old")
        b_old = await publish(client, "b", "b-old")
        async with open_sse(client, "/subscribe", params={"channel": ["a", "b"]}) as reader:
            start = await opening(reader)
            assert start == f"a={a_old},b={b_old}"
            a1 = await publish(client, "a", "a1")
            b1 = await publish(client, "b", "b1")
            events = await reader.messages(2)
            assert [e.json()["id"] for e in events] == [a1, b1]
            assert [e.id for e in events] == [f"a={a1},b={b_old}", f"a={a1},b={b1}"]
            a2 = await publish(client, "a", "a2")
            (event,) = await reader.messages(1)
            assert event.json()["id"] == a2
            # b2 is published but not read before the client goes away.
            b2 = await publish(client, "b", "b2")
            last = event.id
        assert last == f"a={a2},b={b1}"
        a3 = await publish(client, "a", "a3")
        async with open_sse(client, "/subscribe", params={"channel": ["a", "b"]},
                            headers={"Last-Event-ID": last}) as reader:
            assert await opening(reader) == last
            events = await reader.messages(2)
            assert sorted(e.json()["id"] for e in events) == sorted([b2, a3])
            assert events[-1].id == f"a={a3},b={b2}"
            b3 = await publish(client, "b", "b3")
            (event,) = await reader.messages(1)
            assert event.json()["id"] == b3
            assert event.id == f"a={a3},b={b3}"


async def test_multi_channel_stream_from_0(server: Server) -> None:
    async with http_client(server) as client:
        a = await publish_many(client, "a", ["a1", "a2"])
        b = await publish_many(client, "b", ["b1"])
        async with open_sse(client, "/subscribe", params={"channel": ["a", "b"], "since": "0"},
                            ) as reader:
            await opening(reader)
            events = await reader.messages(3)
        got = sorted(e.json()["id"] for e in events)
        assert got == sorted(a + b)
        # The last event's id resumes after everything: a poll with it finds nothing.
        answer = await poll(client, "/subscribe", channel=["a", "b"], since=events[-1].id)
        assert answer["messages"] == []
