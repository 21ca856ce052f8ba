"""CORS on poll, long poll, SSE and publish, with the default "*" and with a list of origins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import UNIT, ServerFactory, until
from tidings import Server

#: The response headers scripts of other origins may read.
EXPOSED = "ETag, Idempotent-Replayed, Tidings-Client"

ORIGIN = "https://a.example"
OTHER = "https://b.example"


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        yield client


async def read_kinds(client: httpx.AsyncClient, channel: str,
                     origin: str) -> dict[str, httpx.Headers]:
    """The response headers of publish, poll, long poll and SSE, each sent with ``origin``."""
    headers = {"Origin": origin}
    found: dict[str, httpx.Headers] = {}
    published = await client.post(f"/channels/{channel}", json={"n": 1}, headers=headers)
    assert published.status_code == 201, published.text
    found["publish"] = published.headers
    poll = await client.get(f"/channels/{channel}", params={"since": "0"}, headers=headers)
    assert poll.status_code == 200 and poll.json()["messages"]
    found["poll"] = poll.headers
    longpoll = await client.get(f"/channels/{channel}", params={"since": "0", "wait": "5"},
                                headers=headers)
    assert longpoll.status_code == 200 and longpoll.json()["messages"]
    found["long poll"] = longpoll.headers
    multi = await client.get("/subscribe", params={"channel": [channel, "other"], "since": "0"},
                             headers=headers)
    assert multi.status_code == 200
    found["multi poll"] = multi.headers
    async with asyncio.timeout(5 * UNIT), client.stream(
            "GET", f"/channels/{channel}",
            headers={**headers, "Accept": "text/event-stream"}) as sse:
        assert sse.status_code == 200
        assert sse.headers["content-type"] == "text/event-stream"
        found["sse"] = sse.headers
    return found


async def test_default_allows_every_origin(client: httpx.AsyncClient) -> None:
    for kind, headers in (await read_kinds(client, "c", "https://anywhere.example")).items():
        assert headers["access-control-allow-origin"] == "*", kind
        assert headers["access-control-expose-headers"] == EXPOSED, kind
        assert "vary" not in headers, kind


async def test_no_origin_no_cors_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/channels/c")
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_errors_carry_cors_headers(client: httpx.AsyncClient) -> None:
    """A browser can read why its request was refused."""
    headers = {"Origin": ORIGIN}
    for response in (
        await client.post("/channels/c", content=b"{bad", headers=headers),
        await client.get("/channels/c?since=nope", headers=headers),
        await client.get("/channels/bad!", headers=headers),
        await client.put("/channels/c", headers=headers),
        await client.get("/channels/c", headers={**headers, "Accept": "text/event-stream",
                                                 "Last-Event-ID": "nope"}),
    ):
        assert response.status_code >= 400
        assert response.headers["access-control-allow-origin"] == "*", response.text


async def test_body_too_large_carries_cors_headers(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=16)
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        response = await client.post("/channels/c", json="x" * 100, headers={"Origin": ORIGIN})
    assert response.status_code == 413
    assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(("path", "methods"), [("/channels/x", "GET, POST, OPTIONS"),
                                                ("/subscribe", "GET, OPTIONS"),
                                                ("/subscribe?channel=a&channel=b",
                                                 "GET, OPTIONS")])
async def test_preflight(client: httpx.AsyncClient, path: str, methods: str) -> None:
    response = await client.options(path, headers={
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id, content-type",
    })
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-methods"] == methods
    assert response.headers["access-control-allow-headers"] == "last-event-id, content-type"
    assert int(response.headers["access-control-max-age"]) > 0
    assert response.headers["allow"] == methods


async def test_preflight_without_requested_headers_names_ours(client: httpx.AsyncClient) -> None:
    response = await client.options("/channels/x", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert response.status_code == 204
    allowed = {h.strip().lower() for h in
               response.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "last-event-id", "prefer", "if-none-match"} <= allowed


async def test_options_without_origin(client: httpx.AsyncClient) -> None:
    response = await client.options("/channels/x")
    assert response.status_code == 204
    assert response.headers["allow"] == "GET, POST, OPTIONS"
    assert "access-control-allow-origin" not in response.headers


async def test_listed_origin_is_echoed(make_server: ServerFactory) -> None:
    server = await make_server(cors_origins=(ORIGIN,))
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        for kind, headers in (await read_kinds(client, "c", ORIGIN)).items():
            assert headers["access-control-allow-origin"] == ORIGIN, kind
            assert headers["access-control-expose-headers"] == EXPOSED, kind
            assert "Origin" in headers["vary"], kind
        preflight = await client.options("/channels/c", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert preflight.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"
        assert "Origin" in preflight.headers["vary"]


async def test_other_origin_gets_no_allow_origin(make_server: ServerFactory) -> None:
    server = await make_server(cors_origins=(ORIGIN,))
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        for kind, headers in (await read_kinds(client, "c", OTHER)).items():
            assert "access-control-allow-origin" not in headers, kind
            assert "Origin" in headers["vary"], kind
        preflight = await client.options("/channels/c", headers={
            "Origin": OTHER, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-methods" not in preflight.headers


async def test_several_listed_origins(make_server: ServerFactory) -> None:
    server = await make_server(cors_origins=(ORIGIN, OTHER))
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        for origin in (ORIGIN, OTHER):
            response = await client.get("/channels/c", headers={"Origin": origin})
            assert response.headers["access-control-allow-origin"] == origin
        response = await client.get("/channels/c", headers={"Origin": "https://c.example"})
        assert "access-control-allow-origin" not in response.headers


async def test_etag_is_readable_and_304_keeps_cors(client: httpx.AsyncClient) -> None:
    headers = {"Origin": ORIGIN}
    first = await client.get("/channels/e", headers=headers)
    tag = first.headers["etag"]
    again = await client.get("/channels/e", headers={**headers, "If-None-Match": tag})
    assert again.status_code == 304
    assert again.headers["access-control-allow-origin"] == "*"


async def test_parked_and_expired_long_polls_carry_cors(server: Server,
                                                        client: httpx.AsyncClient) -> None:
    headers = {"Origin": ORIGIN}
    expired = await client.get("/channels/lp", params={"wait": "0.05"}, headers=headers)
    assert expired.status_code == 200 and expired.json()["messages"] == []
    assert expired.headers["access-control-allow-origin"] == "*"
    parked = asyncio.create_task(client.get(
        "/channels/lp", params={"since": expired.json()["next"], "wait": "10"},
        headers=headers))
    async with asyncio.timeout(5 * UNIT):
        await until(lambda: bool(server.statistics()["long_polls"]))  # parked: the publish wakes it
        await client.post("/channels/lp", json=1)
        woken = await parked
    assert woken.json()["messages"][0]["data"] == 1
    assert woken.headers["access-control-allow-origin"] == "*"
    assert woken.headers["access-control-expose-headers"] == EXPOSED
