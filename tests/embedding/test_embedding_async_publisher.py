"""``tidings.AsyncPublisher`` against a real server: what ``Publisher`` does, awaited."""

from __future__ import annotations

import asyncio
import socket

import pytest

from conftest import ServerFactory
from tidings import (
    AsyncPublisher,
    ClientClosed,
    ConnectionFailed,
    RequestRefused,
    Server,
    UsageError,
)
from tidings.settings import AuthSettings
from tidings.testing import UNIT, http_client, poll, publish, seq_of

API_KEY = "an-api-key-for-the-embedding-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_publishes_reach_the_log_in_order(server: Server) -> None:
    async with AsyncPublisher(server.url) as publisher, http_client(server) as http:
        ids = [await publisher.publish("jobs", {"n": n}) for n in range(3)]
        answer = await poll(http, "/channels/jobs", since="0")
    assert [m["id"] for m in answer["messages"]] == ids
    assert [m["data"] for m in answer["messages"]] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_tasks_share_one_publisher(server: Server) -> None:
    async with AsyncPublisher(server.url) as publisher:
        ids = await asyncio.gather(*(publisher.publish("c", n) for n in range(50)))
    assert len(set(ids)) == 50
    assert server.health()["published"] == 50


async def test_an_idempotency_key_stores_the_message_once(server: Server) -> None:
    async with AsyncPublisher(server.url) as publisher:
        first = await publisher.publish("c", {"order": 1}, idempotency_key="order-1")
        again = await publisher.publish("c", {"order": 1}, idempotency_key="order-1")
        assert again == first
        with pytest.raises(RequestRefused) as conflict:
            await publisher.publish("c", {"order": 2}, idempotency_key="order-1")
    assert conflict.value.status == 422
    assert server.health()["published"] == 1


async def test_the_same_errors_as_publisher(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=100)
    publisher = AsyncPublisher(server.url)
    with pytest.raises(UsageError):
        await publisher.publish("bad channel", 1)
    with pytest.raises(UsageError):
        await publisher.publish("ok", {1, 2})
    with pytest.raises(UsageError):
        await publisher.publish("ok", 1, idempotency_key="no spaces")
    with pytest.raises(RequestRefused) as too_big:
        await publisher.publish("ok", "x" * 200)
    assert (too_big.value.status, too_big.value.code) == (413, "payload_too_large")
    await publisher.aclose()
    await publisher.aclose()  # idempotent
    with pytest.raises(ClientClosed):
        await publisher.publish("ok", 1)
    with pytest.raises(UsageError, match="URL"):
        AsyncPublisher("ftp://host")
    async with AsyncPublisher(f"http://127.0.0.1:{free_port()}", timeout=UNIT) as nowhere:
        with pytest.raises(ConnectionFailed):
            await nowhere.publish("ok", 1)


async def test_the_api_key_is_sent_as_a_bearer_token(make_server: ServerFactory) -> None:
    server = await make_server(auth=AuthSettings(api_key=API_KEY))
    async with AsyncPublisher(server.url) as anonymous:
        with pytest.raises(RequestRefused) as refused:
            await anonymous.publish("c", 1)
    assert refused.value.status == 401
    async with AsyncPublisher(server.url, token=API_KEY) as publisher, \
            http_client(server) as http:
        message_id = await publisher.publish("c", 1)
        other = await publish(http, "c", 2, headers={"Authorization": f"Bearer {API_KEY}"})
    assert seq_of(other) == seq_of(message_id) + 1
