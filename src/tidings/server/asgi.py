"""``server.asgi``: the whole HTTP interface as an ASGI 3 application.

Another thin driver of the same objects, not a second implementation of the
protocol. Each ASGI request becomes a :class:`~tidings.server.request.Request`
and goes to the same :class:`~tidings.server.routes.Router` as a native
connection, on an :class:`AsgiConnection`: a :class:`HttpConnection` whose
socket is an :class:`AsgiTransport`. The drivers (poll, long poll, publish,
SSE, WebSocket) and the readers they drive are the native ones, and write the
same pre-encoded bytes; the transport turns them into ASGI events:

* HTTP: the head the drivers write becomes ``http.response.start`` (without
  hop-by-hop fields), the bytes after it ``http.response.body``; the answer
  ends after its ``Content-Length``, or when the driver closes (a stream).
* WebSocket: the handshake answer becomes ``websocket.accept``, each text
  frame ``websocket.send`` and a close frame ``websocket.close``; a command
  from the client is handed to the session as the frame it would have read.
  The ASGI server answers pings and keeps the connection alive itself.

Flow control is the native one: the transport counts the bytes the ASGI
server has not taken (``await send()`` has not returned), calls
``pause_writing`` past the stream's limit (a live stream is cut off as a slow
consumer, a backlog waits) and ``resume_writing`` when they drain.

Paths are relative to where the application is mounted (``root_path``), so
``Mount("/rt", app=server.asgi)`` serves ``/rt/channels/{name}``,
``/rt/subscribe``, ``/rt/healthz`` and ``/rt/tidings.js``. A ``lifespan``
scope starts and stops the server when the ASGI server runs it directly;
mounted in another application, that application does it (``async with server:``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tidings.errors import (
    INTERNAL_ERROR,
    PayloadTooLarge,
    ProtocolError,
    ShuttingDown,
)
from tidings.server.connection import INTERNAL_ANSWER, HttpConnection
from tidings.server.metrics import BYTES_HTTP, SENT_BYTES_INFO
from tidings.server.request import Request
from tidings.wire import http
from tidings.wire.websocket import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: Response fields that belong to one HTTP/1.1 connection, which the ASGI server owns.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
                        b"date", b"server"})
#: Seconds an aborted WebSocket (a slow consumer that never drained) gets to send its close.
ABORT_CLOSE_SECONDS = 1.0
#: The transport's default high-water mark before a stream sets its own (asyncio's).
DEFAULT_HIGH_WATER = 64 * 1024


class AsgiApp:
    """The ASGI 3 application of a :class:`~tidings.server.app.Server` (``server.asgi``)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        #: Set when this application's lifespan started the server (so it stops it too).
        self._started_here = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"tidings serves http and websocket scopes, not {kind!r}")

    # lifespan ----------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                try:
                    if not self.server.started:
                        await self.server.start()
                        self._started_here = True
                except Exception as exc:
                    logger.exception("starting tidings failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if self._started_here:
                    await self.server.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # HTTP ----------------------------------------------------------------------------

    def _unavailable(self) -> ProtocolError | None:
        if self.server.closing:
            return ShuttingDown("the server is shutting down; retry (on another node)")
        if not self.server.started:
            return ShuttingDown("the tidings server has not started yet (the application starts "
                                "it in its lifespan: async with server); retry",
                                code="not_started")
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        transport = AsgiTransport(scope, send, head_only=scope["method"] == "HEAD")
        unavailable = self._unavailable()
        if unavailable is not None:
            await send_error(send, unavailable)
            return
        try:
            body = await read_body(scope, receive, server.settings.max_message_size)
            request = Request(method=scope["method"], target=target(scope),
                              headers=headers(scope), body=body)
        except ProtocolError as exc:
            await send_error(send, exc)
            return
        except ClientLeft:
            return
        refusal = server.admission.admit(transport)
        if refusal is not None:
            await send_error(send, refusal)
            return
        conn = AsgiConnection(server, transport)
        try:
            server.router.dispatch(conn, request)
            await transport.serve(receive, conn)
        finally:
            server.admission.release(transport)

    # WebSocket -----------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        transport = WebSocketTransport(scope, send, self)
        unavailable = self._unavailable()
        if unavailable is not None:
            transport.write(http.error_response(unavailable, keep_alive=False))
            await transport.serve(receive, None)
            return
        try:
            fields = headers(scope)
            fields.setdefault("upgrade", "websocket")
            fields.setdefault("connection", "Upgrade")
            request = Request(method="GET", target=target(scope), headers=fields,
                              keep_alive=False, upgrade=True)
        except ProtocolError as exc:
            transport.write(http.error_response(exc, keep_alive=False))
            await transport.serve(receive, None)
            return
        refusal = server.admission.admit(transport)
        if refusal is not None:
            transport.write(http.error_response(refusal, keep_alive=False))
            await transport.serve(receive, None)
            return
        conn = AsgiConnection(server, transport)
        try:
            server.router.dispatch(conn, request)
            await transport.serve(receive, conn)
        finally:
            server.admission.release(transport)

    #: The last WebSocket frame decoded, and its text: fan-out writes one message's frame
    #: (the same bytes object) to every session in turn, so it is decoded once.
    last_frame: tuple[bytes, str] = (b"", "")


# The request side -----------------------------------------------------------------


def target(scope: Scope) -> bytes:
    """The request target below the mount point: path and query, as received."""
    root = scope.get("root_path", "")
    raw = scope.get("raw_path")
    if raw:
        path = bytes(raw)
        encoded_root = quote(root).encode("ascii")
        if encoded_root and path.startswith(encoded_root):
            path = path[len(encoded_root):]
    else:
        text = scope["path"]
        if root and text.startswith(root):
            text = text[len(root):]
        path = quote(text).encode("ascii")
    if not path.startswith(b"/"):
        path = b"/" + path
    query = scope.get("query_string", b"")
    return path + b"?" + query if query else path


def headers(scope: Scope) -> dict[str, str]:
    """The request's fields as the router reads them: lower-case names, repeats joined."""
    fields: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = fields.get(key)
        fields[key] = text if previous is None else f"{previous}, {text}"
    return fields


class ClientLeft(Exception):
    """The client disconnected before its request was whole."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, :class:`PayloadTooLarge` past ``limit`` bytes, or
    :class:`ClientLeft`."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"body of {int(value)} bytes is over the limit of "
                                  f"{limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] != "http.request":
            raise ClientLeft  # a part of a body is never published
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not event.get("more_body", False):
            break
    return b"".join(chunks)


async def send_error(send: Send, error: ProtocolError) -> None:
    """Answer ``error`` as every refusal is answered: its status and a JSON body."""
    head, _, body = http.error_response(error, keep_alive=False).partition(b"\r\n\r\n")
    status, fields, _length = parse_head(head + b"\r\n\r\n")
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})


@functools.lru_cache(maxsize=512)
def parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]], int | None]:
    """Status, fields (without hop-by-hop ones) and ``Content-Length`` of a head we wrote."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    fields: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name in HOP_BY_HOP:
            continue
        if name == b"content-length":
            length = int(value)
        fields.append((name, value))
    if status < 200 or status in (204, 304):
        length = 0
    return status, fields, length


# The connection and its transport ------------------------------------------------------


class AsgiConnection(HttpConnection):
    """The HTTP side of one ASGI request: what the router and the drivers answer on.

    It serves exactly one request; the ASGI server owns the connection, its
    keep-alive and its deadlines, so nothing here is swept.
    """

    __slots__ = ()
    frames_websockets = False  # the ASGI server frames (and compresses) them

    def __init__(self, server: Server, transport: AsgiTransport) -> None:
        super().__init__(server)
        self.parser = None
        self.transport = transport
        transport.connection = self

    def respond(self, data: bytes, keep_alive: bool = True) -> None:
        """The whole answer: the transport sends it and ends the response."""
        self.busy = False
        self.on_lost = None
        transport = self.transport
        if transport is None or self.closing:
            return
        self.server.stats[BYTES_HTTP] += len(data)  # as the native connection counts
        transport.write(data)
        self.closing = True
        transport.close()

    def detach(self) -> asyncio.Transport:
        """A stream (SSE, WebSocket) takes over the transport."""
        assert self.transport is not None
        self.handed_over = True
        transport, self.transport = self.transport, None
        return transport

    def abort(self) -> None:
        """Serving the request failed (a bug): ``500`` if nothing was sent, else cut it."""
        transport = self.transport
        if transport is None or self.closing:
            return
        self.on_lost = None
        self.busy = False
        self.closing = True
        assert isinstance(transport, AsgiTransport)
        if transport.sent_head:
            transport.abort()
        else:
            transport.write(http.json_response(500, INTERNAL_ANSWER, keep_alive=False))
            transport.close()

    def fail(self, error: ProtocolError) -> None:
        self.respond(http.error_response(error, keep_alive=False), keep_alive=False)

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()

    def lost(self) -> None:
        """The client went away while the request was parked (a long poll, a publish)."""
        self.closing = True
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)


