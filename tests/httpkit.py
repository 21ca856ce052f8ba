"""Helpers for integration tests: clients we did not write, driven a little.

* publishing with ``httpx``;
* an SSE event parser over an ``httpx`` streaming response (the parsing rules
  of the HTML standard, including comments, so heartbeats can be awaited);
* WebSocket helpers over ``websockets.asyncio.client``;
* a raw WebSocket client over an asyncio stream, for what well-behaved
  clients never do (not answering pings).

Every wait is bounded by a multiple of ``UNIT`` seconds (``TIDINGS_TEST_UNIT``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tidings.conformance._wire import SseBlock as SseEvent
from tidings.conformance._wire import SseStream

UNIT = float(os.environ.get("TIDINGS_TEST_UNIT", "1.0"))

#: Values that must reach subscribers unchanged on every technique.
SAMPLE_VALUES: list[Any] = [
    {"nested": {"list": [1, 2.5, -3e-7, True, False, None], "empty": {}, "deep": [[{"a": []}]]}},
    "line one\nline two\r\nline three\rend",
    "unicode: héllo wörld ✓ 日本語 😀 \u2028 \u0000",
    12345678901234567890,
    -0.125,
    [],
    None,
    "data: not an sse field\n\nid: nor this",
]


# HTTP ------------------------------------------------------------------------


def http_client(server: Any) -> httpx.AsyncClient:
    """An httpx client for ``server``; waits are bounded by the tests, not by httpx."""
    return httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(10 * UNIT))


async def publish(client: httpx.AsyncClient, channel: str, value: Any) -> str:
    """Publish ``value``; check the ``201`` answer and return the message id."""
    # Not ``json=value``: httpx sends no body at all for ``json=None``.
    response = await client.post(f"/channels/{channel}", content=json.dumps(value),
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["channel"] == channel
    assert isinstance(body["time"], int)
    return str(body["id"])


async def publish_many(client: httpx.AsyncClient, channel: str, values: Sequence[Any]) -> list[str]:
    """Publish ``values`` in order; return their ids."""
    return [await publish(client, channel, value) for value in values]


async def poll(client: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    """One regular poll that must answer ``200``; return its JSON body."""
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def until(condition: Callable[[], object], within: float = 5 * UNIT) -> None:
    """Wait until ``condition()`` (about server state in this process) is true."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


def seq_of(message_id: str) -> int:
    return int(message_id.rsplit("-", 1)[1])


def epoch_of(message_id: str) -> str:
    return message_id.rsplit("-", 1)[0]


# SSE -------------------------------------------------------------------------


class SseReader:
    """Parses the event stream of an open ``httpx`` streaming response.

    The parsing is the conformance suite's (:class:`tidings.conformance._wire.SseStream`,
    by the rules of the HTML standard); this adds timeouts for tests.
    """

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._stream = SseStream(response.aiter_bytes())

    @property
    def last_id(self) -> str | None:
        """The id an EventSource would send as ``Last-Event-ID`` on reconnecting."""
        return self._stream.last_id

    async def next_block(self, within: float = 5 * UNIT) -> SseEvent:
        """The next non-empty block (an event, or comments only); raise at end of stream."""
        async with asyncio.timeout(within):
            return await self._stream.next_block()

    async def next_event(self, within: float = 5 * UNIT) -> SseEvent:
        """The next block that carries an event (skipping heartbeat comments)."""
        async with asyncio.timeout(within):
            return await self._stream.next_event()

    async def messages(self, count: int, within: float = 5 * UNIT) -> list[SseEvent]:
        """The next ``count`` message events; fail on any other event."""
        events = []
        async with asyncio.timeout(within):
            while len(events) < count:
                event = await self.next_event(within)
                assert event.is_message, event
                events.append(event)
        return events

    async def message_objects(self, count: int,
                              within: float = 5 * UNIT) -> list[dict[str, Any]]:
        """The next ``count`` messages as JSON objects, each checked against its ``id:``."""
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(within):
            while len(found) < count:
                event = await self._stream.next_event()
                assert event.is_message, event
                message = dict(event.json())
                if event.id is None or "=" not in event.id:  # not a multi-channel cursor
                    assert event.id == message["id"], event
                found.append(message)
        return found


@contextlib.asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient,
    path: str,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[SseReader]:
    """Open an event stream and check its head; closing it closes the connection."""
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    async with client.stream("GET", path, params=params, headers=all_headers,
                             timeout=httpx.Timeout(10 * UNIT, read=None)) as response:
        assert response.status_code == 200, await response.aread()
        yield SseReader(response)


# WebSocket ---------------------------------------------------------------------


def ws_url(server: Any, path: str) -> str:
    return "ws" + server.url.removeprefix("http") + path


async def recv_json(ws: ClientConnection, within: float = 5 * UNIT) -> dict[str, Any]:
    async with asyncio.timeout(within):
        frame = await ws.recv()
    assert isinstance(frame, str), frame
    return dict(json.loads(frame))


async def recv_messages(ws: ClientConnection, count: int,
                        within: float = 5 * UNIT) -> list[dict[str, Any]]:
    """The next ``count`` frames, which must all be ``"type": "message"``."""
    frames = []
    async with asyncio.timeout(within):
        while len(frames) < count:
            frame = await recv_json(ws, within)
            assert frame["type"] == "message", frame
            frames.append(frame)
    return frames


async def command(ws: ClientConnection, others: list[dict[str, Any]] | None = None,
                  **fields: Any) -> dict[str, Any]:
    """Send a command and return the frame that answers its ``req``.

    Frames that arrive before the answer are appended to ``others``; without
    that list, any such frame fails the test.
    """
    await ws.send(json.dumps(fields))
    async with asyncio.timeout(5 * UNIT):
        while True:
            frame = await recv_json(ws)
            if frame.get("type") in ("ack", "error") and frame.get("req") == fields.get("req"):
                return frame
            assert others is not None, f"unexpected frame before the reply: {frame}"
            others.append(frame)


# A raw WebSocket client ----------------------------------------------------------


class RawWebSocket:
    """A WebSocket client written by hand: it never answers pings by itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: Any, path: str) -> RawWebSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        async with asyncio.timeout(5 * UNIT):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def read_frame(self, within: float = 5 * UNIT) -> tuple[int, bytes]:
        """The next frame from the server: ``(opcode, payload)``; server frames are unmasked."""
        async with asyncio.timeout(within):
            first, second = await self.reader.readexactly(2)
            assert not second & 0x80, "server frames must not be masked"
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
