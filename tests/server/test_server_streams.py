"""Long-lived connections: a slow consumer is cut off alone; shutdown says goodbye."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import until
from tidings import Server
from tidings.testing import (
    UNIT,
    SseBlock,
    http_client,
    open_sse,
    poll,
    publish,
    recv_json,
    server_frames,
    ws_url,
)

MESSAGE = {"filler": "x" * 4000}  # about 4 KB a message
MAX_MESSAGES = 1500  # 6 MB: far beyond the 64 KB limit and the socket buffers


async def open_raw(server: Server, request: bytes) -> socket.socket:
    """A client socket with a tiny receive buffer that sends ``request`` and then never reads."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    await loop.sock_sendall(sock, request)
    return sock


async def drain(sock: socket.socket) -> bytes:
    """Read everything until the server closes the connection."""
    loop = asyncio.get_running_loop()
    chunks = []
    async with asyncio.timeout(10 * UNIT):
        while chunk := await loop.sock_recv(sock, 1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


def last_ws_frame(data: bytes) -> tuple[int, bytes]:
    """Skip the handshake response, walk the server's frames, return the last one."""
    head_end = data.index(b"\r\n\r\n") + 4
    frames, taken = server_frames(data[head_end:])
    assert head_end + taken == len(data)
    return frames[-1] if frames else (0, b"")


SLOW_REQUESTS = {
    "sse": b"GET /channels/c HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    "websocket": (b"GET /channels/c HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n"),
}


@pytest.mark.parametrize("technique", ["sse", "websocket"])
async def test_a_slow_consumer_is_cut_off_and_nobody_else_waits(make_server,
                                                                technique: str) -> None:
    server = await make_server(output_buffer_limit=64 * 1024)
    async with (http_client(server) as client, http_client(server) as publisher,
                open_sse(client, "/channels/c") as reader):
        await reader.next_block()  # subscribed: the opening event
        slow = await open_raw(server, SLOW_REQUESTS[technique])
        try:
            await until(lambda: server.statistics()["streams"] == 2)

            # The normal subscriber reads everything while publishing goes on,
            # up to a last message that says it is the last.
            received: list[SseBlock] = []

            async def collect() -> None:
                while True:
                    event = await reader.next_event(within=10 * UNIT)
                    received.append(event)
                    if event.json()["data"] == "end":
                        return

            collecting = asyncio.create_task(collect())
            published: list[str] = []
            after_cut = 0
            while after_cut < 20 and len(published) < MAX_MESSAGES:
                published.append(await publish(publisher, "c", MESSAGE))
                if server.health()["slow_consumers_cut_off"]:
                    after_cut += 1
            published.append(await publish(publisher, "c", "end"))
            async with asyncio.timeout(10 * UNIT):
                await collecting

            assert server.health()["slow_consumers_cut_off"] == 1
            assert [e.id for e in received] == published
            assert all(e.json()["data"] == MESSAGE for e in received[:-1])
            # Cut off within the limit plus what the kernel buffers, not megabytes later.
            assert len(published) < 200
            assert server.statistics()["streams"] == 1  # the normal subscriber is still there

            # The slow client, once it reads, finds the reason and then the end.
            data = await drain(slow)
            if technique == "sse":
                assert data.endswith(b"\n\n")
                tail = data[data.rindex(b"event: close"):]
                assert b"slow_consumer" in tail
            else:
                opcode, payload = last_ws_frame(data)
                assert opcode == 0x8
                assert struct.unpack("!H", payload[:2])[0] == 4008
                assert b"slow_consumer" in payload
        finally:
            slow.close()

        # The normal subscriber goes on receiving.
        new = await publish(publisher, "c", "still live")
        (event,) = await reader.messages(1)
        assert event.id == new


async def test_shutdown_says_goodbye_on_every_technique(make_server) -> None:
    server = await make_server()
    async with http_client(server) as client, http_client(server) as long_poller:
        last = await publish(client, "c", "before")
        async with open_sse(client, "/channels/c") as reader, \
                connect(ws_url(server, "/channels/c")) as ws:
            await reader.next_block()
            assert (await recv_json(ws))["type"] == "subscribed"
            parked = asyncio.create_task(poll(long_poller, "/channels/c", since=last, wait=30))
            await until(lambda: server.statistics()["long_polls"])

            started = time.monotonic()
            async with asyncio.timeout(5 * UNIT):
                await server.aclose()
            assert time.monotonic() - started < 2 * UNIT

            # The parked long poll is answered: nothing new, the same cursor.
            async with asyncio.timeout(2 * UNIT):
                assert await parked == {"messages": [], "next": last}

            # The event stream ends after an "event: close" saying why.
            event = await reader.next_event()
            assert event.event == "close"
            assert event.json()["error"] == "shutdown"
            with pytest.raises(EOFError):
                await reader.next_block()

            # The WebSocket is closed with 1001 (going away).
            with pytest.raises(ConnectionClosed) as closed:
                await recv_json(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001

    # The port is closed: new connections are refused.
    with pytest.raises(OSError):
        async with asyncio.timeout(2 * UNIT):
            await asyncio.open_connection("127.0.0.1", server.port)


async def test_shutdown_keeps_a_publish_that_was_accepted(make_server) -> None:
    """A 201 means the message is in the log; a stream sees it before the goodbye."""
    server = await make_server()
    async with http_client(server) as client, open_sse(client, "/channels/c") as reader:
        await reader.next_block()
        new = await publish(client, "c", "last words")
        await server.aclose()
        events: list[Any] = []
        with pytest.raises(EOFError):
            while True:
                events.append(await reader.next_event())
        assert [e.id for e in events if e.event is None] == [new]
        assert events[-1].event == "close"


async def test_closing_an_idle_server_is_prompt(make_server) -> None:
    server = await make_server()
    started = time.monotonic()
    async with asyncio.timeout(5 * UNIT):
        await server.aclose()
    assert time.monotonic() - started < UNIT
