"""Slow-reader policies on a real server: a reader stops reading while others keep up.

The slow reader is a raw socket with a tiny receive buffer that stops
reading; a fast SSE reader (httpx) and a fast WebSocket reader (the
``websockets`` package) read on. With ``slow_reader = "skip"`` or
``"latest"`` (here per namespace), the slow one is neither cut off nor let
past its output limit; once it reads again it gets one gap counting what it
skipped (and, with ``latest``, the newest message), then live messages.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect

from conftest import UNIT, ServerFactory, until
from tidings import Server
from tidings.server.stream import Stream
from tidings.session import slow
from tidings.testing import http_client, open_sse, publish, server_frames, ws_url

CHANNEL = "prices:aapl"
FILLER = "x" * 4000  # about 4 KB a message
LIMIT = 64 * 1024
MAX_MESSAGES = 1500  # 6 MB: far beyond the limit and the socket buffers
REQUESTS = {
    "sse": b"GET /channels/%s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    "websocket": (b"GET /channels/%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n"),
}


async def open_stalled(server: Server, technique: str) -> socket.socket:
    """A client socket with a tiny receive buffer that asks for the channel, then stops."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    await loop.sock_sendall(sock, REQUESTS[technique] % CHANNEL.encode())
    return sock


def items_of(technique: str, data: bytes) -> list[dict[str, Any]]:
    """The messages and gaps in what the slow socket received, in order."""
    head_end = data.index(b"\r\n\r\n") + 4
    found: list[dict[str, Any]] = []
    if technique == "sse":
        for block in data[head_end:].split(b"\n\n"):
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            kind = fields.get(b"event", b"message").decode()
            if b"data" in fields and kind in ("message", "gap"):  # not the opening client event
                found.append({"type": kind, **json.loads(fields[b"data"])})
        return found
    frames, _taken = server_frames(data[head_end:])  # the last one may not be whole yet
    for _opcode, payload in frames:
        value = json.loads(payload)
        if value["type"] in ("message", "gap"):
            found.append(value)
    return found


@pytest.mark.parametrize("technique", ["sse", "websocket"])
@pytest.mark.parametrize("policy", [slow.SKIP, slow.LATEST])
async def test_a_slow_reader_skips_ahead_and_nobody_else_waits(
        make_server: ServerFactory, technique: str, policy: str) -> None:
    server = await make_server(output_buffer_limit=LIMIT, slow_readers={"prices": policy})
    loop = asyncio.get_running_loop()
    async with (http_client(server) as http, http_client(server) as publisher,
                open_sse(http, f"/channels/{CHANNEL}") as fast_sse,
                connect(ws_url(server, f"/channels/{CHANNEL}"), max_queue=None) as fast_ws):
        await fast_sse.next_block()
        assert json.loads(await fast_ws.recv())["type"] == "subscribed"
        stalled = await open_stalled(server, technique)
        try:
            await until(lambda: server.statistics()["streams"] == 3)
            sent_at: dict[int, float] = {}  # by the message's "n"
            latencies: list[float] = []

            async def follow_sse() -> list[str]:
                ids = []
                while True:
                    event = await fast_sse.next_event(within=10 * UNIT)
                    ids.append(event.id)
                    latencies.append(time.monotonic() - sent_at[event.json()["data"]["n"]])
                    if event.json()["data"]["end"]:
                        return ids

            async def follow_ws() -> list[str]:
                ids = []
                while True:
                    frame = json.loads(await asyncio.wait_for(fast_ws.recv(), 10 * UNIT))
                    ids.append(frame["id"])
                    latencies.append(time.monotonic() - sent_at[frame["data"]["n"]])
                    if frame["data"]["end"]:
                        return ids

            followers = [asyncio.create_task(follow_sse()), asyncio.create_task(follow_ws())]
            published: list[str] = []
            most_buffered = 0
            slowest: Stream | None = None
            after_lag = 0
            while after_lag < 50 and len(published) < MAX_MESSAGES:
                sent_at[len(published)] = time.monotonic()
                published.append(await publish(publisher, CHANNEL, {
                    "n": len(published), "end": False, "filler": FILLER}))
                slowest = max(server.registry.streams(), key=lambda s: s.buffered())
                most_buffered = max(most_buffered, slowest.buffered())
                if server.stats["slow_readers_lagged"]:
                    after_lag += 1
            assert slowest is not None and server.stats["slow_readers_lagged"] == 1
            assert slowest.reader.behind and not slowest.closed
            # Its memory stays within the limit (plus the one write that crossed it).
            assert most_buffered <= LIMIT + 4200
            assert server.stats["slow_consumers"] == 0
            # The sweep does not take a lagging reader for one whose buffer grew while
            # it caught up: it is only cut off if it reads nothing for slow_consumer_timeout.
            server.registry.sweep(loop.time(), time.time(), heartbeat=False, check_tokens=False)
            assert not slowest.closed and server.stats["slow_consumers"] == 0
            half = server.settings.slow_consumer_timeout / 2
            server.registry.sweep(loop.time() + half, time.time(), heartbeat=False,
                                  check_tokens=False)
            assert not slowest.closed

            # The slow reader reads again: it skips ahead and goes live.
            received = bytearray()

            async def read_slowly() -> None:
                while chunk := await loop.sock_recv(stalled, 1 << 20):
                    received.extend(chunk)

            reading = asyncio.create_task(read_slowly())
            await until(lambda: not slowest.reader.behind, within=10 * UNIT)
            sent_at[len(published)] = time.monotonic()
            end = await publish(publisher, CHANNEL, {"n": len(published), "end": True})
            published.append(end)
            await until(lambda: b'"end":true' in received, within=10 * UNIT)
            reading.cancel()

            # Everyone else got every message, in order, promptly.
            async with asyncio.timeout(10 * UNIT):
                assert await followers[0] == published
                assert await followers[1] == published
            assert max(latencies) < 2 * UNIT

            # The slow one can account for every message: read, or counted in one gap.
            items = items_of(technique, bytes(received))
            seqs = [int(published[0].rsplit("-", 1)[1]) - 1]
            gaps = []
            for item in items:
                if item["type"] == "gap":
                    gaps.append(item)
                    assert item["from"] == f"{published[0][:8]}-{seqs[-1]}"
                    seqs.append(int(item["to"].rsplit("-", 1)[1]))
                    assert item["missed"] == seqs[-1] - seqs[-2]
                else:
                    seqs.append(int(item["id"].rsplit("-", 1)[1]))
                    assert seqs[-1] == seqs[-2] + 1
            assert [gap["reason"] for gap in gaps] == [slow.GAP_REASONS[policy]]
            assert items[-1]["id"] == end
            if policy == slow.LATEST:  # the newest message before "end" came after the gap
                assert [item.get("id") for item in items[-2:]] == [published[-2], end]
            else:
                assert gaps[0]["to"] == published[-2]
            assert server.stats["slow_consumers"] == 0
        finally:
            stalled.close()
