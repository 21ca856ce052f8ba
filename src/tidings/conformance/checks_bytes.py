"""Fewer bytes: history backwards, and WebSocket compression encoded once."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from typing import Any

from tidings.conformance._context import Context, labelled
from tidings.testing import (
    close_raw,
    json_body,
    open_raw,
    publish_many,
    read_response,
    request_head,
    require,
    require_equal,
)

#: Parameters a permessage-deflate answer may carry (RFC 7692).
_DEFLATE_PARAMS = frozenset({"server_no_context_takeover", "client_no_context_takeover",
                             "server_max_window_bits", "client_max_window_bits"})
#: A message that any sensible compression threshold compresses (about 2 KB of prices).
_PRICES = {f"SYM{i}": {"bid": 100 + i, "ask": 100.5 + i, "last": 100.25 + i} for i in range(40)}


async def history_backwards(ctx: Context) -> None:
    """``?order=desc`` and ``?before=ID`` page the retained messages newest first."""
    ctx.require_serving("poll")
    channel = ctx.channel("history")
    path = f"/channels/{channel}"
    async with ctx.http() as http:
        ids = await publish_many(http, channel, [{"n": n} for n in range(1, 6)])
        pages: list[dict[str, Any]] = []
        query: dict[str, str] = {"order": "desc", "limit": "2"}
        while True:
            async with ctx.step(f"GET {path} {query}"):
                response = await http.get(path, params=query)
            require_equal(response.status_code, 200, f"a read backwards ({query})")
            page = json_body(response, "a read backwards")
            require(isinstance(page, dict) and isinstance(page.get("messages"), list)
                    and isinstance(page.get("next"), str),
                    f"a read backwards answers {{messages, next, ...}}, not {str(page)[:100]}")
            pages.append(page)
            if not page.get("more"):
                break
            require(len(pages) < 5, "a read backwards of 5 messages by 2 never ends")
            require_equal(page.get("before"), page["messages"][-1]["id"],
                          "before, on a page with more")
            query = {"before": page["before"], "limit": "2"}
        got = [[m["id"] for m in page["messages"]] for page in pages]
        require_equal(got, [ids[4:2:-1], ids[2:0:-1], ids[:1]], "pages of ids, newest first")
        require_equal(pages[0]["next"], ids[4], "next of the first page (the end of the log)")
        async with ctx.step(f"GET {path}?order=desc&since={ids[2]}"):
            bounded = await http.get(path, params={"order": "desc", "since": ids[2]})
        require_equal([m["id"] for m in json_body(bounded, "a bounded read")["messages"]],
                      ids[4:2:-1], "a read backwards down to since")


async def websocket_compression(ctx: Context) -> None:
    """permessage-deflate is agreed without context takeover, or declined, never half-done."""
    ctx.require_serving("websocket")
    channel = ctx.channel("deflate")
    with labelled("an offer the browsers make"):
        await _offer(ctx, channel, "permessage-deflate; client_max_window_bits", may_agree=True)
    with labelled("an offer with an unknown parameter"):
        await _offer(ctx, channel, "permessage-deflate; no_such_parameter", may_agree=False)


async def _offer(ctx: Context, channel: str, offer: str, *, may_agree: bool) -> None:
    reader, writer = await open_raw(ctx, within=ctx.timeout)
    try:
        writer.write(request_head(ctx, "GET", f"/channels/{channel}", "Upgrade: websocket",
                                  "Connection: Upgrade",
                                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                  "Sec-WebSocket-Version: 13",
                                  f"Sec-WebSocket-Extensions: {offer}"))
        async with ctx.step("waiting for the WebSocket handshake"):
            answer = await read_response(reader)
        require_equal(answer.status, 101, "the WebSocket handshake")
        agreed = {name.lower(): value for name, value in answer.headers.items()}.get(
            "sec-websocket-extensions")
        window = 15
        if agreed is not None:
            require(may_agree, f"the server agreed to an offer it cannot honour: {agreed!r}")
            name, *params = [part.strip() for part in agreed.split(";")]
            require_equal(name.lower(), "permessage-deflate", "the extension agreed")
            names = [param.split("=")[0].strip().lower() for param in params]
            require(set(names) <= _DEFLATE_PARAMS and len(set(names)) == len(names),
                    f"an answer with parameters an offer may not get: {agreed!r}")
            require("server_no_context_takeover" in names,
                    f"compression without server_no_context_takeover: {agreed!r} (each "
                    "message must be compressed once for every subscriber)")
            for param in params:
                if param.lower().startswith("server_max_window_bits"):
                    window = int(param.split("=")[1])
        first, payload = await _frame(ctx, reader)
        require_equal(json.loads(payload).get("type"), "subscribed", "the first frame")
        async with ctx.http() as http:
            ids = await publish_many(http, channel, [{**_PRICES, "n": n} for n in range(2)])
        for message_id in ids:
            first, payload = await _frame(ctx, reader)
            if first & 0x40:
                require(agreed is not None, "a compressed frame without an agreed extension")
                try:  # on its own: no context from the frame before
                    payload = zlib.decompressobj(-window).decompress(payload + b"\0\0\xff\xff")
                except zlib.error as exc:
                    require(False, f"a compressed frame that does not inflate on its own: {exc}")
            value = json.loads(payload)
            require_equal(value.get("id"), message_id, "the id of a message frame")
    finally:
        await close_raw(writer)


async def _frame(ctx: Context, reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame that is not a ping: its first byte and its payload."""
    async with ctx.step("waiting for a WebSocket frame"):
        while True:
            first, second = await reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(length)
            if first & 0x0F != 0x9:
                return first, payload
