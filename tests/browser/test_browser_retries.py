"""tidings.js retries refusals that say "not now" on every technique (issue 12).

A node whose Redis is not up yet refuses reads with ``503 broker_unavailable``
(HTTP) or an ``error`` reply to ``subscribe`` (WebSocket); a node shutting down
answers ``503 shutdown`` or closes with ``1001``. The page's client backs off,
tries the same technique again, reads once it can, and reports no error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from browserkit import PAGES, browser, page, serving
from test_browser_client import open_client, publish, wait_for, wait_for_ids

from conftest import UNIT, HeldBroker, until
from rediskit import RedisProcess, redis_missing
from tidings import Server, Settings

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

TECHNIQUES = ["websocket", "sse", "longpoll", "poll"]


@pytest.fixture
async def late_redis() -> AsyncIterator[RedisProcess]:
    """A private Redis with a port but not running yet: ``late_redis.start()`` later."""
    if (missing := redis_missing()) is not None:
        pytest.skip(missing)
    redis = RedisProcess()
    try:
        yield redis
    finally:
        await asyncio.to_thread(redis.stop)


async def publish_when_up(url: str, channel: str) -> str:
    """Publish once the node takes it (503 until Redis is up, or a connection is free)."""
    async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(15 * UNIT):
        while True:
            response = await http.post(f"/channels/{channel}", json="up")
            if response.status_code == 201:
                return str(response.json()["id"])
            assert response.status_code in (429, 503), response.text
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("technique", [*TECHNIQUES, "auto"])
async def test_a_read_refused_while_redis_is_away_is_retried_until_it_comes(
    page: Any, technique: str, late_redis: RedisProcess,
) -> None:
    async with serving(broker=late_redis.url) as served:
        transports = None if technique == "auto" else [technique]
        await open_client(page, served, ["p"], transports=transports)
        # Refused, backed off, refused again: still trying, and no error for the page.
        await wait_for(page, "window.client.stats.requests >= 4")
        assert await page.evaluate("window.log.errors") == []
        assert await page.evaluate("window.log.messages") == []
        await asyncio.to_thread(late_redis.start)
        first = await publish_when_up(served.url, "p")
        await wait_for_ids(page, "p", [first])
        await wait_for(page, "window.client.state === 'open'")
        expected = "websocket" if technique == "auto" else technique
        assert await page.evaluate("window.client.transport") == expected
        after = await publish(served, "p", 2)
        await wait_for_ids(page, "p", [first, *after])
        assert await page.evaluate("window.log.errors") == []


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_read_refused_by_a_node_shutting_down_resumes_on_the_next(
    page: Any, technique: str,
) -> None:
    broker = HeldBroker()
    first = Server(Settings(host="127.0.0.1", port=0), broker=broker, pages=PAGES)
    await first.start()
    url = first.url
    second: Server | None = None
    try:
        await open_client(page, _At(url), ["s"], transports=[technique])  # type: ignore[arg-type]
        await until(lambda: broker.waiting >= 1, within=10 * UNIT)
        closing = asyncio.ensure_future(first.aclose())
        await until(lambda: first.closing)
        broker.gate.set()  # the read's wait ends after the node began closing: "shutdown"
        await closing
        second = Server(Settings(host="127.0.0.1", port=first.port), broker=broker,
                        pages=PAGES)
        await second.start()
        ids = await publish(_At(url), "s", 2)  # type: ignore[arg-type]
        await wait_for_ids(page, "s", ids)
        assert await page.evaluate("window.client.transport") == technique
        assert await page.evaluate("window.log.errors") == []
    finally:
        await first.aclose()
        if second is not None:
            await second.aclose()


class _At:
    """Where a page or a publish goes (what ``open_client`` and ``publish`` read)."""

    def __init__(self, url: str) -> None:
        self.url = url


# too_many_connections: a node that holds its limit -------------------------------------

START_CLIENT = """([options, channel]) => {
  const { connect } = window.tidings;
  const client = connect(location.origin, options);
  const log = { messages: [], states: [], errors: [] };
  window.client = client;
  window.log = log;
  client.on("state", (state, detail) => log.states.push({ state, ...detail }));
  client.on("error", (error) => log.errors.push(String(error)));
  client.subscribe(channel, { since: "0", onMessage: (m) => log.messages.push(m) });
}"""


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_ip"])
async def test_a_full_node_is_retried_over_the_same_technique(page: Any, limit: str) -> None:
    """The WebSocket handshake is refused (503/429); /healthz says ``too_many_connections``
    (a browser hides the handshake's answer): the client retries the WebSocket, not SSE."""
    # Idle connections (Chromium's kept-alive and speculative ones) close within moments;
    # the three that fill the node are long polls parked for longer than the test.
    async with serving(**{limit: 3, "keep_alive_timeout": 0.2 * UNIT,
                          "header_timeout": 0.5 * UNIT}) as served:
        server = served.server
        assert server is not None
        await page.goto(f"{served.url}/tidings.js")  # same origin, no client running yet
        await page.evaluate('async () => { window.tidings = await import("/tidings.js"); }')
        await until(lambda: server.admission.statistics()["connections"] == 0)
        sockets: list[Any] = []
        page.on("websocket", lambda socket: sockets.append(socket))
        fillers = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(3)]
        for _reader, writer in fillers:
            writer.write(b"GET /channels/filler?since=0&wait=60 HTTP/1.1\r\n"
                         b"Host: 127.0.0.1\r\n\r\n")
        try:
            await until(lambda: server.admission.statistics()["connections"] == 3)
            options = {"pollInterval": 200, "longpollWait": 3000, "attemptTimeout": 3000,
                       "backoff": {"initial": 100, "max": 500}}
            await page.evaluate(START_CLIENT, [options, "m"])
            # Each attempt is a WebSocket (and a /healthz that says too_many_connections).
            await until(lambda: len(sockets) >= 3, within=10 * UNIT)
            assert await page.evaluate("window.log.states") == []
        finally:
            for _reader, writer in fillers:
                writer.close()
        message_id = await publish_when_up(served.url, "m")
        # (If the limit clears between a refused handshake and its /healthz, the client
        # cannot tell a full server from blocked WebSockets and reads over SSE meanwhile.)
        await wait_for_ids(page, "m", [message_id])
        assert await page.evaluate("window.log.errors") == []


