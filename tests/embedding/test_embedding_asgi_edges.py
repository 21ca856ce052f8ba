"""The mount where things go wrong: a broker that must fetch first, a shutdown with streams
open, a hostile WebSocket client beside an honest one."""

from __future__ import annotations

import asyncio

import pytest
from asgikit import ASGI_SERVERS, mounted
from websockets.exceptions import ConnectionClosed

from conftest import HeldBroker, until
from tidings import Server, Settings
from tidings.errors import CloseCode
from tidings.testing import (
    http_client,
    open_sse,
    open_ws,
    poll,
    recv_json,
    recv_messages,
)

pytestmark = pytest.mark.parametrize("kind", ASGI_SERVERS)


async def test_reads_wait_for_a_broker_that_must_fetch_first(kind: str) -> None:
    broker = HeldBroker()
    server = Server(Settings(host="127.0.0.1", port=0), broker=broker, listen=False)
    async with mounted(kind, server) as app, http_client(app.url) as http:
        message = await server.publish("c", "before")

        async def stream() -> dict[str, object]:
            async with open_sse(http, "/channels/c", params={"since": "0"}) as events:
                await events.opening()
                (streamed,) = await events.message_objects(1)
                return streamed

        async def socket() -> dict[str, object]:
            async with open_ws(app.url, "/channels/c?since=0") as ws:
                assert (await recv_json(ws))["type"] == "subscribed"
                (framed,) = await recv_messages(ws, 1)
                return framed

        polling = asyncio.create_task(poll(http, "/channels/c", since="0"))
        streaming = asyncio.create_task(stream())
        framing = asyncio.create_task(socket())
        await until(lambda: broker.waiting == 3)
        assert not (polling.done() or streaming.done() or framing.done())
        broker.gate.set()
        polled, streamed, framed = await asyncio.gather(polling, streaming, framing)
    assert polled["messages"][0]["id"] == streamed["id"] == framed["id"] == message.id


async def test_closing_the_server_says_goodbye_to_streams_through_the_mount(kind: str) -> None:
    async with mounted(kind) as app, http_client(app.url) as http, \
            open_sse(http, "/channels/c") as stream, open_ws(app.url, "/channels/c") as ws:
        await stream.opening()
        await recv_json(ws)
        await until(lambda: app.server.statistics()["streams"] == 2)
        await app.server.aclose()
        event = await stream.next_event()
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(ws)
    assert event.event == "close" and "shutdown" in (event.data or "")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.GOING_AWAY


async def test_a_hostile_websocket_is_closed_alone(kind: str) -> None:
    async with mounted(kind) as app, open_ws(app.url, "/channels/c") as honest, \
            open_ws(app.url, "/channels/c") as hostile:
        await recv_json(honest)
        await recv_json(hostile)
        await hostile.send(b"\x00binary is not a command")
        with pytest.raises(ConnectionClosed) as closed:
            await recv_json(hostile)
        message = await app.server.publish("c", "still here")
        (framed,) = await recv_messages(honest, 1)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CloseCode.UNSUPPORTED_DATA
    assert framed["id"] == message.id
