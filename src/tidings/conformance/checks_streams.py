"""Long-lived streams: heartbeats on idle ones, and a slow consumer cut off alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import struct
from collections.abc import Awaitable

import httpx

from tidings.conformance._context import Context, labelled
from tidings.conformance._readers import Reader, end_of, open_reader, read_items
from tidings.testing import (
    CheckFailed,
    RawWebSocket,
    close_raw,
    open_raw,
    open_sse,
    publish,
    read_response,
    request_head,
    require,
    require_equal,
)

PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1


async def _gather_labelled(parts: dict[str, Awaitable[None]]) -> None:
    """Run ``parts`` together; raise the first failure, labelled with its name."""
    async def labelled_part(name: str, part: Awaitable[None]) -> None:
        with labelled(name):
            await part

    results = await asyncio.gather(*(labelled_part(name, part) for name, part in parts.items()),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def heartbeats(ctx: Context) -> None:
    """An idle event stream gets a comment line, an idle WebSocket a ping, within the timeout."""
    ctx.require_serving("sse", "websocket")
    channel = ctx.channel("idle")
    parts = {"sse": _sse_heartbeat(ctx, channel) if ctx.serves("sse") else None,
             "websocket": _ws_heartbeat(ctx, channel) if ctx.serves("websocket") else None}
    await _gather_labelled({name: part for name, part in parts.items() if part is not None})


async def _sse_heartbeat(ctx: Context, channel: str) -> None:
    async with ctx.http() as http, open_sse(http, f"/channels/{channel}",
                                            within=ctx.timeout) as stream:
        await stream.opening()
        async with ctx.step("waiting for a heartbeat comment on an idle event stream",
                            within=ctx.heartbeat_timeout):
            block = await stream.next_block(within=ctx.heartbeat_timeout)
        require(block.comments and block.event is None and block.data is None,
                f"an idle event stream sent {block!r}, not a comment")


async def _ws_heartbeat(ctx: Context, channel: str) -> None:
    ws = await RawWebSocket.connect(ctx, f"/channels/{channel}", within=ctx.timeout)
    try:
        async with ctx.step("waiting for a ping on an idle WebSocket",
                            within=ctx.heartbeat_timeout):
            while True:
                opcode, payload = await ws.read_frame(within=None)
                if opcode == PING:
                    ws.send_frame(PONG, payload)
                    return
                if opcode == CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    raise CheckFailed(f"an idle WebSocket was closed ({code}) before any ping")
                require(opcode == TEXT, f"unexpected frame opcode {opcode}")
    finally:
        await ws.aclose()


#: Published to the slow consumers: about 4 MB in 4 KB messages.
SLOW_MESSAGES = 1000
FILLER = "x" * 4000
#: Messages the normal subscriber may lag behind the publisher.
WINDOW = 32


async def slow_consumer(ctx: Context) -> None:
    """Subscribers that never read are cut off; a normal one gets every message meanwhile.

    Raw subscribers (SSE and WebSocket) with a 4 KiB receive buffer never
    read while about 4 MB are published. The normal subscriber (SSE, or the
    best technique served) must get every message in order; the slow ones,
    when they finally read, must find the end of the connection (or
    ``event: close`` / close code 4008) before the last message.
    """
    ctx.require_serving("sse", "websocket")
    channel = ctx.channel("slow")
    path = f"/channels/{channel}"
    normal_name = "sse" if ctx.serves("sse") else ctx.techniques[0]
    async with ctx.http() as http, contextlib.AsyncExitStack() as stack:
        start = await end_of(ctx, channel)
        normal = await stack.enter_async_context(open_reader(ctx, normal_name, [channel], start))
        slow_sse = await _open_slow_sse(ctx, path, stack) if ctx.serves("sse") else None
        slow_ws = await _open_slow_ws(ctx, path, stack) if ctx.serves("websocket") else None
        published = await _publish_watched(ctx, http, channel, normal)
        if slow_sse is not None:
            with labelled("the slow SSE subscriber"):
                data = await _drain(ctx, slow_sse, published[-1])
                if b"event: close" in data:
                    require(b"slow_consumer" in data[data.rindex(b"event: close"):],
                            "event: close without slow_consumer")
        if slow_ws is not None:
            with labelled("the slow WebSocket subscriber"):
                await _drain_ws(ctx, slow_ws, published[-1])
        with labelled(f"the normal subscriber ({normal_name}), after the cut"):
            new = await publish(http, channel, "still live")
            (item,) = await read_items(ctx, normal, 1, "waiting for a message",
                                       messages_only=True)
            require_equal(item.id, new, "the next message")


async def _open_slow_sse(ctx: Context, path: str,
                         stack: contextlib.AsyncExitStack) -> asyncio.StreamReader:
    """An event stream that reads its head and opening block, and then nothing."""
    reader, writer = await open_raw(ctx, receive_buffer=4096, limit=1024, within=ctx.timeout)
    stack.push_async_callback(close_raw, writer)
    writer.write(request_head(ctx, "GET", path, "Accept: text/event-stream"))
    async with ctx.step("opening the slow event stream"):
        status, _, _ = await read_response(reader, within=None)
    require_equal(status, 200, "the slow event stream")
    async with ctx.step("waiting for the opening block of the slow event stream"):
        await reader.readuntil(b"\n\n")
    return reader


async def _open_slow_ws(ctx: Context, path: str,
                        stack: contextlib.AsyncExitStack) -> RawWebSocket:
    """A WebSocket that reads its subscribed frame, and then nothing; it pings though."""
    ws = await RawWebSocket.connect(ctx, path, receive_buffer=4096, limit=1024,
                                    within=ctx.timeout)
    stack.push_async_callback(ws.aclose)
    async with ctx.step("waiting for the subscribed frame of the slow WebSocket"):
        await ws.read_frame(within=None)
    # It never reads, but it writes: pings keep it from being closed as a
    # client that does not answer the server's pings.
    keepalive = asyncio.create_task(_ping_forever(ws))

    async def stop() -> None:
        keepalive.cancel()
        await asyncio.gather(keepalive, return_exceptions=True)

    stack.push_async_callback(stop)
    return ws


async def _publish_watched(ctx: Context, http: httpx.AsyncClient, channel: str,
                           normal: Reader) -> list[str]:
    """Publish :data:`SLOW_MESSAGES` while ``normal`` reads them all; return their ids.

    The publisher stays at most :data:`WINDOW` messages ahead of the normal
    subscriber, so that only the subscribers that never read fall behind.
    """
    received: list[str] = []
    progress = asyncio.Event()

    async def collect() -> None:
        try:
            while len(received) < SLOW_MESSAGES:
                item = await normal.next()
                require(item.kind == "message", f"the normal subscriber got a gap {item.body}")
                received.append(item.id)
                progress.set()
        finally:
            progress.set()  # the publisher must not wait for a reader that stopped

    collecting = asyncio.create_task(collect())
    published: list[str] = []
    try:
        async with ctx.step(f"publishing {SLOW_MESSAGES} messages of 4 KB",
                            within=max(60.0, 6 * ctx.timeout)):
            for n in range(SLOW_MESSAGES):
                while len(received) < n - WINDOW and not collecting.done():
                    progress.clear()
                    await progress.wait()
                if collecting.done():
                    break
                published.append(await publish(http, channel, {"n": n, "filler": FILLER}))
        with labelled("the normal subscriber"):
            async with ctx.step("waiting for the last messages"):
                await collecting
    finally:
        collecting.cancel()
        await asyncio.gather(collecting, return_exceptions=True)
    with labelled("the normal subscriber"):
        require_equal(received, published, "the ids it received")
    return published


async def _ping_forever(ws: RawWebSocket) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while True:
            ws.send_frame(PING, b"conformance")
            await asyncio.sleep(0.2)


async def _drain(ctx: Context, reader: asyncio.StreamReader, last: str) -> bytes:
    """Read what the server left for a slow subscriber, up to the end of the connection."""
    chunks: list[bytes] = []
    marker = f'"id":"{last}"'.encode()
    try:
        async with ctx.step("reading until the server closes the connection"):
            while chunk := await reader.read(1 << 16):
                chunks.append(chunk)
                require(marker not in chunk, "it was never cut off: it got the last message")
    except (ConnectionError, ssl.SSLError):
        pass  # reset: cut off too
    data = b"".join(chunks)
    require(marker not in data, "it was never cut off: it got the last message")
    return data


async def _drain_ws(ctx: Context, ws: RawWebSocket, last: str) -> None:
    try:
        async with ctx.step("reading until the server closes the connection"):
            while True:
                opcode, payload = await ws.read_frame(within=None)
                if opcode == CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                    require_equal(code, 4008, "the close code")
                    return
                if opcode == TEXT:
                    frame = json.loads(payload)
                    require(frame.get("id") != last,
                            "it was never cut off: it got the last message")
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass  # closed without a close frame, or reset: cut off
