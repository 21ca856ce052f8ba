"""Idempotent publish over HTTP (httpx) and WebSocket (the ``websockets`` package)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tidings import Server
from tidings.core.idempotency import MAX_IDEMPOTENCY_KEY_LENGTH
from tidings.testing import command, http_client, poll, recv_json, ws_url

ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture(params=["memory", "redis"])
async def servers(request: pytest.FixtureRequest,
                  make_server: ServerFactory) -> tuple[Server, Server]:
    """Two nodes: one server twice on memory, two on one Redis."""
    if request.param == "memory":
        one = await make_server()
        return one, one
    url = request.getfixturevalue("redis_process").url
    return await make_server(broker=url), await make_server(broker=url)


async def test_http_replay_answers_200_with_the_first_id(servers: tuple[Server, Server]) -> None:
    first_node, second_node = servers
    async with http_client(first_node) as one, http_client(second_node) as two:
        first = await one.post("/channels/c", json={"n": 1}, headers={"Idempotency-Key": "abc"})
        again = await two.post("/channels/c", json={"n": 1},
                               headers={"Idempotency-Key": '"abc"'})  # the draft's quoted form
        conflict = await two.post("/channels/c", json={"n": 2},
                                  headers={"Idempotency-Key": "abc"})
        stored = await poll(two, "/channels/c", since="0")
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == {**first.json(), "replayed": True}
    assert conflict.status_code == 422
    assert conflict.json()["error"] == "idempotency_conflict"
    assert [m["id"] for m in stored["messages"]] == [first.json()["id"]]


@pytest.mark.parametrize("key", ["", "a b", "é", "x" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1)])
async def test_http_refuses_a_bad_key(server: Server, key: str) -> None:
    async with http_client(server) as http:
        answer = await http.post("/channels/c", json=1,
                                 headers={"Idempotency-Key": key.encode()})
        stored = await poll(http, "/channels/c", since="0")
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_idempotency_key"
    assert stored["messages"] == []


async def test_websocket_publish_with_a_key(servers: tuple[Server, Server]) -> None:
    first_node, second_node = servers
    async with connect(ws_url(first_node, "/channels/x")) as ws, \
            connect(ws_url(second_node, "/channels/x")) as other:
        fields: dict[str, Any] = {"type": "publish", "channel": "c", "data": {"n": 1},
                                  "idempotency_key": "k-1"}
        seen: list[dict[str, Any]] = []  # subscribed frames, the message
        first = await command(ws, seen, req=1, **fields)
        again = await command(other, seen, req=2, **fields)
        conflict = await command(other, seen, req=3, **{**fields, "data": 2})
        bad = await command(ws, seen, req=4, **{**fields, "idempotency_key": "no spaces"})
        alive = await command(ws, seen, req=5, type="ping")
    assert first == {"type": "ack", "req": 1, "channel": "c", "id": first["id"]}
    assert again == {"type": "ack", "req": 2, "channel": "c", "id": first["id"],
                     "replayed": True}
    assert (conflict["type"], conflict["error"]) == ("error", "idempotency_conflict")
    assert (bad["type"], bad["error"]) == ("error", "invalid_idempotency_key")
    assert alive["type"] == "ack"


async def test_a_replay_is_not_delivered_again(server: Server) -> None:
    async with http_client(server) as http, connect(ws_url(server, "/channels/c")) as ws:
        await recv_json(ws)
        for _ in range(3):
            await http.post("/channels/c", json="once", headers={"Idempotency-Key": "k"})
        await http.post("/channels/c", json="after")
        first = await recv_json(ws)
        second = await recv_json(ws)
    assert (first["data"], second["data"]) == ("once", "after")
