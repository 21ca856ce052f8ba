"""History backwards through our Python client: scroll back, then go live from the top."""

from __future__ import annotations

import asyncio

import pytest

import tidings
from conftest import UNIT, ServerFactory
from tidings import Server
from tidings.client.history import parse_history
from tidings.errors import ConnectionFailed, RequestRefused, UsageError
from tidings.testing import http_client, publish_many


async def test_scroll_back_then_subscribe_from_the_top(server: Server) -> None:
    async with http_client(server) as http:
        ids = await publish_many(http, "chat", [{"n": n} for n in range(1, 6)])
    async with tidings.connect(server.url, "poll", poll_interval=0.05) as client:
        page = await client.history("chat", limit=2)
        assert isinstance(page, tidings.History)
        assert [m.data for m in page.messages] == [{"n": 5}, {"n": 4}]
        assert [m.id for m in page.messages] == [ids[4], ids[3]]
        assert (page.next, page.before, page.more, page.gaps) == (ids[4], ids[3], True, ())
        older = await client.history("chat", before=page.before, limit=10)
        assert [m.data["n"] for m in older.messages] == [3, 2, 1]
        assert (older.before, older.more) == (None, False)
        bounded = await client.history("chat", since=ids[2])
        assert [m.data["n"] for m in bounded.messages] == [5, 4]

        subscription = client.subscribe("chat", since=page.next)
        async with asyncio.timeout(5 * UNIT):
            async with http_client(server) as http:
                (live,) = await publish_many(http, "chat", [{"n": 6}])
            item = await anext(aiter(subscription))
        assert isinstance(item, tidings.Message) and item.id == live
        await subscription.aclose()


async def test_history_gaps_and_refusals(make_server: ServerFactory) -> None:
    server = await make_server(history_size=2)
    async with http_client(server) as http:
        ids = await publish_many(http, "chat", [{"n": n} for n in range(1, 5)])
    async with tidings.connect(server.url) as client:
        page = await client.history("chat", since=ids[0])
        assert [m.data["n"] for m in page.messages] == [4, 3]
        assert page.gaps == (tidings.Gap("chat", ids[0], ids[1], "expired", 1),)
        with pytest.raises(RequestRefused) as refused:
            await client.history("chat", before=ids[-1][:-1] + "9")
        assert (refused.value.status, refused.value.code) == (400, "invalid_cursor")
        with pytest.raises(UsageError):
            await client.history("chat", limit=0)
        with pytest.raises(UsageError):
            await client.history("no spaces")


async def test_history_of_an_unreachable_server() -> None:
    async with tidings.connect("http://127.0.0.1:9", connect_timeout=UNIT) as client:
        with pytest.raises(ConnectionFailed):
            await client.history("chat")


@pytest.mark.parametrize("answer", [
    None, [], {"messages": []}, {"messages": [{"id": "x"}], "next": "a-1"},
    {"messages": [{"channel": "other", "id": "k2j4h5g6-1", "data": 1, "time": 1}],
     "next": "k2j4h5g6-1"},
    {"messages": [], "next": 5},
])
def test_a_malformed_history_answer_is_a_connection_failure(answer: object) -> None:
    with pytest.raises(ConnectionFailed, match="malformed"):
        parse_history("chat", answer)
