"""Refusals that say "not now" are retried with backoff, on every technique (issue 12).

A server answers ``503`` (``broker_unavailable``, ``shutdown``,
``too_many_connections``) or ``429 too_many_connections`` on HTTP, an
``error`` reply to ``subscribe`` or a ``1001``/``1013`` close on a WebSocket.
The subscription backs off, tries the same technique again, and reads once the
server can serve it, resuming from its cursor. Refusals that another attempt
cannot fix still end it at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from clientkit import TECHNIQUES, UNIT, StatusLog, fast_client, ids, take
from websockets.asyncio.server import ServerConnection, serve

import tidings
from conftest import HeldBroker, ServerFactory, until
from rediskit import RedisProcess
from tidings import RequestRefused, Server, Settings
from tidings.brokers.redis import RedisBroker
from tidings.client._session import unavailable, unavailable_reply
from tidings.testing import publish


def retried_because(log: StatusLog, code: str) -> list[tidings.Disconnected]:
    return [event for event in log.events
            if isinstance(event, tidings.Disconnected) and code in event.reason]


async def retried(log: StatusLog, code: str, times: int = 2) -> list[tidings.Disconnected]:
    """Wait until the subscription was refused with ``code`` and retried ``times`` times."""
    await until(lambda: len(retried_because(log, code)) >= times, within=10 * UNIT)
    return retried_because(log, code)


# broker_unavailable: a node on a Redis that is not up yet ----------------------------


@pytest.fixture
async def late_redis() -> AsyncIterator[RedisProcess]:
    """A private Redis with a port but not running yet: ``late_redis.start()`` later."""
    redis = RedisProcess()
    try:
        yield redis
    finally:
        await asyncio.to_thread(redis.stop)


async def publish_when_up(server: Server, channel: str, data: object) -> str:
    """Publish once the node's broker takes it (it answers 503 until Redis is up)."""
    async with httpx.AsyncClient(base_url=server.url) as http, asyncio.timeout(15 * UNIT):
        while True:
            response = await http.post(f"/channels/{channel}", json=data)
            if response.status_code == 201:
                return str(response.json()["id"])
            assert response.status_code == 503, response.text
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("technique", [*TECHNIQUES, "auto"])
async def test_a_subscription_refused_while_redis_is_away_reads_once_it_comes(
    technique: str, late_redis: RedisProcess, make_server: ServerFactory,
) -> None:
    server = await make_server(broker=late_redis.url)
    log = StatusLog()
    async with fast_client(server.url, technique, on_status=log) as client:
        subscription = client.subscribe("prices", since="0")
        reading = asyncio.ensure_future(take(subscription, 1, within=20 * UNIT))
        refusals = await retried(log, "broker_unavailable")
        assert not reading.done()
        assert all(event.transport == refusals[0].transport for event in refusals)
        if technique == "auto":
            assert refusals[0].transport == "websocket"  # not a reason to fall back
        await asyncio.to_thread(late_redis.start)
        first = await publish_when_up(server, "prices", {"AAPL": 187.2})
        assert ids(await reading) == [first]
        assert subscription.transport == (technique if technique != "auto" else "websocket")
        async with httpx.AsyncClient(base_url=server.url) as http:
            second = await publish(http, "prices", 2)
        assert ids(await take(subscription, 1)) == [second]


async def test_a_websocket_subscription_refused_resumes_from_its_cursor(
    redis_process: RedisProcess,
) -> None:
    """A node that does not hold the channel refuses while Redis is frozen; after it, the
    subscription reads from its cursor: nothing lost, nothing twice."""
    settings = Settings(host="127.0.0.1", port=0, broker=redis_process.url)
    writer = Server(settings, broker=RedisBroker(redis_process.url, settings.retention))
    reader = Server(settings, broker=RedisBroker(redis_process.url, settings.retention,
                                                 timeout=0.2 * UNIT))
    await writer.start()
    await reader.start()
    try:
        async with httpx.AsyncClient(base_url=writer.url) as http:
            published = [await publish(http, "news", n) for n in range(3)]
            await asyncio.to_thread(redis_process.pause)
            log = StatusLog()
            try:
                async with fast_client(reader.url, "websocket", on_status=log) as client:
                    subscription = client.subscribe("news", since=published[0])
                    reading = asyncio.ensure_future(take(subscription, 3, within=20 * UNIT))
                    await retried(log, "broker_unavailable")
                    await asyncio.to_thread(redis_process.resume)
                    later = await publish_when_up(writer, "news", 3)
                    assert ids(await reading) == [*published[1:], later]
            finally:
                if redis_process.paused:
                    await asyncio.to_thread(redis_process.resume)
    finally:
        await reader.aclose()
        await writer.aclose()


# shutdown: a node that closes while a read waits for its broker ------------------------


