"""Rolling restarts: a node drains (SIGTERM) and its clients move to another, losing nothing.

One node alone first, with clients we did not write (the ``websockets``
package, httpx, raw sockets): what a draining node says on each technique and
to load balancers. Then two nodes over Redis behind a small TCP balancer of
this test (it sends each new connection to the first node that accepts), with
our Python client on all four techniques: node A drains while messages are
published, and every client ends on node B with every message once, in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

import tidings
from balancer import Balancer
from conftest import UNIT, ServerFactory, until
from tidings import Server
from tidings.backoff import Backoff
from tidings.server.metrics import DELIVERED
from tidings.testing import http_client, open_sse, publish, recv_json, ws_url


async def raw_request(server: Server, head: bytes) -> tuple[asyncio.StreamReader,
                                                            asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head)
    return reader, writer


async def test_a_draining_node(make_server: ServerFactory) -> None:
    server = await make_server(drain_period=2 * UNIT)
    async with http_client(server) as http, open_sse(http, "/channels/c") as sse, \
            ws_connect(ws_url(server, "/channels/c")) as ws, \
            ws_connect(ws_url(server, "/channels/c")) as ws2:
        await sse.opening()
        assert (await recv_json(ws))["type"] == "subscribed"
        assert (await recv_json(ws2))["type"] == "subscribed"
        start = (await http.get("/channels/c")).json()["next"]
        parked = asyncio.ensure_future(http.get("/channels/c", params={
            "since": start, "wait": str(30 * UNIT)}))
        await until(lambda: server.registry.statistics()["long_polls"] == 1)

        began = asyncio.get_running_loop().time()
        draining = asyncio.ensure_future(server.drain())
        answer = await parked  # answered at once, empty, with the same cursor
        assert (answer.status_code, answer.json()["messages"]) == (200, [])
        assert answer.json()["next"] == start
        async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as probe:
            # Load balancers: /readyz says 503, /healthz says draining (and stays 200).
            ready = await probe.get("/readyz")
            assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
            health = await probe.get("/healthz")
            assert (health.status_code, health.json()["status"]) == (200, "draining")
            # New streams and long polls are refused, retryably; polls are served.
            for headers, params in (({"Accept": "text/event-stream"}, {}),
                                    ({}, {"wait": "5"})):
                refused = await probe.get("/channels/c", headers=headers, params=params)
                assert (refused.status_code, refused.json()["error"]) == (503, "shutdown")
            assert (await probe.get("/channels/c")).status_code == 200
        # Each stream is told to reconnect: WebSocket 1012, SSE a close event "restart",
        # one after the other over the drain period.
        for socket_ in (ws, ws2):
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(socket_.recv(), 5 * UNIT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1012
        event = await sse.next_event()
        assert event.event == "close" and event.json()["error"] == "restart"
        await asyncio.wait_for(draining, 10 * UNIT)
    spread = asyncio.get_running_loop().time() - began
    # Three streams told at 0, 1/3 and 2/3 of the 2-unit period: not all at once.
    assert spread >= 2 * UNIT * 2 / 3 - 0.05


async def test_ready_when_started(server: Server) -> None:
    async with http_client(server) as http:
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert (await http.head("/readyz")).status_code == 200
        assert (await http.post("/readyz")).status_code == 405


def test_sigterm_drains_and_sigint_stops_at_once() -> None:
    """``tidings serve``: SIGTERM with a stream open drains (the stream hears 1012)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")},
             "TIDINGS_DRAIN_PERIOD": str(1 * UNIT)})
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]

        async def one_stream() -> int:
            async with ws_connect(url.replace("http", "ws") + "/channels/c") as ws:
                assert json.loads(await ws.recv())["type"] == "subscribed"
                process.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 10 * UNIT)
                assert info.value.rcvd is not None
                return info.value.rcvd.code

        assert asyncio.run(one_stream()) == 1012
        _out, err = process.communicate(timeout=10 * UNIT)
        assert process.returncode == 0, err
        assert "draining" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
async def two_nodes(make_server: ServerFactory, redis_url: str) -> AsyncIterator[
        tuple[Server, Server, Balancer]]:
    a = await make_server(broker=redis_url, drain_period=1 * UNIT)
    b = await make_server(broker=redis_url)
    balancer = Balancer([a.port, b.port])
    await balancer.start()
    yield a, b, balancer
    await balancer.aclose()


async def test_clients_on_every_technique_move_to_another_node(
        two_nodes: tuple[Server, Server, Balancer]) -> None:
    a, b, balancer = two_nodes
    url = balancer.url
    techniques = ("websocket", "sse", "longpoll", "poll")
    received: dict[str, list[object]] = {t: [] for t in techniques}
    total = 30

    async def follow(technique: str) -> None:
        async with tidings.connect(url, technique, poll_interval=0.1 * UNIT,
                                   backoff=Backoff(initial=0.05, maximum=0.5)) as client:
            async for item in client.subscribe("drain", since="0"):
                received[technique].append(getattr(item, "data", item))
                if len(received[technique]) == total:
                    return

    async with http_client(b) as publisher:
        await publish(publisher, "drain", 0)
        followers = [asyncio.ensure_future(follow(t)) for t in techniques]
        await until(lambda: all(len(received[t]) == 1 for t in techniques), 10 * UNIT)
        assert a.registry.statistics()["streams"] == 2  # the WebSocket and the SSE stream
        assert set(balancer.routed) == {a.port}  # every client is on node A
        draining = asyncio.ensure_future(a.drain())
        for n in range(1, total):  # published on B while A drains, and after
            await publish(publisher, "drain", n)
            await asyncio.sleep(0.05 * UNIT)
        await asyncio.wait_for(draining, 10 * UNIT)
        await asyncio.wait_for(asyncio.gather(*followers), 20 * UNIT)
    for technique in techniques:
        assert received[technique] == list(range(total)), technique  # once each, in order
    assert b.port in balancer.routed  # they went on on node B
    assert a.stats[DELIVERED + "websocket"] >= 1 and b.stats[DELIVERED + "websocket"] >= 1
