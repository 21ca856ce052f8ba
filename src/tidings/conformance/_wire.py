"""Clients we did not write, driven by hand: httpx, ``websockets``, and raw sockets.

Nothing here uses :mod:`tidings.client`: a server bug must not be hidden by
our own client's resume rules. Every function that waits is bounded by the
context's ``timeout``; failures raise :class:`CheckFailed` with the answer
that was wrong.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tidings.conformance._context import CheckFailed, Context, require, require_equal

#: The values every technique must deliver unchanged: nesting, unicode, numbers
#: (integers within the range every JSON implementation keeps exact), and
#: strings that look like SSE fields or contain line ends.
SAMPLE_VALUES: list[Any] = [
    {"nested": {"list": [1, 2.5, -3e-7, True, False, None], "empty": {}, "deep": [[{"a": []}]]}},
    "unicode: héllo wörld ✓ 日本語 😀 \u2028 \u2029 \u0000 \x7f",
    9007199254740991,
    -0.125,
    1.5e300,
    0,
    [],
    {},
    None,
    True,
    "",
    "line one\nline two\r\nline three\rend",
    "data: not an sse field\n\nid: nor this\nevent: close",
    {"quotes \"and\" \\backslashes\\": "</script><!--", "tab\there": [-1, 0.1]},
]


def seq_of(message_id: str) -> int:
    return int(message_id.rsplit("-", 1)[1])


def epoch_of(message_id: str) -> str:
    return message_id.rsplit("-", 1)[0]


# HTTP ------------------------------------------------------------------------------


def json_body(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise CheckFailed(f"{what}: the answer is not JSON: {response.text[:200]!r}") from None


async def publish(http: httpx.AsyncClient, channel: str, value: Any) -> str:
    """Publish ``value``; check the ``201`` answer and return the message id."""
    # Not ``json=value``: httpx sends no body at all for ``json=None``.
    response = await http.post(f"/channels/{channel}", content=json.dumps(value),
                               headers={"Content-Type": "application/json"})
    require(response.status_code == 201,
            f"publishing on {channel} answered {response.status_code}: {response.text[:200]}")
    body = json_body(response, "the publish answer")
    require(isinstance(body, dict) and body.get("channel") == channel
            and isinstance(body.get("id"), str) and isinstance(body.get("time"), int),
            f"the publish answer is not {{channel, id, time}}: {body!r}")
    return str(body["id"])


async def publish_many(http: httpx.AsyncClient, channel: str, values: Sequence[Any]) -> list[str]:
    """Publish ``values`` one after the other; return their ids."""
    return [await publish(http, channel, value) for value in values]


async def poll(http: httpx.AsyncClient, path: str, params: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One poll (or long poll) that must answer ``200`` with a poll answer; return it."""
    response = await http.get(path, params=params, headers=headers)
    require(response.status_code == 200,
            f"GET {path} {params or ''} answered {response.status_code}: {response.text[:200]}")
    return check_poll_answer(json_body(response, f"GET {path}"))


def check_poll_answer(answer: Any) -> dict[str, Any]:
    require(isinstance(answer, dict) and isinstance(answer.get("messages"), list)
            and isinstance(answer.get("next"), str),
            f"a poll answer must be {{messages: [...], next: cursor, ...}}, not {answer!r}")
    gap, gaps = answer.get("gap"), answer.get("gaps")
    require((gap is None and gaps is None) or (gap is True and isinstance(gaps, list) and gaps),
            f'"gap": true and a non-empty "gaps" list come together: {answer!r}')
    return dict(answer)


def require_error(response: httpx.Response, status: int, code: str, what: str) -> dict[str, Any]:
    """``response`` must be ``status`` with a JSON body ``{"error": code, "message": text}``."""
    require(response.status_code == status,
            f"{what}: expected {status} {code}, got {response.status_code}: {response.text[:200]}")
    require(response.headers.get("content-type", "").startswith("application/json"),
            f"{what}: the error answer is not application/json: "
            f"{response.headers.get('content-type')!r}")
    body = json_body(response, what)
    require(isinstance(body, dict) and body.get("error") == code
            and isinstance(body.get("message"), str) and body["message"],
            f'{what}: expected {{"error": "{code}", "message": text}}, got {body!r}')
    return dict(body)


