"""Bad input gets the documented answers; polling is cheap with ETags; CORS is answered."""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tidings.conformance._context import Context, labelled
from tidings.conformance._readers import open_reader, read_items
from tidings.testing import (
    CheckFailed,
    RawWebSocket,
    close_raw,
    command,
    epoch_of,
    json_body,
    open_raw,
    open_ws,
    publish,
    read_response,
    recv_json,
    request_head,
    require,
    require_equal,
    require_error,
)

#: Bodies declared (never sent) to find the size limit: the default, then 1 MiB.
OVERSIZE_BODIES = (64 * 1024 + 1, 1024 * 1024 + 1)


async def bad_input(ctx: Context) -> None:
    """Each documented error, with a JSON ``{"error", "message"}`` body; then still serving."""
    channel = ctx.channel("input")
    async with ctx.http() as http:
        known = await publish(http, channel, "known")
        path = f"/channels/{channel}"
        # (the technique the request reads with, or None) method, target, options, answer
        cases: list[tuple[str | None, str, str, dict[str, Any], int, str]] = [
            (None, "POST", path, {"content": b"{not json"}, 400, "invalid_json"),
            (None, "POST", path, {"content": b"NaN"}, 400, "invalid_json"),
            (None, "POST", path, {"content": b'"\xff"'}, 400, "invalid_json"),
            (None, "POST", "/channels/bad!name", {"content": b"1"}, 400, "invalid_channel"),
            (None, "POST", "/channels/" + "x" * 129, {"content": b"1"}, 400, "invalid_channel"),
            ("poll", "GET", "/channels/bad!name", {}, 400, "invalid_channel"),
            ("poll", "GET", path, {"params": {"since": "nope"}}, 400, "invalid_cursor"),
            ("poll", "GET", path, {"params": {"since": ""}}, 400, "invalid_cursor"),
            ("poll", "GET", path, {"params": {"since": f"{epoch_of(known)}-999999999"}}, 400,
             "invalid_cursor"),
            ("sse", "GET", path, {"headers": {"Accept": "text/event-stream",
                                              "Last-Event-ID": "nope"}}, 400, "invalid_cursor"),
            ("longpoll", "GET", path, {"params": {"wait": "soon"}}, 400, "invalid_wait"),
            ("poll", "GET", "/subscribe", {}, 400, "no_channel"),
            (None, "GET", f"/{ctx.prefix}nowhere", {}, 404, "not_found"),
            (None, "GET", "/channels", {}, 404, "not_found"),
            (None, "PUT", path, {"content": b"1"}, 405, "method_not_allowed"),
            (None, "DELETE", path, {}, 405, "method_not_allowed"),
            (None, "POST", f"/subscribe?channel={channel}", {"content": b"1"}, 405,
             "method_not_allowed"),
        ]
        # A technique the server turned off is refused, not served.
        disabled_reads: dict[str, dict[str, Any]] = {
            "sse": {"headers": {"Accept": "text/event-stream"}},
            "longpoll": {"params": {"wait": "1"}},
            "poll": {},
        }
        cases += [(None, "GET", path, options, 403, "transport_disabled")
                  for technique, options in disabled_reads.items() if not ctx.serves(technique)]
        for technique, method, target, options, status, code in cases:
            if technique is not None and not ctx.serves(technique):
                continue
            what = f"{method} {target} {options or ''}".strip()
            response = await http.request(method, target, **options)
            require_error(response, status, code, what)
            if status == 405:
                allow = {m.strip() for m in response.headers.get("allow", "").split(",")}
                require("GET" in allow, f"{what}: the Allow header {allow} lacks GET")
        with labelled("413"):
            await _payload_too_large(ctx, channel)
        if ctx.serves("websocket"):
            await _websocket_errors(ctx, channel)
        else:
            with labelled("a WebSocket upgrade when WebSocket is turned off"):
                await _websocket_disabled(ctx, path)
        with labelled("still serving after the bad input"):
            new = await publish(http, channel, "after")
            reader = ctx.techniques[0]
            async with open_reader(ctx, reader, [channel], known) as opened:
                (item,) = await read_items(ctx, opened, 1, f"reading with {reader}")
            require_equal((item.kind, item.id), ("message", new), "the message after it")


