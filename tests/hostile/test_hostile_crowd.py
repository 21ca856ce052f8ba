"""A hostile crowd next to honest subscribers, who must not notice it.

A few hundred connections at once trickle headers, send garbage frames and
oversized messages, forge tokens, and abandon handshakes, while an SSE, a
WebSocket and a long-poll subscriber read a channel that is being published
to. Each honest subscriber receives every message exactly once, in order;
every hostile connection is answered or closed within a bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import time
from typing import Any

import httpx
from hostilekit import check_close, parse_frames
from websockets.asyncio.client import connect

from conftest import UNIT, ServerFactory
from tidings import Server

MESSAGES = 60
CHANNEL = "news"
HEADER_TIMEOUT = 1.0 * UNIT
#: Seconds a hostile connection may last: the header timeout, a sweep tick, and slack.
HOSTILE_BOUND = 4 * HEADER_TIMEOUT + 2 * UNIT


async def open_raw(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes; a reset counts as a close."""
    chunks: list[bytes] = []
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def upgrade_request(path: str = f"/channels/{CHANNEL}") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


async def upgraded(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await open_raw(server)
    writer.write(upgrade_request())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


# The crowd ------------------------------------------------------------------------


async def slow_headers(server: Server) -> str:
    """One byte every 100 ms, forever: the server answers 408 and closes."""
    reader, writer = await open_raw(server)
    request = b"GET /channels/news HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 10_000

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)

    trickler = asyncio.create_task(trickle())
    try:
        answer = await until_closed(reader)
    finally:
        trickler.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    return "slow"


async def garbage_frames(server: Server) -> str:
    """Random bytes after a valid handshake: a close frame (or a reset), never silence."""
    reader, writer = await upgraded(server)
    with contextlib.suppress(ConnectionError):
        writer.write(os.urandom(random.randint(1, 2000)))
        await writer.drain()
    data = await until_closed_or_idle(reader, writer)
    writer.close()
    return "garbage" if data is not None else "garbage-no-close"


async def until_closed_or_idle(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> bytes | None:
    """Random bytes may leave the server waiting for the rest of a frame; then the client
    gives up by half-closing, and the server must close at once."""
    try:
        async with asyncio.timeout(0.5 * UNIT):
            return await until_closed(reader)
    except TimeoutError:
        pass
    with contextlib.suppress(ConnectionError, OSError):
        writer.write_eof()
    return await until_closed(reader)


async def oversized_ws(server: Server) -> str:
    reader, writer = await upgraded(server)
    writer.write(b"\x81\xff" + (2**30).to_bytes(8, "big") + b"\x00\x00\x00\x00" + b"x" * 1000)
    data = await until_closed(reader)
    writer.close()
    *_before, last = parse_frames(data)  # "subscribed", maybe messages, then the close
    assert last.opcode == 0x8 and check_close(last) == 1009, last
    return "oversized"


async def oversized_http(server: Server) -> str:
    reader, writer = await open_raw(server)
    writer.write(b"POST /channels/news HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 10000000\r\n\r\n" + b"[" * 5000)
    data = await until_closed(reader)
    writer.close()
    assert data.startswith(b"HTTP/1.1 413 "), data[:100]
    return "oversized"


async def forged_token(server: Server) -> str:
    """Reads with made-up tokens: refused (401/403) or, on an open server, just served."""
    token = base64.urlsafe_b64encode(os.urandom(random.randint(1, 300))).decode()
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        read = await client.get(f"/channels/{CHANNEL}", params={"token": token},
                                headers={"Authorization": f"Bearer {token}"})
        assert read.status_code in (200, 401, 403), read.text
        assert read.headers["content-type"] == "application/json"
    return "forged"


async def abandoned_handshake(server: Server) -> str:
    """Half an upgrade request (or all of it) and then gone without reading."""
    _reader, writer = await open_raw(server)
    request = upgrade_request()
    writer.write(request[:random.randint(1, len(request))])
    await writer.drain()
    writer.close()
    return "abandoned"


CROWD = ([slow_headers] * 80 + [garbage_frames] * 60 + [oversized_ws] * 20
         + [oversized_http] * 20 + [forged_token] * 60 + [abandoned_handshake] * 60)


# The honest -------------------------------------------------------------------------


async def sse_subscriber(server: Server, ready: asyncio.Event) -> list[Any]:
    received: list[Any] = []
    async with (httpx.AsyncClient(base_url=server.url, timeout=30 * UNIT) as client,
                client.stream("GET", f"/channels/{CHANNEL}", params={"since": "0"},
                              headers={"Accept": "text/event-stream"}) as stream):
        assert stream.status_code == 200
        ready.set()
        data: list[str] = []
        event = "message"
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line.startswith("event:"):
                event = line[6:].strip()  # the opening event (client) is not a message
            elif line == "":
                if data and event == "message":
                    received.append(json.loads("\n".join(data))["data"])
                data, event = [], "message"
                if len(received) >= MESSAGES:
                    return received
    return received


async def ws_subscriber(server: Server, ready: asyncio.Event) -> list[Any]:
    received: list[Any] = []
    url = server.url.replace("http://", "ws://") + f"/channels/{CHANNEL}?since=0"
    async with connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "subscribed"
        ready.set()
        while len(received) < MESSAGES:
            frame = json.loads(await ws.recv())
            assert frame["type"] == "message", frame
            received.append(frame["data"])
    return received


async def longpoll_subscriber(server: Server, ready: asyncio.Event) -> list[Any]:
    received: list[Any] = []
    cursor = "0"
    ready.set()
    async with httpx.AsyncClient(base_url=server.url, timeout=30 * UNIT) as client:
        while len(received) < MESSAGES:
            answer = await client.get(f"/channels/{CHANNEL}", params={"since": cursor, "wait": 5})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert "gap" not in body, body
            received.extend(message["data"] for message in body["messages"])
            cursor = body["next"]
    return received


async def test_honest_subscribers_get_everything_amid_a_hostile_crowd(
        make_server: ServerFactory) -> None:
    server = await make_server(header_timeout=HEADER_TIMEOUT, max_message_size=8192)
    started = time.monotonic()
    readies = [asyncio.Event() for _ in range(3)]
    async with asyncio.timeout(18 * UNIT), asyncio.TaskGroup() as group:
        honest = [group.create_task(subscriber(server, ready)) for subscriber, ready in
                  zip((sse_subscriber, ws_subscriber, longpoll_subscriber), readies, strict=True)]
        for ready in readies:
            await ready.wait()
        crowd_started = time.monotonic()
        crowd = [group.create_task(asyncio.wait_for(attack(server), HOSTILE_BOUND))
                 for attack in random.sample(CROWD, len(CROWD))]
        async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as publisher:
            for n in range(MESSAGES):
                answer = await publisher.post(f"/channels/{CHANNEL}", json=n)
                assert answer.status_code == 201, answer.text
                if n % 10 == 9:
                    await asyncio.sleep(0.1)  # spread the publishes over the crowd's lifetime
        results = await asyncio.gather(*crowd)
        crowd_seconds = time.monotonic() - crowd_started
    for task in honest:
        assert task.result() == list(range(MESSAGES))
    assert len(results) == len(CROWD) >= 300
    assert results.count("slow") == 80
    assert crowd_seconds < HOSTILE_BOUND + UNIT
    assert time.monotonic() - started < 20 * UNIT
    # The crowd is gone: nothing of it is still counted.
    async with asyncio.timeout(5 * UNIT):
        while server.statistics()["connections"]:  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.01)
