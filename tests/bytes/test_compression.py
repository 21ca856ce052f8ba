"""WebSocket compression on a real server: negotiated with clients that offer it, encoded once.

Clients: the ``websockets`` package (it offers permessage-deflate by default)
and a raw socket that offers it by hand, to see the frames' bytes.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import PerMessageDeflate

from conftest import UNIT, ServerFactory
from tidings import Server
from tidings.testing import (
    http_client,
    open_raw,
    publish,
    read_response,
    recv_json,
    request_head,
    ws_url,
)
from tidings.wire import deflate

PRICES = {f"SYM{i}": {"bid": 187.21 + i, "ask": 187.25 + i, "last": 187.23} for i in range(15)}


async def test_websockets_negotiates_and_reads_compressed_messages(server: Server) -> None:
    async with connect(ws_url(server, "/channels/prices")) as ws, http_client(server) as http:
        (extension,) = ws.protocol.extensions
        assert isinstance(extension, PerMessageDeflate)
        assert extension.remote_no_context_takeover and extension.local_no_context_takeover
        assert (await recv_json(ws))["type"] == "subscribed"
        big = await publish(http, "prices", PRICES)
        small = await publish(http, "prices", 1)
        first, second = await recv_json(ws), await recv_json(ws)
        assert (first["id"], first["data"]) == (big, json.loads(json.dumps(PRICES)))
        assert (second["id"], second["data"]) == (small, 1)
        # its commands arrive compressed too, and are understood
        await ws.send(json.dumps({"type": "publish", "req": 7, "channel": "prices",
                                  "data": PRICES}))
        ack = await recv_json(ws)
        while ack["type"] != "ack":
            ack = await recv_json(ws)
        assert ack["req"] == 7


async def test_each_message_is_compressed_once_for_every_reader(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    compress = deflate.compress

    def counting(payload: bytes, window_bits: int = 15) -> bytes:
        calls.append(len(payload))
        return compress(payload, window_bits)

    monkeypatch.setattr(deflate, "compress", counting)
    readers = [connect(ws_url(server, "/channels/prices")) for _ in range(5)]
    async with http_client(server) as http:
        opened = [await reader.__aenter__() for reader in readers]
        try:
            for ws in opened:
                assert (await recv_json(ws))["type"] == "subscribed"
            ids = [await publish(http, "prices", {**PRICES, "n": n}) for n in range(3)]
            for ws in opened:
                assert [(await recv_json(ws))["id"] for _ in ids] == ids
        finally:
            for reader in readers:
                await reader.__aexit__(None, None, None)
    assert len(calls) == 3  # once per message, not once per reader


async def raw_upgrade(server: Server, offer: str | None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
    reader, writer = await open_raw(server)
    headers = ["Upgrade: websocket", "Connection: Upgrade",
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if offer is not None:
        headers.append(f"Sec-WebSocket-Extensions: {offer}")
    writer.write(request_head(server, "GET", "/channels/prices", *headers))
    answer = await read_response(reader)
    assert answer.status == 101
    return reader, writer, {name.lower(): value for name, value in answer.headers.items()}


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    async with asyncio.timeout(5 * UNIT):
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        return first, await reader.readexactly(length)


def inflated(payload: bytes, window_bits: int = 15) -> Any:
    return json.loads(zlib.decompressobj(-window_bits).decompress(payload + b"\x00\x00\xff\xff"))


@pytest.mark.parametrize(("offer", "window_bits"), [
    ("permessage-deflate; client_max_window_bits", 15),
    ("permessage-deflate; server_max_window_bits=10", 10),
])
async def test_frames_over_the_threshold_are_compressed(make_server: ServerFactory, offer: str,
                                                        window_bits: int) -> None:
    server = await make_server(websocket_compression_threshold=200)
    reader, writer, headers = await raw_upgrade(server, offer)
    try:
        expected = deflate.negotiate(offer)
        assert expected is not None
        assert headers["sec-websocket-extensions"] == expected.header
        first, payload = await read_frame(reader)
        assert first == 0x81 and json.loads(payload)["type"] == "subscribed"  # never compressed
        async with http_client(server) as http:
            big = await publish(http, "prices", PRICES)
            small = await publish(http, "prices", {"p": 1})
        first, payload = await read_frame(reader)
        assert first == 0xC1  # FIN, RSV1: compressed
        assert inflated(payload, window_bits)["id"] == big
        assert len(payload) < len(json.dumps(PRICES)) / 3
        first, payload = await read_frame(reader)
        assert first == 0x81 and json.loads(payload)["id"] == small  # under the threshold
    finally:
        writer.close()


@pytest.mark.parametrize(("changes", "offer"), [
    ({"websocket_compression": False}, "permessage-deflate; client_max_window_bits"),
    ({}, "permessage-deflate; server_max_window_bits=8"),
    ({}, None),
])
async def test_no_compression_when_off_declined_or_not_offered(
        make_server: ServerFactory, changes: dict[str, Any], offer: str | None) -> None:
    server = await make_server(websocket_compression_threshold=0, **changes)
    reader, writer, headers = await raw_upgrade(server, offer)
    try:
        assert "sec-websocket-extensions" not in headers
        await read_frame(reader)
        async with http_client(server) as http:
            message_id = await publish(http, "prices", PRICES)
        first, payload = await read_frame(reader)
        assert first == 0x81 and json.loads(payload)["id"] == message_id
    finally:
        writer.close()
