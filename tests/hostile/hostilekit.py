"""Helpers for the hostile-input tests: a server in a thread, blocking raw sockets.

Hypothesis drives synchronous test functions, so the fuzz tests run the
server in a thread with its own event loop and talk to it over plain
blocking sockets with timeouts (every read is bounded by ``BOUND``). The
thread records anything the loop reports as an unhandled error; a test
fails if there is any. Client frames are built with
:func:`tidings.testing.client_frame`; the async raw clients are in
:mod:`tidings.testing` too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tidings import Server, Settings
from tidings.testing import UNIT

#: Seconds any single answer (or the close) may take.
BOUND = 5 * UNIT

#: Close codes a server may send (RFC 6455 section 7.4, the 3000-3999 range registered
#: with IANA, which a server echoes when a client closes with one, and the 4000-4999
#: private range).
VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                               1013, 1014}) | frozenset(range(3000, 5000))


class ServerThread:
    """A tidings server on 127.0.0.1, port 0, in a thread of its own."""

    def __init__(self, **changes: Any) -> None:
        self.settings = Settings(host="127.0.0.1", port=0).replace(**changes)
        self.errors: list[dict[str, Any]] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self._stop = asyncio.Event()
        async with Server(self.settings) as server:
            self.server = server
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(BOUND):
            raise RuntimeError("the server thread did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(4 * BOUND)
        assert not self._thread.is_alive(), "the server did not shut down"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=BOUND)
        sock.settimeout(BOUND)
        return sock

    def check_healthy(self) -> None:
        """A good request on a fresh connection is answered; no error was logged."""
        with self.connect() as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = read_all(sock)
        responses = parse_responses(data)
        assert responses and responses[0].status == 200, data[:300]
        assert not self.errors, self.errors


def read_all(sock: socket.socket) -> bytes:
    """Read until the server closes (a reset counts as a close); at most ``BOUND`` seconds."""
    chunks: list[bytes] = []
    with contextlib.suppress(ConnectionResetError):
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                got = b"".join(chunks)[:300]
                raise AssertionError(f"no close within {BOUND} s; got {got!r}") from None
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes, *, first_only: bool = False) -> list[Response]:
    """The HTTP/1.1 responses in ``data``; an answer without a length ends the list.

    ``first_only``: parse only the first head (the answer to ``HEAD`` has a length
    but no body, and which answer is to a ``HEAD`` is not known here).
    """
    responses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"not an HTTP response: {data[:300]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 "), status_line
        status = int(status_line.split()[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 100:
            data = rest
            continue
        if first_only:
            responses.append(Response(status, headers, b""))
            break
        if "content-length" not in headers:  # an event stream or an upgrade: the rest is its
            responses.append(Response(status, headers, rest))
            break
        length = int(headers["content-length"])
        assert len(rest) >= length, "truncated body"
        responses.append(Response(status, headers, rest[:length]))
        data = rest[length:]
    return responses


def assert_json_error(response: Response) -> None:
    """An error answer is JSON ``{"error": code, "message": text}``."""
    assert response.headers.get("content-type") == "application/json", response
    body = json.loads(response.body)
    assert isinstance(body["error"], str) and isinstance(body["message"], str), body


# WebSocket --------------------------------------------------------------------


def ws_handshake(sock: socket.socket, path: str = "/subscribe") -> bytes:
    """Upgrade ``sock``; return bytes received after the ``101`` head."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed during the handshake: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return rest


@dataclass
class Frame:
    opcode: int
    payload: bytes


def parse_frames(data: bytes) -> Iterator[Frame]:
    """Server frames (unmasked, never fragmented by tidings) from ``data``; all must be whole."""
    while data:
        assert len(data) >= 2, data
        first, second = data[0], data[1]
        assert first & 0x80 and not first & 0x70, f"bad first byte {first:#x}"
        assert not second & 0x80, "server frames are not masked"
        length, offset = second & 0x7F, 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        assert len(data) >= offset + length, "truncated frame"
        yield Frame(first & 0x0F, data[offset:offset + length])
        data = data[offset + length:]


def check_close(frame: Frame) -> int:
    """A close frame's code, which must be one a server may send."""
    assert len(frame.payload) >= 2, frame
    (code,) = struct.unpack("!H", frame.payload[:2])
    assert code in VALID_CLOSE_CODES, code
    frame.payload[2:].decode("utf-8")
    return int(code)


class WsReader:
    """Reads whole server frames from a blocking socket, each within ``BOUND``."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buffer = buffered

    def next(self) -> Frame | None:
        """The next frame, or ``None`` when the server closed the TCP connection."""
        while True:
            frame = self._whole()
            if frame is not None:
                return frame
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                assert not self.buffer, f"closed inside a frame: {self.buffer[:100]!r}"
                return None
            self.buffer += chunk

    def _whole(self) -> Frame | None:
        data = self.buffer
        if len(data) < 2:
            return None
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            if len(data) < 10:
                return None
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        if len(data) < offset + length:
            return None
        (frame,) = parse_frames(data[:offset + length])
        self.buffer = data[offset + length:]
        return frame
