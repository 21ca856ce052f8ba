"""Origins and client limits: every refusal is a JSON error, and it costs nobody else.

Connection limits are counted when the TCP connection opens, whichever
technique it ends up as, and released when it closes (also after an SSE or
WebSocket stream took the socket over).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import UNIT, ServerFactory
from tidings import Server, Settings
from tidings.settings import default_max_connections

GOOD = "https://good.example"
EVIL = "https://evil.example"


def ws_url(server: Server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


async def recv_json(ws: Any) -> dict[str, Any]:
    async with asyncio.timeout(5 * UNIT):
        return dict(json.loads(await ws.recv()))


async def wait_until(condition: Callable[[], bool]) -> None:
    """Server state with no event to await (a connection's close being counted)."""
    async with asyncio.timeout(5 * UNIT):
        while not condition():  # noqa: ASYNC110 - nothing to await from outside the server
            await asyncio.sleep(0.005)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    """One response with a Content-Length JSON body, then the server must close."""
    async with asyncio.timeout(5 * UNIT):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        assert headers["content-type"] == "application/json"
        rest = await reader.read()
    assert rest == b""
    return int(status_line.split()[1]), headers, json.loads(body)


@contextlib.asynccontextmanager
async def raw_connections(server: Server, count: int) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """``count`` idle connections, each counted by the server before this yields."""
    writers = []
    try:
        for _ in range(count):
            before = server.statistics()["connections"]
            _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(writer)
            await wait_until(lambda: server.statistics()["connections"] > before)  # noqa: B023
        yield writers
    finally:
        for writer in writers:
            writer.close()


async def refused_answer(server: Server) -> tuple[int, dict[str, str], Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return await read_answer(reader)
    finally:
        writer.close()


# Origin ------------------------------------------------------------------------


async def test_websocket_from_a_foreign_origin_is_403_before_the_handshake(
        make_server: ServerFactory) -> None:
    server = await make_server(cors_origins=(GOOD,))
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(5 * UNIT):
            await connect(ws_url(server, "/channels/c"), origin=EVIL)  # type: ignore[arg-type]
    response = info.value.response
    assert response.status_code == 403
    assert json.loads(response.body)["error"] == "origin_not_allowed"
    assert server.broker.hub.channels() == 0  # nothing was subscribed


@pytest.mark.parametrize("origin", [GOOD, None], ids=["allowed", "no-origin-header"])
async def test_websocket_from_an_allowed_origin_or_without_one_connects(
        make_server: ServerFactory, origin: str | None) -> None:
    server = await make_server(cors_origins=(GOOD,))
    async with connect(ws_url(server, "/channels/c"), origin=origin) as ws:  # type: ignore[arg-type]
        assert (await recv_json(ws))["type"] == "subscribed"


async def test_any_origin_is_allowed_by_default(server: Server) -> None:
    assert Settings().cors_origins == ("*",)
    async with connect(ws_url(server, "/subscribe"), origin=EVIL) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "ping", "req": 1}))
        assert (await recv_json(ws))["type"] == "ack"


async def test_origin_null_is_refused_unless_listed(make_server: ServerFactory) -> None:
    server = await make_server(cors_origins=(GOOD,))
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(5 * UNIT):
            await connect(ws_url(server, "/subscribe"), origin="null")  # type: ignore[arg-type]
    assert info.value.response.status_code == 403


# Connections -------------------------------------------------------------------


async def test_connections_over_the_total_get_503_and_are_closed(
        make_server: ServerFactory) -> None:
    server = await make_server(max_connections=3)
    async with raw_connections(server, 3):
        status, _headers, body = await refused_answer(server)
        assert status == 503
        assert body["error"] == "too_many_connections"
        assert server.statistics()["connections"] == 3
    await wait_until(lambda: server.statistics()["connections"] == 0)
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_connections_over_the_per_address_limit_get_429(make_server: ServerFactory) -> None:
    server = await make_server(max_connections_per_ip=2)
    async with raw_connections(server, 2):
        status, _headers, body = await refused_answer(server)
        assert status == 429
        assert body["error"] == "too_many_connections"
        assert server.statistics()["by_address"] == {"127.0.0.1": 2}
    await wait_until(lambda: not server.statistics()["by_address"])
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_streams_count_until_their_socket_closes(make_server: ServerFactory) -> None:
    """SSE and WebSocket take the socket over; the count follows it to its close."""
    server = await make_server(max_connections=2)
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        async with client.stream("GET", "/channels/c",
                                 headers={"Accept": "text/event-stream"}) as sse:
            assert sse.status_code == 200
            ws = await connect(ws_url(server, "/channels/c"))
            assert (await recv_json(ws))["type"] == "subscribed"
            assert server.statistics()["connections"] == 2
            status, _headers, body = await refused_answer(server)
            assert (status, body["error"]) == (503, "too_many_connections")
            await ws.close()
            await wait_until(lambda: server.statistics()["connections"] == 1)
        await wait_until(lambda: server.statistics()["connections"] == 0)
        assert (await client.get("/healthz")).status_code == 200
    await wait_until(lambda: server.statistics()["connections"] == 0)
    assert server.statistics()["peers"] == 0