async def test_a_websocket_retried_after_a_refusal_resumes_every_channel_from_its_cursor(
    page: Any, redis_process: RedisProcess,
) -> None:
    """A channel added while Redis is frozen is refused; the client reconnects after a
    backoff and resumes every channel from its cursor: nothing lost, nothing twice."""
    from tidings.brokers.redis import RedisBroker

    settings = Settings(host="127.0.0.1", port=0, broker=redis_process.url)
    writer = Server(settings, broker=RedisBroker(redis_process.url, settings.retention))
    reader = Server(settings, broker=RedisBroker(redis_process.url, settings.retention,
                                                 timeout=0.2 * UNIT), pages=PAGES)
    await writer.start()
    await reader.start()
    try:
        before = await publish(_At(writer.url), "a", 2)  # type: ignore[arg-type]
        await open_client(page, _At(reader.url), ["a"],  # type: ignore[arg-type]
                          transports=["websocket"])
        await wait_for_ids(page, "a", before)
        await asyncio.to_thread(redis_process.pause)
        try:
            requests = await page.evaluate("window.client.stats.requests")
            await page.evaluate("""() => window.client.subscribe("b", {
                since: "0", onMessage: (m) => window.log.messages.push(m) })""")
            # Refused (the node does not hold "b"), reconnected, refused again.
            await wait_for(page, f"window.client.stats.requests >= {requests + 2}")
        finally:
            await asyncio.to_thread(redis_process.resume)
        a3 = await publish_when_up(writer.url, "a")
        b1 = await publish_when_up(writer.url, "b")
        await wait_for_ids(page, "b", [b1])
        await wait_for_ids(page, "a", [*before, a3])
        states = await page.evaluate("window.log.states")
        assert any("broker_unavailable" in (s["reason"] or "") for s in states), states
        assert await page.evaluate("window.log.errors") == []
    finally:
        await reader.aclose()
        await writer.aclose()
