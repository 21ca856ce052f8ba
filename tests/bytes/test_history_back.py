"""History backwards over HTTP: ``?before=ID`` and ``?order=desc``, read with httpx.

On a server with the memory broker and on two nodes sharing a Redis; the
answers are the ``tidings.testing`` poll answers, with messages newest first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import ServerFactory
from tidings import Server
from tidings.testing import http_client, publish_many, require_error


@pytest.fixture(params=["memory", "redis"])
async def servers(request: pytest.FixtureRequest, make_server: ServerFactory
                  ) -> AsyncIterator[tuple[Server, Server]]:
    """Two nodes: one server twice with memory, two nodes on one Redis with redis."""
    if request.param == "memory":
        server = await make_server()
        yield server, server
    else:
        url = request.getfixturevalue("redis_url")
        yield await make_server(broker=url), await make_server(broker=url)


def values(answer: dict[str, Any]) -> list[int]:
    return [message["data"]["n"] for message in answer["messages"]]


async def get(http: Any, path: str, **query: Any) -> dict[str, Any]:
    response = await http.get(path, params=query)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-cache"
    answer: dict[str, Any] = response.json()
    return answer


async def test_the_last_messages_newest_first_then_paging_back(
        servers: tuple[Server, Server]) -> None:
    writer, reader = servers
    async with http_client(writer) as http_w, http_client(reader) as http:
        ids = await publish_many(http_w, "chat", [{"n": n} for n in range(1, 8)])
        last = await get(http, "/channels/chat", order="desc", limit=3)
        assert values(last) == [7, 6, 5]
        assert [m["id"] for m in last["messages"]] == ids[:-4:-1]
        assert last["next"] == ids[-1]  # a live read from here misses nothing
        assert (last["more"], last["before"]) == (True, ids[4])
        assert "gap" not in last
        same = await get(http, "/channels/chat", since="0", order="desc", limit=3)
        assert same == last
        older = await get(http, "/channels/chat", before=last["before"], limit=3)
        assert values(older) == [4, 3, 2] and older["before"] == ids[1]
        assert older["next"] == ids[3]
        oldest = await get(http, "/channels/chat", before=older["before"], limit=3)
        assert values(oldest) == [1]
        assert "more" not in oldest and "before" not in oldest
        forward = await get(http, "/channels/chat", since=last["next"])
        assert forward["messages"] == []


async def test_since_bounds_a_read_backwards(servers: tuple[Server, Server]) -> None:
    writer, reader = servers
    async with http_client(writer) as http_w, http_client(reader) as http:
        ids = await publish_many(http_w, "chat", [{"n": n} for n in range(1, 6)])
        answer = await get(http, "/channels/chat", since=ids[1], order="desc")
        assert values(answer) == [5, 4, 3] and "more" not in answer
        answer = await get(http, "/channels/chat", since=ids[1], before=ids[3])
        assert values(answer) == [3]


async def test_expired_history_is_a_gap_only_for_a_since_cursor(
        make_server: ServerFactory) -> None:
    server = await make_server(history_size=3)
    async with http_client(server) as http:
        ids = await publish_many(http, "chat", [{"n": n} for n in range(1, 7)])
        answer = await get(http, "/channels/chat", order="desc")
        assert values(answer) == [6, 5, 4] and "gap" not in answer
        answer = await get(http, "/channels/chat", order="desc", since=ids[0])
        assert values(answer) == [6, 5, 4]
        assert answer["gap"] is True
        assert answer["gaps"] == [{"channel": "chat", "from": ids[0], "to": ids[2],
                                   "reason": "expired", "missed": 2}]


async def test_a_channel_nobody_published_to(server: Server) -> None:
    async with http_client(server) as http:
        answer = await get(http, "/channels/quiet", order="desc")
        assert answer["messages"] == [] and answer["next"].endswith("-0")
        (first,) = await publish_many(http, "quiet", [{"n": 1}])
        assert first == answer["next"][:-1] + "1"


async def test_before_from_a_lost_log_is_an_epoch_gap(make_server: ServerFactory) -> None:
    gone = await make_server()
    async with http_client(gone) as http:
        (old,) = await publish_many(http, "chat", [{"n": 1}])
    server = await make_server()
    async with http_client(server) as http:
        (new,) = await publish_many(http, "chat", [{"n": 2}])
        answer = await get(http, "/channels/chat", before=old)
        assert answer["messages"] == [] and answer["next"] == new
        assert answer["gaps"] == [{"channel": "chat", "from": old, "to": new,
                                   "reason": "epoch", "missed": None}]


@pytest.mark.parametrize(("path", "query", "headers", "code"), [
    ("/channels/chat", {"order": "sideways"}, {}, "invalid_order"),
    ("/channels/chat", {"order": "asc", "before": "ID"}, {}, "invalid_order"),
    ("/channels/chat", {"order": "desc", "wait": "5"}, {}, "invalid_order"),
    ("/channels/chat", {"order": "desc"}, {"Accept": "text/event-stream"}, "invalid_order"),
    ("/subscribe", {"channel": "chat", "order": "desc"}, {}, "invalid_order"),
    ("/channels/chat", {"before": "0"}, {}, "invalid_cursor"),
    ("/channels/chat", {"before": "LAST+1"}, {}, "invalid_cursor"),
    ("/channels/chat", {"order": "desc", "limit": "0"}, {}, "invalid_limit"),
])
async def test_bad_reads_backwards_are_refused(server: Server, path: str, query: dict[str, str],
                                               headers: dict[str, str], code: str) -> None:
    async with http_client(server) as http:
        (last,) = await publish_many(http, "chat", [{"n": 1}])
        if query.get("before") == "LAST+1":
            query = {"before": last[:-1] + "2"}
        elif query.get("before") == "ID":
            query = {**query, "before": last}
        response = await http.get(path, params=query, headers=headers)
        require_error(response, 400, code, "a bad read backwards")
        assert (await get(http, "/channels/chat", order="desc"))["messages"][0]["id"] == last


async def test_reads_backwards_are_polls(make_server: ServerFactory) -> None:
    server = await make_server(transports=("websocket", "sse"))
    async with http_client(server) as http:
        response = await http.get("/channels/chat", params={"order": "desc"})
        require_error(response, 403, "transport_disabled", "a read backwards without poll")