async def _payload_too_large(ctx: Context, channel: str) -> None:
    """A declared body over the limit is refused with 413 before it is sent."""
    for size in OVERSIZE_BODIES:
        reader, writer = await open_raw(ctx, within=ctx.timeout)
        try:
            writer.write(request_head(ctx, "POST", f"/channels/{channel}",
                                      "Content-Type: application/json",
                                      f"Content-Length: {size}", "Expect: 100-continue"))
            async with ctx.step(f"declaring {size} bytes"):
                status, headers, body = await read_response(reader, within=None)
        finally:
            await close_raw(writer)
        if status == 100:
            continue  # this server takes larger bodies: try the next size
        require_equal(status, 413, f"the status for a body of {size} bytes")
        require(headers.get("content-type", "").startswith("application/json"),
                f"the 413 answer is not JSON: {headers.get('content-type')!r}")
        value = json.loads(body or b"null")
        require(isinstance(value, dict) and value.get("error") == "payload_too_large"
                and value.get("message"),
                f'expected {{"error": "payload_too_large", "message": ...}}, got {body!r}')
        return
    raise CheckFailed(f"a body of {OVERSIZE_BODIES[-1]} bytes is not refused with 413")


async def _websocket_disabled(ctx: Context, path: str) -> None:
    try:
        async with open_ws(ctx, path, within=ctx.timeout):
            raise CheckFailed("it was upgraded")
    except InvalidStatus as exc:
        require_error(_as_httpx(exc), 403, "transport_disabled", "the answer")


def _as_httpx(exc: InvalidStatus) -> httpx.Response:
    """The refusal of a WebSocket handshake, as an httpx response."""
    return httpx.Response(exc.response.status_code,
                          headers=list(exc.response.headers.raw_items()),
                          content=bytes(exc.response.body or b""))


async def _websocket_errors(ctx: Context, channel: str) -> None:
    """Bad commands get error frames on an open WebSocket; a binary frame closes it with 1003."""
    with labelled("a WebSocket upgrade with a bad since"):
        try:
            async with open_ws(ctx, f"/channels/{channel}?since=nope", within=ctx.timeout):
                raise CheckFailed("it was upgraded")
        except InvalidStatus as exc:
            require_error(_as_httpx(exc), 400, "invalid_cursor", "the answer")
    bad_commands = [
        ("not json", None, "invalid_json"),
        ("[1, 2]", None, "invalid_command"),
        ('{"type": "ping"}', None, "invalid_command"),
        ('{"type": "dance", "req": 2}', 2, "unknown_command"),
        ('{"type": "subscribe", "req": 3, "channel": "bad!name"}', 3, "invalid_channel"),
        (json.dumps({"type": "subscribe", "req": 4, "channel": channel, "since": "nope"}), 4,
         "invalid_cursor"),
        (json.dumps({"type": "publish", "req": 5, "channel": channel}), 5, "invalid_command"),
    ]
    async with open_ws(ctx, "/subscribe", within=ctx.timeout) as ws:
        for text, req, code in bad_commands:
            with labelled(f"the WebSocket command {text}"):
                await ws.send(text)
                async with ctx.step("waiting for the error frame"):
                    frame = await recv_json(ws, within=None)
                require(frame.get("type") == "error" and frame.get("req") == req
                        and frame.get("error") == code
                        and isinstance(frame.get("message"), str) and frame["message"],
                        f'expected {{"type": "error", "req": {req!r}, "error": "{code}", '
                        f'"message": ...}}, got {frame!r}')
        with labelled("a ping command after the errors"):
            # Frames before the answer are set aside: only the answer is checked.
            require_equal(await command(ws, [], within=ctx.timeout, type="ping", req="p"),
                          {"type": "ack", "req": "p"}, "the answer")
        with labelled("a binary frame"):
            await ws.send(b'{"type": "ping", "req": 1}')
            try:
                async with ctx.step("waiting for the close"):
                    frame = await recv_json(ws, within=None)
                raise CheckFailed(f"the connection stayed open: {frame!r}")
            except ConnectionClosed as exc:
                require_equal(exc.rcvd.code if exc.rcvd is not None else None, 1003,
                              "the close code")
    # A text frame that is not UTF-8 closes with 1007 (sent by hand: websockets refuses to).
    with labelled("a text frame that is not UTF-8"):
        raw = await RawWebSocket.connect(ctx, "/subscribe", within=ctx.timeout)
        try:
            raw.send_frame(0x1, b'"\xff\xfe"')
            async with ctx.step("waiting for the close frame"):
                while True:
                    opcode, payload = await raw.read_frame(within=None)
                    if opcode == 0x8:
                        break
            require_equal(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None,
                          1007, "the close code")
        finally:
            await raw.aclose()


