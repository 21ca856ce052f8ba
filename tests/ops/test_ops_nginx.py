"""Behind nginx (Debian's, TLS on a self-signed certificate): every technique works through
the configuration of docs/operations.md, and ``trusted_proxies`` believes its
``X-Forwarded-For``. The browser's detection of a buffering nginx is in
tests/browser/test_browser_nginx.py."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from conftest import UNIT, ServerFactory, until
from nginxkit import Nginx, nginx_missing
from tidings import Server
from tidings.core.forwarded import client_address, parse_networks
from tidings.testing import SseStream


def require_nginx() -> None:
    missing = nginx_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


@pytest.fixture
def nginx_for(tmp_path: Path) -> Iterator[object]:
    """``nginx_for(server)``: nginx in front of ``server`` (stopped after the test)."""
    require_nginx()
    started: list[Nginx] = []

    def start(server: Server) -> Nginx:
        proxy = Nginx(server.port, tmp_path).__enter__()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.__exit__(None, None, None)


def client(proxy: Nginx, base: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base or proxy.url, timeout=10 * UNIT,
                             verify=ssl.create_default_context(cafile=str(proxy.ca_file)))


async def test_every_technique_through_nginx_with_tls(make_server: ServerFactory,
                                                      nginx_for: object) -> None:
    server = await make_server()
    proxy: Nginx = nginx_for(server)  # type: ignore[operator]
    async with client(proxy) as http, client(proxy) as reader:
        first = await http.post("/channels/n", json={"n": 0})
        assert first.status_code == 201, first.text
        start = first.json()["id"]
        # Long poll: parked behind nginx, answered by a publish.
        parked = asyncio.ensure_future(reader.get("/channels/n", params={
            "since": start, "wait": str(10 * UNIT)}))
        await until(lambda: server.registry.statistics()["long_polls"] == 1)
        # SSE: each event comes through as it is published (not when a buffer fills).
        async with reader.stream("GET", "/channels/n", params={"since": start},
                                 headers={"Accept": "text/event-stream"}) as response:
            assert response.status_code == 200
            stream = SseStream(response.aiter_bytes(), within=5 * UNIT)
            await stream.opening()
            # WebSocket: upgraded through nginx, over TLS.
            context = ssl.create_default_context(cafile=str(proxy.ca_file))
            ws_url = proxy.url.replace("https://", "wss://") + f"/channels/n?since={start}"
            async with connect(ws_url, ssl=context) as ws:
                assert json.loads(await ws.recv())["type"] == "subscribed"
                second = (await http.post("/channels/n", json={"n": 1})).json()["id"]
                (event,) = await stream.message_objects(1)
                assert event["id"] == second
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))
                assert (frame["type"], frame["id"]) == ("message", second)
        answered = await parked
        assert [m["id"] for m in answered.json()["messages"]] == [second]
        polled = await http.get("/channels/n", params={"since": start})
        assert [m["id"] for m in polled.json()["messages"]] == [second]


@pytest.mark.parametrize("trusted", [True, False])
async def test_trusted_proxies_rate_limit_each_client(make_server: ServerFactory,
                                                      nginx_for: object, trusted: bool) -> None:
    """Publish rates are per client address: behind a trusted proxy, the address it
    forwards; behind one that is not trusted, the proxy's, shared by everyone."""
    server = await make_server(max_publish_rate=0.01, publish_burst=1,
                               trusted_proxies=("127.0.0.1",) if trusted else ())
    proxy: Nginx = nginx_for(server)  # type: ignore[operator]
    async with client(proxy) as http:
        def post(forwarded: str) -> asyncio.Future[httpx.Response]:
            return asyncio.ensure_future(http.post(
                "/channels/r", json=1, headers={"X-Forwarded-For": forwarded}))

        assert (await post("203.0.113.5")).status_code == 201
        assert (await post("203.0.113.5")).status_code == 429  # the same client again
        other = await post("203.0.113.6")  # another client behind the same proxy
        assert other.status_code == (201 if trusted else 429)


def test_client_address_from_x_forwarded_for() -> None:
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_address("127.0.0.1", "203.0.113.5", trusted) == "203.0.113.5"
    # Proxies of ours are skipped from the right; what a client wrote before is not believed.
    assert client_address("10.0.0.2", "1.1.1.1, 203.0.113.5, 10.0.0.9", trusted) == \
        "203.0.113.5"
    assert client_address("10.0.0.2", "10.0.0.7, 10.0.0.9", trusted) == "10.0.0.7"
    # Not from a trusted proxy: the header is ignored.
    assert client_address("198.51.100.1", "203.0.113.5", trusted) == "198.51.100.1"
    assert client_address("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", "garbage", trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", "203.0.113.5, garbage", trusted) == "127.0.0.1"
    assert client_address("::ffff:127.0.0.1", "2001:db8::1", trusted) == "2001:db8::1"
    assert client_address("127.0.0.1", "203.0.113.5", ()) == "127.0.0.1"
    with pytest.raises(ValueError, match="not an address"):
        parse_networks(["10.0.0.0/33"])
