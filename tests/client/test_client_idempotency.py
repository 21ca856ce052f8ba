"""``idempotency_key`` in the Python clients: the synchronous Publisher and Client.publish."""

from __future__ import annotations

import asyncio

import pytest
from clientkit import fast_client

from tidings import Publisher, RequestRefused, Server, UsageError
from tidings.testing import http_client, poll


async def test_the_publisher_retries_safely_with_a_key(server: Server) -> None:
    def retrying_job() -> tuple[list[str], int | None]:
        with Publisher(server.url) as publisher:
            ids = [publisher.publish("jobs", {"n": 1}, idempotency_key="job-1")
                   for _ in range(3)]
            try:
                publisher.publish("jobs", {"n": 2}, idempotency_key="job-1")
            except RequestRefused as exc:
                return ids, exc.status
            return ids, None

    ids, conflict = await asyncio.to_thread(retrying_job)
    assert len(set(ids)) == 1 and conflict == 422
    async with http_client(server) as http:
        stored = await poll(http, "/channels/jobs", since="0")
    assert [m["id"] for m in stored["messages"]] == ids[:1]


def test_the_publisher_checks_the_key_before_sending() -> None:
    with Publisher("http://127.0.0.1:9") as publisher, pytest.raises(UsageError):
        publisher.publish("jobs", 1, idempotency_key="not a key")


@pytest.mark.parametrize("transport", ["poll", "websocket"])
async def test_client_publish_with_a_key(server: Server, transport: str) -> None:
    async with fast_client(server.url, transport) as client:
        first = await client.publish("orders", {"n": 1}, idempotency_key="order-7")
        again = await client.publish("orders", {"n": 1}, idempotency_key="order-7")
        with pytest.raises(RequestRefused) as refused:
            await client.publish("orders", {"n": 2}, idempotency_key="order-7")
    assert first == again
    assert refused.value.code == "idempotency_conflict"