async def etag_304(ctx: Context) -> None:
    """Polls carry ``ETag: "<next>"``; sending it back answers ``304`` until something is new."""
    ctx.require_serving("poll")
    channel = ctx.channel("etag")
    path = f"/channels/{channel}"
    async with ctx.http() as http:
        first = await publish(http, channel, 1)
        response = await http.get(path, params={"since": first})
        require_equal(response.status_code, 200, "a poll")
        answer = json_body(response, "a poll")
        require_equal(answer, {"messages": [], "next": first}, "a poll with nothing new")
        etag = response.headers.get("etag")
        require_equal(etag, f'"{first}"', "the ETag")
        require("no-cache" in response.headers.get("cache-control", ""),
                f"Cache-Control is {response.headers.get('cache-control')!r}, not no-cache")
        again = await http.get(path, params={"since": first}, headers={"If-None-Match": etag})
        require_equal(again.status_code, 304, "a poll with If-None-Match and nothing new")
        require_equal(again.content, b"", "the body of a 304")
        second = await publish(http, channel, 2)
        changed = await http.get(path, params={"since": first}, headers={"If-None-Match": etag})
        require_equal(changed.status_code, 200, "a poll with If-None-Match after a publish")
        require_equal([m["id"] for m in json_body(changed, "a poll")["messages"]], [second],
                      "the new messages")
        require_equal(changed.headers.get("etag"), f'"{second}"', "the new ETag")


async def cors(ctx: Context) -> None:
    """Publish, poll, long poll and SSE answer CORS for the server's own origin; preflights 204."""
    channel = ctx.channel("cors")
    path = f"/channels/{channel}"
    origin = {"Origin": ctx.origin}
    allowed = ("*", ctx.origin)
    reads: dict[str, dict[str, Any]] = {
        "poll": {"headers": {}, "params": {"since": "0"}},
        "longpoll": {"headers": {}, "params": {"since": "0", "wait": "1"}},
        "sse": {"headers": {"Accept": "text/event-stream"}, "params": {}},
    }

    def require_cors(response: httpx.Response, what: str) -> None:
        value = response.headers.get("access-control-allow-origin")
        require(value in allowed, f"{what}: Access-Control-Allow-Origin is {value!r} for "
                                  f"Origin {ctx.origin} (is cors_origins restricted?)")

    async with ctx.http() as http:
        published = await http.post(path, content=b"1", headers=origin)
        require_equal(published.status_code, 201, "a publish")
        require_cors(published, "a publish")
        for technique, options in reads.items():
            if not ctx.serves(technique):
                continue
            async with http.stream("GET", path, headers={**origin, **options["headers"]},
                                   params=options["params"]) as read:
                require_equal(read.status_code, 200, f"a {technique} read")
                require_cors(read, f"a {technique} read")
                exposed = read.headers.get("access-control-expose-headers", "").lower()
                require(technique == "sse" or "etag" in exposed,
                        f"a {technique} read: ETag is not exposed ({exposed!r})")
        preflight = await http.options(path, headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        require_equal(preflight.status_code, 204, "a preflight")
        require_cors(preflight, "a preflight")
        methods = preflight.headers.get("access-control-allow-methods", "")
        require("POST" in methods and "GET" in methods,
                f"a preflight: Access-Control-Allow-Methods is {methods!r}")
        require("content-type" in preflight.headers.get("access-control-allow-headers", "").lower(),
                "a preflight: Content-Type is not an allowed header")