@pytest.mark.parametrize("technique", [*TECHNIQUES, "auto"])
async def test_a_read_refused_by_a_node_shutting_down_is_retried_on_the_next(
    technique: str,
) -> None:
    broker = HeldBroker()
    first = Server(Settings(host="127.0.0.1", port=0), broker=broker)
    await first.start()
    port = first.port
    log = StatusLog()
    second: Server | None = None
    try:
        async with fast_client(first.url, technique, on_status=log) as client:
            subscription = client.subscribe("prices", since="0")
            reading = asyncio.ensure_future(take(subscription, 1, within=20 * UNIT))
            await until(lambda: broker.waiting >= 1)
            closing = asyncio.ensure_future(first.aclose())
            await until(lambda: first.closing)
            broker.gate.set()  # the read's wait ends after the node began closing: "shutdown"
            await closing
            # A WebSocket is closed with 1001 going away; HTTP reads get 503 shutdown.
            await until(lambda: any("shutdown" in e.reason or "1001" in e.reason
                                    for e in retried_because(log, "")))
            assert not any(isinstance(e, tidings.TransportChanged) for e in log.events)
            second = Server(Settings(host="127.0.0.1", port=port), broker=broker)
            await second.start()
            async with httpx.AsyncClient(base_url=second.url) as http:
                message_id = await publish(http, "prices", 1)
            assert ids(await reading) == [message_id]
            assert subscription.transport == (technique if technique != "auto"
                                              else "websocket")
    finally:
        await first.aclose()
        if second is not None:
            await second.aclose()


# too_many_connections: a node that holds its limit --------------------------------------


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_ip"])
@pytest.mark.parametrize("technique", [*TECHNIQUES, "auto"])
async def test_a_read_refused_by_a_full_node_is_retried_until_a_connection_frees(
    technique: str, limit: str, make_server: ServerFactory,
) -> None:
    server = await make_server(**{limit: 2, "header_timeout": 30 * UNIT})
    fillers = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    try:
        await until(lambda: server.admission.statistics()["connections"] == 2)
        log = StatusLog()
        async with fast_client(server.url, technique, on_status=log) as client:
            subscription = client.subscribe("prices", since="0")
            reading = asyncio.ensure_future(take(subscription, 1, within=20 * UNIT))
            refusals = await retried(log, "too_many_connections")
            status = "503" if limit == "max_connections" else "429"
            assert all(status in event.reason for event in refusals), refusals
            assert not any(isinstance(e, tidings.TransportChanged) for e in log.events)
            for _reader, writer in fillers:
                writer.close()
            fillers = []
            # Publish from inside the limit: the subscription may hold one connection.
            message_id: str | None = None
            async with httpx.AsyncClient(base_url=server.url) as http, \
                    asyncio.timeout(10 * UNIT):
                while message_id is None:
                    response = await http.post("/channels/prices", json=1)
                    if response.status_code == 201:
                        message_id = response.json()["id"]
                    else:
                        await asyncio.sleep(0.02)
            assert ids(await reading) == [message_id]
    finally:
        for _reader, writer in fillers:
            writer.close()


# which answers say "not now" --------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "retryable"), [
    (503, b'{"error": "broker_unavailable", "message": "Redis is away"}', True),
    (503, b'{"error": "shutdown", "message": "bye"}', True),
    (503, b'{"error": "too_many_connections", "message": "full"}', True),
    (429, b'{"error": "too_many_connections", "message": "too many from you"}', True),
    (503, b"<html>Service Unavailable</html>", False),  # a proxy: the technique failed
    (429, b'{"error": "rate_limited", "message": "slow down"}', False),
    (403, b'{"error": "too_many_connections", "message": "odd"}', False),
    (400, b'{"error": "invalid_cursor", "message": "ahead of the log"}', False),
])
def test_which_http_answers_are_retried(status: int, body: bytes, retryable: bool) -> None:
    assert (unavailable(status, body) is not None) is retryable


@pytest.mark.parametrize(("code", "retryable"), [
    ("broker_unavailable", True), ("shutdown", True), ("too_many_connections", True),
    ("forbidden", False), ("invalid_cursor", False), ("already_subscribed", False),
])
def test_which_subscribe_error_replies_are_retried(code: str, retryable: bool) -> None:
    assert (unavailable_reply(RequestRefused(None, code, "")) is not None) is retryable


# a WebSocket closed with 1013 or 1001 before it works ------------------------------------


@pytest.mark.parametrize("code", [1013, 1001])
async def test_a_websocket_closed_with_try_again_later_is_retried_not_given_up(
    code: int,
) -> None:
    """A server (here a stand-in made with the ``websockets`` package) that closes the first
    WebSocket with ``code`` before answering ``subscribe``: ``auto`` stays on WebSocket,
    backs off, and resumes from the cursor on the next one."""
    subscribes: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        command = json.loads(await ws.recv())
        subscribes.append(command)
        if len(subscribes) == 1:
            await ws.close(code, "come back later")
            return
        await ws.send(json.dumps({"type": "ack", "req": command["req"],
                                  "channel": "prices", "next": "aaaaaaaa-1"}))
        await ws.send(json.dumps({"type": "message", "channel": "prices",
                                  "id": "aaaaaaaa-2", "data": 42, "time": 1}))
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as stand_in:
        port = stand_in.sockets[0].getsockname()[1]
        log = StatusLog()
        async with fast_client(f"http://127.0.0.1:{port}", on_status=log) as client:
            subscription = client.subscribe("prices", since="aaaaaaaa-1")
            (item,) = await take(subscription, 1)
    assert (item.id, item.data) == ("aaaaaaaa-2", 42)  # type: ignore[union-attr]
    assert [command.get("since") for command in subscribes] == ["aaaaaaaa-1", "aaaaaaaa-1"]
    (refused,) = retried_because(log, str(code))
    assert refused.transport == "websocket"
    assert not any(isinstance(e, tidings.TransportChanged) for e in log.events)
