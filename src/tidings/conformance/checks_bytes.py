"""Fewer bytes: history backwards, WebSocket compression encoded once, and deltas."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from typing import Any

from tidings.conformance._context import Context, labelled
from tidings.errors import BadRequest
from tidings.testing import (
    close_raw,
    json_body,
    open_raw,
    open_sse,
    open_ws,
    publish_many,
    read_response,
    recv_json,
    request_head,
    require,
    require_equal,
)
from tidings.wire import delta as deltas

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


def _ticks(count: int) -> list[dict[str, Any]]:
    """Price ticks in which a few of many quotes move: what deltas are for."""
    quotes: list[dict[str, Any]] = [{"symbol": f"S{i:02}", "price": 100.0 + i, "change": 0.0}
                                    for i in range(20)]
    ticks = []
    for n in range(count):
        quotes = [dict(quote) for quote in quotes]
        for quote in quotes[n % 4::4]:
            quote["price"] = round(quote["price"] + 0.01 * (n + 1), 2)
            quote["change"] = round(quote["change"] + 0.01 * (n + 1), 2)
        ticks.append({"tick": n, "quotes": quotes})
    return ticks


def _check_deltas(messages: list[dict[str, Any]], ids: list[str], values: list[Any],
                  what: str) -> int:
    """Rebuild ``values`` from ``messages`` (whole or deltas); return how many were deltas."""
    require_equal([m.get("id") for m in messages], ids, f"the ids read ({what})")
    require("delta" not in messages[0], f"the first message of a read is whole ({what})")
    count = 0
    previous: tuple[str, Any] | None = None
    for message, value in zip(messages, values, strict=True):
        if "delta" in message:
            count += 1
            require("data" not in message, f"a delta message also has data ({what})")
            require(previous is not None and message.get("base") == previous[0],
                    f"a delta's base {message.get('base')!r} is not the message before it "
                    f"({what})")
            assert previous is not None
            try:
                data = deltas.apply(previous[1], message["delta"])
            except BadRequest as exc:
                require(False, f"a delta that does not apply to its base ({what}): {exc}")
        else:
            data = message.get("data")
        require(json.dumps(data, sort_keys=True) == json.dumps(value, sort_keys=True),
                f"message {message.get('id')} rebuilt from its delta is not what was published "
                f"({what})")
        previous = (message["id"], data)
    return count


async def deltas_for_readers_that_ask(ctx: Context) -> None:
    """``?delta=1``: a read's first message whole, then deltas naming their base, on each
    technique; a resume starts whole again."""
    channel = ctx.channel("deltas")
    path = f"/channels/{channel}"
    values = _ticks(4)
    sent = 0
    async with ctx.http() as http:
        ids = await publish_many(http, channel, values)
        for technique in ("poll", "longpoll"):
            if not ctx.serves(technique):
                continue
            params = {"since": "0", "delta": "1", **({"wait": "0"} if technique == "longpoll"
                                                     else {})}
            async with ctx.step(f"GET {path} {params}"):
                response = await http.get(path, params=params)
            require_equal(response.status_code, 200, f"a {technique} with delta=1")
            answer = json_body(response, f"a {technique} with delta=1")
            sent += _check_deltas(answer["messages"], ids, values, technique)
        if ctx.serves("sse"):
            for since, expect in (("0", ids), (ids[1], ids[2:])):
                async with open_sse(http, path, {"since": since, "delta": "1"},
                                    within=ctx.timeout) as stream:
                    await stream.opening()
                    async with ctx.step("reading SSE messages with delta=1"):
                        got = await stream.message_objects(len(expect))
                sent += _check_deltas(got, expect, values[len(ids) - len(expect):],
                                      f"sse since={since}")
        if ctx.serves("websocket"):
            for since, expect in (("0", ids), (ids[1], ids[2:])):
                async with open_ws(ctx, f"{path}?since={since}&delta=1",
                                   within=ctx.timeout) as ws:
                    got = []
                    async with ctx.step("reading WebSocket messages with delta=1"):
                        while len(got) < len(expect):
                            frame = await recv_json(ws, ctx.timeout)
                            if frame.get("type") == "message":
                                got.append(frame)
                sent += _check_deltas(got, expect, values[len(ids) - len(expect):],
                                      f"websocket since={since}")
        async with ctx.step(f"GET {path}?delta=2"):
            bad = await http.get(path, params={"delta": "2"})
        require_equal(bad.status_code, 400, "delta=2")
    require(sent > 0, "no technique sent a single delta for messages that differ in a few "
                      "prices out of twenty")