# Server-Sent Events ----------------------------------------------------------------


@dataclass
class SseBlock:
    """One blank-line-terminated block of an event stream."""

    event: str | None = None
    data: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def is_message(self) -> bool:
        return self.data is not None and self.event in (None, "message")

    def json(self) -> Any:
        try:
            return json.loads(self.data or "")
        except ValueError:
            raise CheckFailed(f"an SSE event's data is not JSON: {self.data!r}") from None


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SseStream:
    """Parses an event stream by the rules of the HTML standard, comments included.

    Lines end at CR, LF or CRLF only (not at U+2028, which may be in data).
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._lines = self._split()
        #: What an EventSource would send as ``Last-Event-ID`` when reconnecting.
        self.last_id: str | None = None

    async def _split(self) -> AsyncIterator[str]:
        buffer = b""
        async for chunk in self._chunks:
            buffer += chunk
            start = 0
            for match in _LINE_END.finditer(buffer):
                if match.group() == b"\r" and match.end() == len(buffer):
                    break  # maybe the first half of a CRLF
                yield buffer[start:match.start()].decode("utf-8")
                start = match.end()
            buffer = buffer[start:]

    async def next_block(self) -> SseBlock:
        """The next non-empty block; :class:`EOFError` at the end of the stream."""
        block = SseBlock()
        seen = False
        async for line in self._lines:
            if line == "":
                if seen:
                    return block
                continue
            seen = True
            if line.startswith(":"):
                block.comments.append(line[1:])
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                block.data = value if block.data is None else f"{block.data}\n{value}"
            elif name == "event":
                block.event = value
            elif name == "id":
                block.id = value
                self.last_id = value
            elif name == "retry" and value.isdigit():
                block.retry = int(value)
        raise EOFError("the event stream ended")

    async def next_event(self) -> SseBlock:
        """The next block that is an event (heartbeat comments skipped)."""
        while True:
            block = await self.next_block()
            if block.data is not None or block.event is not None:
                return block


@contextlib.asynccontextmanager
async def open_sse(ctx: Context, http: httpx.AsyncClient, path: str,
                   params: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> AsyncIterator[SseStream]:
    """Open an event stream, check its head and opening block; closing it drops the connection.

    The opening block (``retry:`` and the starting ``id:``) has been read when
    this yields; ``stream.last_id`` is the starting cursor.
    """
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    request = http.build_request("GET", path, params=params, headers=all_headers,
                                 timeout=httpx.Timeout(ctx.timeout, read=None))
    async with ctx.step(f"waiting for the answer to an event stream request on {path}"):
        response = await http.send(request, stream=True)
    try:
        if response.status_code != 200:
            async with ctx.step("reading the refusal"):
                body = (await response.aread())[:200]
            raise CheckFailed(f"an event stream on {path} answered {response.status_code}: "
                              f"{body!r}")
        kind = response.headers.get("content-type", "")
        require(kind.startswith("text/event-stream"),
                f"an event stream answered Content-Type {kind!r}, not text/event-stream")
        stream = SseStream(response.aiter_bytes())
        async with ctx.step("waiting for the opening block of an event stream"):
            opening = await stream.next_block()
        require(opening.retry is not None and opening.id is not None and opening.data is None,
                f"an event stream must open with a retry: and an id: line, not {opening!r}")
        yield stream
    finally:
        await response.aclose()


# WebSocket ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_ws(ctx: Context, path: str) -> AsyncIterator[ClientConnection]:
    """A ``websockets`` connection to ``path`` (which may carry a query)."""
    async with ctx.step(f"opening a WebSocket on {path}"):
        # An unbounded queue: closing must not wait behind unread frames.
        ws = await ws_connect(ctx.ws_url + path, max_size=None, max_queue=None,
                              open_timeout=ctx.timeout, close_timeout=ctx.timeout)
    async with ws:
        yield ws


async def recv_frame(ctx: Context, ws: ClientConnection, what: str) -> dict[str, Any]:
    """The next frame, which must be a JSON object in a text frame."""
    async with ctx.step(what):
        frame = await ws.recv()
    require(isinstance(frame, str), f"a server frame is binary, not JSON text: {frame!r}")
    try:
        value = json.loads(frame)
    except ValueError:
        raise CheckFailed(f"a server frame is not JSON: {frame!r}") from None
    require(isinstance(value, dict) and isinstance(value.get("type"), str),
            f'a server frame must be an object with a "type": {frame!r}')
    return dict(value)


async def command(ctx: Context, ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    """Send a command; return the ``ack`` or ``error`` frame that echoes its ``req``."""
    await ws.send(json.dumps(fields))
    async with ctx.step(f"waiting for the answer to {fields}"):
        while True:
            frame = await recv_frame(ctx, ws, f"waiting for the answer to {fields}")
            if frame["type"] in ("ack", "error") and frame.get("req") == fields.get("req"):
                return frame


# Raw sockets -------------------------------------------------------------------------


async def open_raw(ctx: Context, *, receive_buffer: int | None = None,
                   limit: int = 1 << 16) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain (or TLS) connection to the server; ``receive_buffer`` sets a tiny SO_RCVBUF.

    The reader stops taking bytes from the kernel past about ``2 * limit``
    unread bytes, so a client that never reads soon fills its window.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in ctx.host else socket.AF_INET,
                         socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        async with ctx.step(f"connecting to {ctx.host}:{ctx.port}"):
            infos = await asyncio.get_running_loop().getaddrinfo(
                ctx.host, ctx.port, family=sock.family, type=socket.SOCK_STREAM)
            await asyncio.get_running_loop().sock_connect(sock, infos[0][4])
            tls = ssl.create_default_context() if ctx.tls else None
            return await asyncio.open_connection(
                sock=sock, ssl=tls, server_hostname=ctx.host if tls else None, limit=limit)
    except BaseException:
        sock.close()
        raise


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


def request_head(ctx: Context, method: str, target: str, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {ctx.host}:{ctx.port}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def read_response(ctx: Context, reader: asyncio.StreamReader,
                        what: str) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response (status, lower-cased headers, body by Content-Length)."""
    async with ctx.step(what):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        require(len(parts) >= 2 and parts[0].startswith("HTTP/1.") and parts[1].isdigit(),
                f"{what}: not an HTTP response: {status_line!r}")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
    return int(parts[1]), headers, body


def websocket_handshake(ctx: Context, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return request_head(ctx, "GET", path, "Upgrade: websocket", "Connection: Upgrade",
                        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13")


async def read_ws_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame as ``(opcode, payload)``; server frames are never masked."""
    first, second = await reader.readexactly(2)
    require(not second & 0x80, "a server WebSocket frame is masked")
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final client frame (payloads under 64 KiB)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + struct.pack(
        "!H", length)
    return head + mask + masked


async def raw_websocket(ctx: Context, path: str, *, receive_buffer: int | None = None,
                        limit: int = 1 << 16) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opened by hand, so that nothing answers pings behind our back."""
    reader, writer = await open_raw(ctx, receive_buffer=receive_buffer, limit=limit)
    try:
        writer.write(websocket_handshake(ctx, path))
        status, _, _ = await read_response(ctx, reader, f"waiting for the WebSocket handshake "
                                                        f"on {path}")
        require_equal(status, 101, f"the WebSocket handshake on {path}")
    except BaseException:
        await close_raw(writer)
        raise
    return reader, writer