async def test_a_long_poll_counts_until_its_socket_closes(make_server: ServerFactory) -> None:
    server = await make_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        waiting = asyncio.create_task(client.get("/channels/c", params={"wait": "30"}))
        await wait_until(lambda: server.statistics()["long_polls"] == 1)
        assert server.statistics()["connections"] == 1
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    await wait_until(lambda: server.statistics()["connections"] == 0)


# Publish rate -----------------------------------------------------------------


async def test_publishing_over_the_rate_is_429_with_retry_after(
        make_server: ServerFactory) -> None:
    server = await make_server(max_publish_rate=2, publish_burst=3)
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        for n in range(3):
            assert (await client.post("/channels/c", json=n)).status_code == 201
        refused = await client.post("/channels/c", json=3)
        assert refused.status_code == 429
        assert refused.json()["error"] == "rate_limited"
        assert refused.headers["retry-after"] == "1"
        assert (await client.get("/channels/c", params={"since": "0"})).json()["messages"][-1][
            "data"] == 2  # the refused message was not stored
        await asyncio.sleep(0.6)  # time passing is what is tested: 2 tokens a second
        assert (await client.post("/channels/c", json=4)).status_code == 201


async def test_publishing_over_the_rate_on_a_websocket_is_an_error_reply(
        make_server: ServerFactory) -> None:
    server = await make_server(max_publish_rate=1, publish_burst=2)
    async with connect(ws_url(server, "/subscribe")) as ws:
        for req in range(3):
            await ws.send(json.dumps({"type": "publish", "req": req, "channel": "c", "data": req}))
        replies = {}
        for _ in range(3):
            reply = await recv_json(ws)
            replies[reply["req"]] = reply
        assert [replies[r]["type"] for r in range(3)] == ["ack", "ack", "error"]
        assert replies[2]["error"] == "rate_limited"
        # the connection goes on
        await ws.send(json.dumps({"type": "ping", "req": "p"}))
        assert (await recv_json(ws))["type"] == "ack"


async def test_the_rate_is_per_client_address(make_server: ServerFactory) -> None:
    """Two connections from one address share a bucket (a new connection is no way round)."""
    server = await make_server(max_publish_rate=1, publish_burst=1)
    async with (httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as first,
                httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as second):
        assert (await first.post("/channels/c", json=1)).status_code == 201
        assert (await second.post("/channels/c", json=2)).status_code == 429


async def test_a_rate_of_zero_turns_the_limit_off(make_server: ServerFactory) -> None:
    server = await make_server(max_publish_rate=0, publish_burst=1)
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        for n in range(20):
            assert (await client.post("/channels/c", json=n)).status_code == 201


# Subscriptions per connection --------------------------------------------------


async def test_websocket_subscribe_commands_respect_the_channel_limit(
        make_server: ServerFactory) -> None:
    server = await make_server(max_channels_per_subscription=2)
    async with connect(ws_url(server, "/subscribe?channel=a")) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": "b"}))
        assert (await recv_json(ws))["type"] == "ack"
        await ws.send(json.dumps({"type": "subscribe", "req": 2, "channel": "c"}))
        error = await recv_json(ws)
        assert (error["type"], error["req"], error["error"]) == (
            "error", 2, "too_many_subscriptions")
        await ws.send(json.dumps({"type": "unsubscribe", "req": 3, "channel": "a"}))
        assert (await recv_json(ws))["type"] == "ack"
        await ws.send(json.dumps({"type": "subscribe", "req": 4, "channel": "c"}))
        assert (await recv_json(ws))["type"] == "ack"


# Slow headers --------------------------------------------------------------------


async def test_a_slow_headers_client_cannot_hold_the_server(make_server: ServerFactory) -> None:
    """One byte every 100 ms: cut at header_timeout; honest clients are served meanwhile."""
    timeout = 1.0 * UNIT
    server = await make_server(header_timeout=timeout)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    request = b"GET /healthz HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 1000

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)

    started = time.monotonic()
    trickler = asyncio.create_task(trickle())
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as honest:
            served = 0
            while not reader.at_eof() and time.monotonic() - started < timeout / 2:
                assert (await honest.get("/healthz")).status_code == 200
                served += 1
            assert served > 0
        status, _headers, body = await read_answer(reader)
        elapsed = time.monotonic() - started
        assert (status, body["error"]) == (408, "request_timeout")
        assert timeout * 0.9 <= elapsed <= timeout * 2 + 0.5
    finally:
        trickler.cancel()
        writer.close()
    await wait_until(lambda: server.statistics()["connections"] == 0)


# Settings --------------------------------------------------------------------------


def test_limit_defaults_are_documented_values() -> None:
    settings = Settings()
    assert settings.max_connections == default_max_connections()  # from ulimit -n
    assert settings.max_connections_per_ip == 0  # off: behind a proxy every client shares one
    assert settings.max_publish_rate == 1000.0
    assert settings.publish_burst == 1000


def test_limits_can_be_set_in_the_config_file(tmp_path: Any) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text("[server]\nmax_connections = 10\nmax_connections_per_ip = 5\n"
                    "max_publish_rate = 2.5\npublish_burst = 4\n")
    settings = Settings.from_file(path)
    assert (settings.max_connections, settings.max_connections_per_ip,
            settings.max_publish_rate, settings.publish_burst) == (10, 5, 2.5, 4)