class AsgiTransport(asyncio.Transport):
    """An ``asyncio.Transport`` stand-in whose bytes become ASGI HTTP response events.

    The drivers call :meth:`write` (never blocking); :meth:`serve` sends what
    was written, in order, as ``send`` takes it, and ends when the response
    is complete, the transport is closed or aborted, or the client leaves.
    """

    def __init__(self, scope: Scope, send: Send, *, head_only: bool = False) -> None:
        super().__init__()
        self._send = send
        self._scope = scope
        self._head_only = head_only
        self._chunks: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._paused = False
        self._closing = False
        self._aborted = False
        self._lost = False
        self._head = b""
        self._remaining: int | None = None
        self.sent_head = False
        #: Bytes handed to the ASGI server (a stream's ``written_bytes``, where the native
        #: listener asks the kernel what was acknowledged).
        self.bytes_sent = 0
        self._pumping: asyncio.Task[None] | None = None
        self.protocol: Any = None
        #: The HTTP connection while no stream has taken over.
        self.connection: AsgiConnection | None = None

    # what asyncio.Transport offers the drivers -------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost or not data:
            return
        self._chunks.append(bytes(data))
        self._size += len(data)
        self._wake.set()
        if not self._paused and self._size > self._high:
            self._paused = True
            if self.protocol is not None:
                self.protocol.pause_writing()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(bytes(chunk))

    def close(self) -> None:
        """Send what was written, then end the response."""
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        """End at once; what was not sent is dropped."""
        self._closing = self._aborted = True
        self._chunks.clear()
        self._size = 0
        self._wake.set()
        if self._pumping is not None:
            self._pumping.cancel()  # a send the client does not take may never return

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = DEFAULT_HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def pause_reading(self) -> None:
        """Nothing to pause: a request's body was read before it was served."""

    def resume_reading(self) -> None:
        """See :meth:`pause_reading`."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return tuple(self._scope["client"]) if self._scope.get("client") else default
        if name == "sockname":
            return tuple(self._scope["server"]) if self._scope.get("server") else default
        if name == SENT_BYTES_INFO:
            return self.bytes_sent
        return default

    # driving -------------------------------------------------------------------------

    async def serve(self, receive: Receive, conn: AsgiConnection | None) -> None:
        """Send what the drivers write until the end; watch for the client leaving."""
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(self._watch(receive))
        self._pumping = pump = loop.create_task(self._pump())
        try:
            await asyncio.wait((pump,))  # an abort cancels the pump, not this task
            if not pump.cancelled() and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]
        finally:
            for task in (watcher, pump):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._ended()

    async def _watch(self, receive: Receive) -> None:
        """Wait for the client to leave; then stop sending and tell whoever holds the socket."""
        while True:
            event = await receive()
            if self._incoming(event):
                break
        self._lost = True
        self._wake.set()

    def _incoming(self, event: MutableMapping[str, Any]) -> bool:
        """Say whether ``event`` ends the connection (for HTTP, only a disconnect does)."""
        return bool(event["type"] == "http.disconnect")

    async def _pump(self) -> None:
        while True:
            if not self._chunks:
                if self._closing or self._lost:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks.clear()
            done = await self._emit(data)
            self.bytes_sent += len(data)
            self._size = max(0, self._size - len(data)) if not self._aborted else 0
            if self._paused and self._size <= self._low:
                self._paused = False
                if self.protocol is not None and not self._lost:
                    self.protocol.resume_writing()
            if done or self._aborted:
                break
        if not self._aborted and not self._lost:
            await self._end()

    def _gather_head(self, data: bytes
                     ) -> tuple[int, list[tuple[bytes, bytes]], int | None, bytes] | None:
        """Gather the head the drivers wrote, across writes: once it is whole, its status,
        fields and ``Content-Length``, and the bytes written after it; None until then."""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return None
        head, rest = self._head[:end + 4], self._head[end + 4:]
        self._head = b""
        return (*parse_head(head), rest)

    async def _end(self) -> None:
        """The drivers closed the transport: end the response if it is still open."""
        if self.sent_head and self._remaining != 0:
            with contextlib.suppress(OSError):
                await self._send({"type": "http.response.body", "body": b"",
                                  "more_body": False})
            self._remaining = 0

    async def _emit(self, data: bytes) -> bool:
        """Send ``data`` (head bytes, then body); say whether the response is complete."""
        if not self.sent_head:
            answer = self._gather_head(data)
            if answer is None:
                return False
            status, fields, length, data = answer
            self.sent_head = True
            self._remaining = 0 if self._head_only else length
            await self._send({"type": "http.response.start", "status": status,
                              "headers": fields})
            if self._remaining == 0:
                await self._send({"type": "http.response.body", "body": b"",
                                  "more_body": False})
                return True
            if not data:
                return False
        if self._remaining is not None:
            data = data[:self._remaining]
            self._remaining -= len(data)
            await self._send({"type": "http.response.body", "body": data,
                              "more_body": self._remaining > 0})
            return self._remaining == 0
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        return False

    def _ended(self) -> None:
        """The ASGI exchange is over: tell the stream or parked request, as asyncio would."""
        self._closing = True
        self._chunks.clear()
        self._size = 0
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connection_lost(None)
        elif self.connection is not None:
            self.connection.lost()


class WebSocketTransport(AsgiTransport):
    """The transport of a WebSocket scope: frames become ``websocket.*`` events.

    The session writes the handshake answer and then server frames; commands
    from the client reach it as the masked text frames it would have read.
    """

    def __init__(self, scope: Scope, send: Send, app: AsgiApp) -> None:
        super().__init__(scope, send)
        self._app = app
        self._accepted = False
        self._closed_frame = False
        self._closing_with: dict[str, Any] | None = None
        self._frames = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # A close frame the session writes (cut off, shutdown, an error) is remembered: if
        # the client does not read what is queued before it, an abort still says why.
        if data[:1] == b"\x88" and 2 <= len(data) <= 127 and data[1] >= 2:
            code = struct.unpack_from("!H", data, 2)[0]
            self._closing_with = {"type": "websocket.close", "code": code,
                                  "reason": bytes(data[4:]).decode("utf-8", "replace")}
        super().write(data)

    async def serve(self, receive: Receive, conn: AsgiConnection | None) -> None:
        try:
            await super().serve(receive, conn)
        finally:
            if self._aborted and self._closing_with is not None and not self._closed_frame:
                self._closed_frame = True
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(ABORT_CLOSE_SECONDS):
                        await self._send(self._closing_with)

    def _incoming(self, event: MutableMapping[str, Any]) -> bool:
        kind = event["type"]
        if kind == "websocket.disconnect":
            return True
        if kind == "websocket.receive" and self.protocol is not None and not self._closing:
            text = event.get("text")
            if text is not None:
                self.protocol.data_received(client_frame(OP_TEXT, text.encode()))
            else:
                self.protocol.data_received(client_frame(0x2, event.get("bytes") or b""))
        return False

    async def _emit(self, data: bytes) -> bool:
        if not self._accepted:
            answer = self._gather_head(data)
            if answer is None:
                return False
            status, fields, _length, data = answer
            if status != 101:
                await self._refuse(status, fields, data)
                self._closed_frame = True
                return True
            self._accepted = self.sent_head = True
            await self._send({"type": "websocket.accept"})
        self._frames += data
        return await self._send_frames()

    async def _refuse(self, status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A refused handshake: the HTTP answer if the ASGI server can send one, else a close."""
        if "websocket.http.response" in self._scope.get("extensions", {}):
            await self._send({"type": "websocket.http.response.start", "status": status,
                              "headers": fields})
            await self._send({"type": "websocket.http.response.body", "body": body})
        else:
            await self._send({"type": "websocket.close", "code": 1008,
                              "reason": body.decode("utf-8", "replace")[:120]})

    async def _send_frames(self) -> bool:
        buffer = self._frames
        offset = 0
        done = False
        while not done:
            parsed = server_frame(buffer, offset)
            if parsed is None:
                break
            opcode, payload, offset = parsed
            if opcode == OP_TEXT:
                await self._send({"type": "websocket.send", "text": self._text(payload)})
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
                await self._send({"type": "websocket.close", "code": code,
                                  "reason": payload[2:].decode("utf-8", "replace")})
                self._closed_frame = done = True
            elif opcode == OP_PING and self.protocol is not None:
                # The ASGI server keeps the connection alive with pings of its own; the
                # session only needs to know the client is there: answer for it.
                self.protocol.data_received(client_frame(OP_PONG, payload))
        self._frames = buffer[offset:]
        return done

    def _text(self, payload: bytes) -> str:
        cached_payload, cached_text = self._app.last_frame
        if payload == cached_payload and cached_payload:
            return cached_text
        text = payload.decode()
        self._app.last_frame = (payload, text)
        return text

    async def _end(self) -> None:
        """Closed with no close frame sent (nothing is open, or a bug): close the WebSocket."""
        if not self._closed_frame:
            self._closed_frame = True
            with contextlib.suppress(OSError):
                await self._send({"type": "websocket.close", "code": INTERNAL_ERROR.close_code})


def server_frame(buffer: bytes, offset: int) -> tuple[int, bytes, int] | None:
    """The opcode, payload and end of the unmasked frame at ``offset``, if it is all there."""
    if len(buffer) - offset < 2:
        return None
    first, second = buffer[offset], buffer[offset + 1] & 0x7F
    start = offset + 2
    if second == 126:
        if len(buffer) - offset < 4:
            return None
        second = struct.unpack_from("!H", buffer, offset + 2)[0]
        start += 2
    elif second == 127:
        if len(buffer) - offset < 10:
            return None
        second = struct.unpack_from("!Q", buffer, offset + 2)[0]
        start += 8
    end = start + second
    if len(buffer) < end:
        return None
    return first & 0x0F, buffer[start:end], end


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final frame as a client sends it, masked with a zero key (the payload unchanged)."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + b"\0\0\0\0" + payload
