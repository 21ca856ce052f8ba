"""Raw sockets, for what well-behaved clients never do: HTTP and WebSocket written by hand."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import struct
from typing import NamedTuple
from urllib.parse import urlsplit

from tidings.testing._checks import (
    WAIT,
    ServerAddress,
    fail_after,
    host_and_port,
    require,
    require_equal,
    url_of,
)


async def open_raw(
    server: ServerAddress, *, receive_buffer: int | None = None, limit: int = 1 << 16,
    within: float | None = WAIT,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain (or TLS, for ``https``) connection to ``server``; close it with :func:`close_raw`.

    ``receive_buffer`` sets a small ``SO_RCVBUF``; the reader stops taking
    bytes from the kernel past about ``2 * limit`` unread bytes, so a client
    that never reads soon fills its window.
    """
    host, port, tls = host_and_port(server)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        async with fail_after(within, f"connecting to {host}:{port}"):
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(host, port, family=sock.family,
                                           type=socket.SOCK_STREAM)
            await loop.sock_connect(sock, infos[0][4])
            context = ssl.create_default_context() if tls else None
            return await asyncio.open_connection(
                sock=sock, ssl=context, server_hostname=host if tls else None, limit=limit)
    except BaseException:
        sock.close()
        raise


async def close_raw(writer: asyncio.StreamWriter) -> None:
    """Close a raw connection; a peer that is gone already is no error."""
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


def request_head(server: ServerAddress, method: str, target: str, *headers: str) -> bytes:
    """An HTTP/1.1 request head for ``target``: a ``Host`` line, then ``"Name: value"`` headers.

    ``target`` is below the server URL's path, as with the other helpers: for
    ``http://host/rt`` (a mounted server), ``/healthz`` asks for ``/rt/healthz``.
    """
    host, port, _ = host_and_port(server)
    if target.startswith("/"):
        target = urlsplit(url_of(server)).path.rstrip("/") + target
    host = f"[{host}]" if ":" in host else host
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


class RawResponse(NamedTuple):
    """An HTTP answer read by hand; ``headers`` have lower-case names."""

    status: int
    headers: dict[str, str]
    body: bytes


async def read_response(reader: asyncio.StreamReader,
                        within: float | None = WAIT) -> RawResponse:
    """Read one HTTP answer: its head, and a body of its ``Content-Length`` (none without)."""
    async with fail_after(within, "waiting for an HTTP answer"):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        require(len(parts) >= 2 and parts[0].startswith("HTTP/1.") and parts[1].isdigit(),
                f"not an HTTP answer: {status_line!r}")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
    return RawResponse(int(parts[1]), headers, body)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client WebSocket frame: masked, as RFC 6455 requires, of any length."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """A WebSocket client written by hand: it never answers pings or reads by itself.

    Open it with :meth:`connect`; :attr:`reader` and :attr:`writer` are the
    raw connection, for tests that need them.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: ServerAddress, path: str, *,
                      receive_buffer: int | None = None, limit: int = 1 << 16,
                      within: float | None = WAIT) -> RawWebSocket:
        """Open a connection (see :func:`open_raw`) and upgrade it on ``path``; ``101`` or fail."""
        reader, writer = await open_raw(server, receive_buffer=receive_buffer, limit=limit,
                                        within=within)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(request_head(server, "GET", path, "Upgrade: websocket",
                                      "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                                      "Sec-WebSocket-Version: 13"))
            answer = await read_response(reader, within)
            require_equal(answer.status, 101, f"the WebSocket handshake on {path}")
        except BaseException:
            await close_raw(writer)
            raise
        return cls(reader, writer)

    async def read_frame(self, within: float | None = WAIT) -> tuple[int, bytes]:
        """The next server frame as ``(opcode, payload)``; server frames are never masked."""
        async with fail_after(within, "waiting for a WebSocket frame"):
            first, second = await self.reader.readexactly(2)
            require(not second & 0x80, "a server WebSocket frame is masked")
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """Write one client frame (see :func:`client_frame`)."""
        self.writer.write(client_frame(opcode, payload, fin=fin))

    async def aclose(self) -> None:
        """Drop the connection, without a closing handshake."""
        await close_raw(self.writer)


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The whole server WebSocket frames at the start of ``data`` (unmasked, as RFC 6455
    requires of a server) as ``(opcode, payload)``, and how many bytes they took: what
    follows is a frame not yet received in full."""
    frames: list[tuple[int, bytes]] = []
    position = 0
    while position + 2 <= len(data):
        length, start = data[position + 1] & 0x7F, position + 2
        if length == 126:
            if start + 2 > len(data):
                break
            (length,) = struct.unpack_from("!H", data, start)
            start += 2
        elif length == 127:
            if start + 8 > len(data):
                break
            (length,) = struct.unpack_from("!Q", data, start)
            start += 8
        if start + length > len(data):
            break
        frames.append((data[position] & 0x0F, data[start:start + length]))
        position = start + length
    return frames, position
