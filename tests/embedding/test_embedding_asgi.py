"""``server.asgi`` mounted in Starlette at ``/rt``, under uvicorn and hypercorn.

Clients we did not write (httpx, the ``websockets`` package, raw sockets via
the conformance suite) read and publish through the mount; it shares one log
with ``server.publish`` and with the native listener of the same server.
"""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from asgikit import ASGI_SERVERS, mounted

from conftest import until
from tidings import Server, Settings, conformance
from tidings.conformance import Context
from tidings.testing import (
    UNIT,
    command,
    http_client,
    open_sse,
    open_ws,
    poll,
    post,
    publish,
    recv_json,
    recv_messages,
    require_error,
)

pytestmark = pytest.mark.parametrize("kind", ASGI_SERVERS)


async def test_every_technique_reads_what_server_publish_wrote(kind: str) -> None:
    async with mounted(kind) as app, http_client(app.url) as http, \
            open_sse(http, "/channels/news") as stream, \
            open_ws(app.url, "/channels/news") as ws:
        start = (await stream.opening()).id
        assert (await recv_json(ws))["type"] == "subscribed"
        waiting = asyncio.create_task(poll(http, "/channels/news", since=start, wait=10 * UNIT))
        await until(lambda: app.server.statistics()["long_polls"] == 1)
        message = await app.server.publish("news", {"title": "one log"})
        (streamed,) = await stream.message_objects(1)
        (framed,) = await recv_messages(ws, 1)
        long_polled = (await waiting)["messages"][0]
        polled = (await poll(http, "/channels/news", since=start))["messages"][0]
    assert streamed["id"] == framed["id"] == long_polled["id"] == polled["id"] == message.id
    assert streamed["data"] == framed["data"] == {"title": "one log"}


async def test_publishing_through_the_mount_is_checked_and_counted(kind: str) -> None:
    async with mounted(kind, max_message_size=1000) as app, http_client(app.url) as http:
        message_id = await publish(http, "c", [1, 2])
        refused = await post(http, "c", "x" * 2000)
        require_error(refused, 413, "payload_too_large", "an oversized publish")
        forged = await http.post("/channels/c", content=b'{"a":\n1}\n\nevent: gap\n',
                                 headers={"Content-Type": "application/json"})
        require_error(forged, 400, "invalid_json", "forged SSE bytes")
        answer = await poll(http, "/channels/c", since="0")
        async with open_ws(app.url, "/subscribe") as ws:
            ack = await command(ws, type="publish", req=1, channel="c", data={"via": "ws"})
    assert [m["id"] for m in answer["messages"]] == [message_id]
    assert ack["type"] == "ack", ack
    assert app.server.health()["published"] == 2


async def test_paths_are_below_the_mount_point(kind: str) -> None:
    async with mounted(kind) as app, httpx.AsyncClient(timeout=10 * UNIT) as http:
        health = await http.get(f"{app.url}/healthz")
        script = await http.get(f"{app.url}/tidings.js")
        missing = await http.get(f"{app.url}/nothing")
        head = await http.head(f"{app.url}/healthz")
        outside = await http.get(f"{app.host_url}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "connection" not in health.headers  # the ASGI server owns the connection
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    require_error(missing, 404, "not_found", "an unknown path")
    assert head.status_code == 200 and head.content == b""
    assert outside.status_code == 404  # the host application's, not tidings'


async def test_refusals_before_the_upgrade_reach_websocket_clients(kind: str) -> None:
    from websockets.exceptions import InvalidStatus

    async with mounted(kind, transports=("sse", "poll")) as app:
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(app.url, "/channels/c"):
                pass
    assert refused.value.response.status_code == 403


async def test_one_server_serves_the_native_listener_and_the_mount(kind: str) -> None:
    server = Server(Settings(host="127.0.0.1", port=0))  # listen=True: both
    async with mounted(kind, server) as app, http_client(server) as native, \
            http_client(app.url) as through_mount, open_ws(server, "/channels/c") as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        first = await publish(through_mount, "c", "via the mount")
        second = await publish(native, "c", "via the native listener")
        framed = await recv_messages(ws, 2)
        polled = await poll(through_mount, "/channels/c", since="0")
    assert [f["id"] for f in framed] == [m["id"] for m in polled["messages"]] == [first, second]


async def test_clients_that_leave_are_forgotten(kind: str) -> None:
    async with mounted(kind) as app:
        async with http_client(app.url) as http:
            async with open_sse(http, "/channels/c") as stream:
                await stream.opening()
                await until(lambda: app.server.statistics()["streams"] == 1)
            await until(lambda: app.server.statistics()["streams"] == 0)
            async with open_ws(app.url, "/channels/c") as ws:
                await recv_json(ws)
                await until(lambda: app.server.statistics()["streams"] == 1)
            await until(lambda: app.server.statistics()["streams"] == 0)
        async with httpx.AsyncClient(base_url=app.url, timeout=UNIT) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.get("/channels/c", params={"wait": 30})
        await until(lambda: app.server.statistics()["long_polls"] == 0)
        await until(lambda: app.server.admission.statistics()["connections"] == 0)


async def test_a_closed_server_answers_503(kind: str) -> None:
    server = Server(Settings(host="127.0.0.1", port=0), listen=False)
    async with mounted(kind, server) as app:
        await server.aclose()
        async with httpx.AsyncClient(timeout=10 * UNIT) as http:
            answer = await http.get(f"{app.url}/channels/c")
    assert answer.status_code == 503
    require_error(answer, 503, "shutdown", "a request after the server closed")


async def test_the_conformance_suite_passes_against_the_mount(kind: str) -> None:
    out = io.StringIO()
    # hypercorn answers "100 Continue" to every Expect before the application
    # runs, so the check of a declared oversized body cannot see the 413; that
    # 413 is checked with httpx in test_publishing_through_the_mount_is_checked_and_counted.
    # hypercorn (0.18) also always agrees to compression per connection, with no setting
    # to turn it off (docs/embedding.md), which the compression check refuses.
    hypercorn_cannot = ("bad_input", "websocket_compression")
    only = [name for name in conformance.CHECKS
            if not (kind == "hypercorn" and name in hypercorn_cannot)
            and name != "across_nodes"]
    async with mounted(kind, heartbeat_interval=1.0) as app:
        context = Context.create(app.url, timeout=10 * UNIT, heartbeat_timeout=3 * UNIT)
        passed = await conformance.run_checks(context, only=only, out=out)
    assert passed, out.getvalue()
