"""Bad input: every malformed request gets a JSON error, and nobody else notices.

Well-formed requests are sent with ``httpx``; malformed ones are written by
hand on raw asyncio streams. After each bad request, :func:`still_serving`
checks that a fresh connection is answered and that a WebSocket subscriber
connected *before* the bad input receives a message published after it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import UNIT, ServerFactory, until
from tidings import Server

# Helpers ---------------------------------------------------------------------


@dataclass
class RawResponse:
    status_code: int
    reason: str
    headers: dict[str, str]  # lower-cased names
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


async def open_raw(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One HTTP/1.1 response with a ``Content-Length`` body (or none)."""
    async with asyncio.timeout(5 * UNIT):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
    return RawResponse(int(status), reason, headers, body)


async def assert_closed(reader: asyncio.StreamReader, within: float = 5 * UNIT) -> None:
    """The server closes the connection: EOF (or a reset) with nothing more sent."""
    async with asyncio.timeout(within):
        try:
            rest = await reader.read()
        except ConnectionResetError:
            rest = b""
    assert rest == b""


async def raw_exchange(server: Server, data: bytes) -> RawResponse:
    """Send ``data`` on a fresh connection; read one response; expect the connection closed."""
    reader, writer = await open_raw(server)
    try:
        writer.write(data)
        response = await read_response(reader)
        await assert_closed(reader)
        return response
    finally:
        writer.close()


def assert_error(response: RawResponse | httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A JSON error answer: ``{"error": code, "message": text}``."""
    assert response.status_code == status, (response.status_code, response.content)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and len(body["message"]) > 5
    return dict(body)


def ws_url(server: Server, path: str) -> str:
    return "ws" + server.url.removeprefix("http") + path


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5 * UNIT):
        return dict(json.loads(await ws.recv()))


async def recv_close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes; return its close code."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(5 * UNIT):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None, "the server closed without a close frame"
    return info.value.rcvd.code


_witness_count = 0


@contextlib.asynccontextmanager
async def still_serving(server: Server) -> AsyncIterator[None]:
    """Around bad input: a subscriber connected before it still receives, a fresh client works."""
    global _witness_count
    _witness_count += 1
    marker = {"after_bad_input": _witness_count}
    async with connect(ws_url(server, "/channels/witness")) as ws:
        subscribed = await recv_json(ws)
        assert subscribed["type"] == "subscribed"
        yield
        async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
            poll = await client.get("/channels/witness", params={"since": subscribed["next"]})
            assert poll.status_code == 200, poll.text
            assert poll.json()["messages"] == []
            published = await client.post("/channels/witness", json=marker)
            assert published.status_code == 201, published.text
        message = await recv_json(ws)
        assert message["type"] == "message"
        assert message["data"] == marker
        assert message["id"] == published.json()["id"]


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        yield client


async def publish(client: httpx.AsyncClient, channel: str, value: Any) -> str:
    response = await client.post(f"/channels/{channel}", json=value)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# Bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"NaN",
        b'{"price": NaN}',
        b"[Infinity]",
        b"-Infinity",
        b'{"a": 1} trailing',
        b"\xff\xfe{}",
        b"[" * 30_000 + b"]" * 30_000,
    ],
    ids=["broken", "empty", "nan", "nan-inside", "infinity", "minus-infinity", "trailing",
         "not-utf8", "deep"],
)
async def test_invalid_json_body_is_400(server: Server, client: httpx.AsyncClient,
                                        body: bytes) -> None:
    async with still_serving(server):
        response = await client.post("/channels/a", content=body,
                                     headers={"Content-Type": "application/json"})
        assert_error(response, 400, "invalid_json")
        # Nothing reached the log.
        poll = await client.get("/channels/a", params={"since": "0"})
        assert poll.json()["messages"] == []


async def test_body_over_limit_with_content_length_is_413(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=1024)
    async with still_serving(server):
        # Refused on the headers alone: the body is never sent.
        response = await raw_exchange(
            server,
            b"POST /channels/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n",
        )
        assert_error(response, 413, "payload_too_large")
        assert response.headers["connection"] == "close"
        # A real client sending the whole body gets the same answer.
        async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
            value = "x" * 1100
            response2 = await client.post("/channels/a", json=value)
            assert_error(response2, 413, "payload_too_large")
            exact = await client.post("/channels/a", content=b'"' + b"y" * 1022 + b'"')
            assert exact.status_code == 201, exact.text
            poll = await client.get("/channels/a", params={"since": "0"})
            assert [m["data"] for m in poll.json()["messages"]] == ["y" * 1022]


async def test_body_over_limit_chunked_is_413(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=1024)
    chunk = b'"' + b"z" * 598
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                    for part in (chunk, b"z" * 600, b'"')) + b"0\r\n\r\n"
    async with still_serving(server):
        response = await raw_exchange(
            server,
            b"POST /channels/a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body,
        )
        assert_error(response, 413, "payload_too_large")
        # A chunked body under the limit is accepted.
        small = b'"' + b"s" * 500 + b'"'
        ok = await raw_exchange(
            server,
            b"POST /channels/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(small), small),
        )
        assert ok.status_code == 201, ok.content


# URLs and query parameters ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/channels/" + "a" * 129,
        "/channels/a!b",
        "/channels/a,b",
        "/channels/a=b",
        "/channels/a%2Fb",
        "/channels/a%20b",
        "/channels/",
        "/channels/%C3%A9",
        "/subscribe?channel=ok&channel=bad!",
        "/subscribe?channel=",
    ],
)
async def test_invalid_channel_is_400(server: Server, client: httpx.AsyncClient,
                                      path: str) -> None:
    async with still_serving(server):
        assert_error(await client.get(path), 400, "invalid_channel")
        if path.startswith("/channels/"):
            assert_error(await client.post(path, json=1), 400, "invalid_channel")
            assert_error(await client.get(path, headers={"Accept": "text/event-stream"}),
                         400, "invalid_channel")


async def test_longest_channel_name_is_accepted(client: httpx.AsyncClient) -> None:
    name = "a" * 128
    response = await client.post(f"/channels/{name}", json=1)
    assert response.status_code == 201
    assert response.json()["channel"] == name


@pytest.mark.parametrize(
    "since",
    ["nope", "abcdefgh", "abcdefgh-", "abcdefgh-01", "ABCDEFGH-1", "abcdefg-1", "abcdefgh--1",
     "-1", "a=", "=abcdefgh-1", "a=nope", "a=abcdefgh-1,", "x" * 8000],
)
async def test_malformed_cursor_is_400(server: Server, client: httpx.AsyncClient,
                                       since: str) -> None:
    async with still_serving(server):
        for headers in ({}, {"Accept": "text/event-stream"}, {"Prefer": "wait=5"}):
            response = await client.get("/channels/a", params={"since": since}, headers=headers)
            assert_error(response, 400, "invalid_cursor")


async def test_malformed_last_event_id_is_400(server: Server, client: httpx.AsyncClient) -> None:
    async with still_serving(server):
        response = await client.get("/channels/a", headers={
            "Accept": "text/event-stream", "Last-Event-ID": "garbage"})
        assert_error(response, 400, "invalid_cursor")


async def test_empty_since_is_400(server: Server, client: httpx.AsyncClient) -> None:
    async with still_serving(server):
        assert_error(await client.get("/channels/a?since="), 400, "invalid_cursor")
        assert_error(await client.get("/subscribe?channel=a&since="), 400, "invalid_cursor")


async def test_cursor_ahead_of_the_log_is_400(server: Server, client: httpx.AsyncClient) -> None:
    first = await publish(client, "ahead", 1)
    epoch, _, seq = first.rpartition("-")
    ahead = f"{epoch}-{int(seq) + 5}"
    async with still_serving(server):
        for headers in ({}, {"Accept": "text/event-stream"}, {"Prefer": "wait=5"}):
            response = await client.get("/channels/ahead", params={"since": ahead},
                                        headers=headers)
            assert_error(response, 400, "invalid_cursor")
        for headers in ({}, {"Accept": "text/event-stream"}):
            response = await client.get("/subscribe", params={
                "channel": ["ahead", "b"], "since": f"ahead={ahead}"}, headers=headers)
            assert_error(response, 400, "invalid_cursor")
        # On a WebSocket URL: refused before the upgrade.
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(server, f"/channels/ahead?since={ahead}")):
                pass
        assert info.value.response.status_code == 400
        assert json.loads(info.value.response.body)["error"] == "invalid_cursor"
        # As a command on a live WebSocket: an error reply, and the socket stays open.
        async with connect(ws_url(server, "/subscribe")) as ws:
            await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": "ahead",
                                      "since": ahead}))
            reply = await recv_json(ws)
            assert (reply["type"], reply["req"], reply["error"]) == ("error", 1, "invalid_cursor")
            await ws.send(json.dumps({"type": "subscribe", "req": 2, "channel": "ahead",
                                      "since": first}))
            assert await recv_json(ws) == {"type": "ack", "req": 2, "channel": "ahead",
                                           "next": first, "client": ANY}
    # The last real id is fine.
    response = await client.get("/channels/ahead", params={"since": first})
    assert response.status_code == 200
    assert response.json() == {"messages": [], "next": first}


async def test_message_id_on_several_channels_is_400(client: httpx.AsyncClient) -> None:
    first = await publish(client, "m1", 1)
    response = await client.get("/subscribe", params={"channel": ["m1", "m2"], "since": first})
    assert_error(response, 400, "invalid_cursor")


@pytest.mark.parametrize("wait", ["abc", "-1", "inf", "nan", "", "1e999", "0x10"])
async def test_bad_wait_is_400(server: Server, client: httpx.AsyncClient, wait: str) -> None:
    async with still_serving(server):
        assert_error(await client.get(f"/channels/a?wait={wait}"), 400, "invalid_wait")
        assert_error(await client.get("/channels/a", headers={"Prefer": f"wait={wait}"}),
                     400, "invalid_wait")
        assert_error(await client.get(f"/subscribe?channel=a&wait={wait}"), 400, "invalid_wait")


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1001", "", "1.5", "99999999999999999999"])
async def test_bad_limit_is_400(server: Server, client: httpx.AsyncClient, limit: str) -> None:
    async with still_serving(server):
        assert_error(await client.get(f"/channels/a?limit={limit}"), 400, "invalid_limit")
        assert_error(await client.get(f"/subscribe?channel=a&limit={limit}"),
                     400, "invalid_limit")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/channels/x", "GET, POST, OPTIONS"),
        ("DELETE", "/channels/x", "GET, POST, OPTIONS"),
        ("PATCH", "/channels/x", "GET, POST, OPTIONS"),
        ("POST", "/subscribe?channel=x", "GET, OPTIONS"),
        ("DELETE", "/subscribe", "GET, OPTIONS"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
async def test_method_not_allowed_is_405_with_allow(server: Server, client: httpx.AsyncClient,
                                                    method: str, path: str, allow: str) -> None:
    async with still_serving(server):
        response = await client.request(method, path, json=1)
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/", "/nope", "/channels", "/channel/a", "/subscribe/a",
                                  "/healthz/x", "/%41%42"])
async def test_unknown_url_is_404(server: Server, client: httpx.AsyncClient, path: str) -> None:
    async with still_serving(server):
        assert_error(await client.get(path), 404, "not_found")


async def test_subscribe_without_channel_is_400(server: Server,
                                                client: httpx.AsyncClient) -> None:
    async with still_serving(server):
        assert_error(await client.get("/subscribe"), 400, "no_channel")
        assert_error(await client.get("/subscribe?other=a"), 400, "no_channel")
        assert_error(await client.get("/subscribe", headers={"Accept": "text/event-stream"}),
                     400, "no_channel")


async def test_too_many_channels_is_400(make_server: ServerFactory) -> None:
    server = await make_server(max_channels_per_subscription=2)
    async with (still_serving(server),
                httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client):
        for headers in ({}, {"Accept": "text/event-stream"}, {"Prefer": "wait=5"}):
            response = await client.get("/subscribe", params={"channel": ["a", "b", "c"]},
                                        headers=headers)
            assert_error(response, 400, "too_many_channels")
        # Two distinct channels are fine, even when named twice.
        response = await client.get("/subscribe", params={"channel": ["a", "b", "a"]})
        assert response.status_code == 200, response.text
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(server, "/subscribe?channel=a&channel=b&channel=c")):
                pass
        assert info.value.response.status_code == 400
        assert json.loads(info.value.response.body)["error"] == "too_many_channels"


async def test_bad_percent_encoding_is_400(server: Server) -> None:
    async with still_serving(server):
        for target in (b"/channels/a%ff", b"/channels/a?since=%ff", b"/channels/%zz"):
            response = await raw_exchange(
                server, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
            assert response.status_code == 400, (target, response.content)
            assert set(response.json()) == {"error", "message"}


# Request framing --------------------------------------------------------------


async def test_request_line_too_long_is_400(server: Server) -> None:
    limit = server.settings.max_url_length
    async with still_serving(server):
        response = await raw_exchange(
            server, b"GET /channels/a?x=" + b"y" * limit + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert_error(response, 400, "request_line_too_long")
        # Even when the line never ends.
        response = await raw_exchange(server, b"GET /" + b"y" * (limit + 10))
        assert_error(response, 400, "request_line_too_long")


async def test_headers_too_large_is_431(server: Server) -> None:
    big = b"X-Big: " + b"v" * server.settings.max_header_size + b"\r\n"
    async with still_serving(server):
        response = await raw_exchange(server, b"GET /channels/a HTTP/1.1\r\nHost: x\r\n" + big
                                      + b"\r\n")
        assert_error(response, 431, "headers_too_large")
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(server.settings.max_headers + 1))
        response = await raw_exchange(server, b"GET /channels/a HTTP/1.1\r\n" + many + b"\r\n")
        assert_error(response, 431, "headers_too_large")
    # Exactly max_headers fields is fine.
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(server.settings.max_headers - 1))
    response = await raw_exchange(
        server, b"GET /channels/a HTTP/1.1\r\nConnection: close\r\n" + fields + b"\r\n")
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32) + b"\r\n\r\n",
        b"HELLO WORLD\r\n\r\n",
        b"GET /channels/a HTTP/9.9\r\n\r\n",
        b"GET /channels/a HTTP/1.1\r\nNo-Colon\r\n\r\n",
        b"GET /channels/a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /channels/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\r\n\r\n\x00\x00\x00\x00",
    ],
    ids=["tls", "words", "version", "no-colon", "two-lengths", "bad-chunk", "nul"],
)
async def test_garbage_is_400_and_closed(server: Server, garbage: bytes) -> None:
    async with still_serving(server):
        response = await raw_exchange(server, garbage)
        assert_error(response, 400, "bad_request")
        assert response.headers["connection"] == "close"


async def test_silent_client_is_closed_after_header_timeout(make_server: ServerFactory) -> None:
    server = await make_server(header_timeout=0.3)
    async with still_serving(server):
        reader, writer = await open_raw(server)
        try:
            # Closed within the timeout plus the sweep's tick, without a word.
            await assert_closed(reader, within=0.3 + 3 * UNIT)
        finally:
            writer.close()


async def test_partial_request_then_silence_is_408(make_server: ServerFactory) -> None:
    server = await make_server(header_timeout=0.3)
    async with still_serving(server):
        for partial in (b"GET /channels/a HTTP/1.1\r\nHost: x\r\n",
                        b"GET /channels/a?since=0",
                        b"POST /channels/a HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\":"):
            reader, writer = await open_raw(server)
            try:
                writer.write(partial)
                response = await read_response(reader)
                assert_error(response, 408, "request_timeout")
                await assert_closed(reader)
            finally:
                writer.close()


async def test_a_request_begun_on_a_kept_alive_connection_has_the_header_timeout(
        make_server: ServerFactory) -> None:
    """A request that stalls after another on the same connection gets its ``408`` after
    the header timeout, not after the (longer) keep-alive timeout armed before it."""
    server = await make_server(header_timeout=0.3, keep_alive_timeout=600.0)
    reader, writer = await open_raw(server)
    try:
        # (a long poll's wait: the sweep passes its header deadline meanwhile, and its
        # answer arms the keep-alive, filed ten minutes ahead)
        writer.write(b"GET /channels/a?since=0&wait=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).status_code == 200
        writer.write(b"GET /channels/a HTTP/1.1\r\nHost: x\r\n")
        assert_error(await read_response(reader), 408, "request_timeout")
    finally:
        writer.close()


async def test_idle_keep_alive_connection_is_closed(make_server: ServerFactory) -> None:
    server = await make_server(keep_alive_timeout=0.3)
    reader, writer = await open_raw(server)
    try:
        writer.write(b"GET /channels/a HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await read_response(reader)
        assert response.status_code == 200
        assert "connection" not in response.headers
        # A second request on the same connection works while it is fresh.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader)).status_code == 200
        await assert_closed(reader, within=0.3 + 3 * UNIT)
    finally:
        writer.close()


async def test_expect_100_continue(server: Server, client: httpx.AsyncClient) -> None:
    reader, writer = await open_raw(server)
    try:
        writer.write(b"POST /channels/cont HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n")
        async with asyncio.timeout(5 * UNIT):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b'{"a":1}')
        response = await read_response(reader)
        assert response.status_code == 201, response.content
        created = response.json()
    finally:
        writer.close()
    poll = await client.get("/channels/cont", params={"since": "0"})
    assert [(m["id"], m["data"]) for m in poll.json()["messages"]] == [(created["id"], {"a": 1})]


async def test_expect_100_continue_is_answered_for_content_only(server: Server) -> None:
    """A chunked body is content: ``100`` first. A ``GET`` has none (RFC 9110, 10.1.1):
    straight to its answer, whichever path answers it (server/repeat.py)."""
    reader, writer = await open_raw(server)
    try:
        writer.write(b"POST /channels/go HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                     b"\r\nExpect: 100-continue\r\n\r\n")
        async with asyncio.timeout(5 * UNIT):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"7\r\n{\"a\":1}\r\n0\r\n\r\n")
        assert (await read_response(reader)).status_code == 201
        for _ in range(2):
            writer.write(b"GET /channels/go?since=0 HTTP/1.1\r\nHost: x\r\n"
                         b"Expect: 100-continue\r\n\r\n")
            response = await read_response(reader)
            assert response.status_code == 200 and len(response.json()["messages"]) == 1
    finally:
        writer.close()


async def test_expect_100_continue_over_limit_gets_413_not_100(
        make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=1024)
    response = await raw_exchange(
        server, b"POST /channels/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n"
                b"Expect: 100-continue\r\n\r\n")
    assert_error(response, 413, "payload_too_large")


async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    reader, writer = await open_raw(server)
    try:
        writer.write(
            b'POST /channels/pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1'
            b'POST /channels/pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n2'
            b"GET /channels/pipe?since=0 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /channels/pipe?since=0&wait=5 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        first, second, poll, missing, longpoll, health = [
            await read_response(reader) for _ in range(6)]
        await assert_closed(reader)
    finally:
        writer.close()
    assert (first.status_code, second.status_code) == (201, 201)
    ids = [first.json()["id"], second.json()["id"]]
    assert [(m["id"], m["data"]) for m in poll.json()["messages"]] == list(zip(ids, [1, 2],
                                                                               strict=True))
    assert_error(missing, 404, "not_found")
    assert [m["id"] for m in longpoll.json()["messages"]] == ids
    assert health.status_code == 200 and health.json()["status"] == "ok"


async def test_pipelined_behind_a_parked_long_poll(server: Server,
                                                   client: httpx.AsyncClient) -> None:
    """A request pipelined behind a long poll is answered after it, not before."""
    reader, writer = await open_raw(server)
    try:
        writer.write(b"GET /channels/lp?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /channels/lp?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        # Let the server park the long poll, then wake it.
        await until(lambda: bool(server.statistics()["long_polls"]))
        message_id = await publish(client, "lp", "woke")
        woken = await read_response(reader)
        poll = await read_response(reader)
    finally:
        writer.close()
    assert [m["id"] for m in woken.json()["messages"]] == [message_id]
    assert [m["id"] for m in poll.json()["messages"]] == [message_id]


async def test_http_1_0_is_answered_and_closed(server: Server) -> None:
    reader, writer = await open_raw(server)
    try:
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        async with asyncio.timeout(5 * UNIT):
            data = await reader.read()  # to EOF: the server closes after answering
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["status"] == "ok"


async def test_http_1_0_keep_alive_is_honored(server: Server) -> None:
    reader, writer = await open_raw(server)
    try:
        writer.write(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert (await read_response(reader)).status_code == 200
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        response = await read_response(reader)
        assert response.status_code == 200
        assert response.headers["connection"] == "close"
        await assert_closed(reader)
    finally:
        writer.close()


async def test_connection_close_is_honored(server: Server) -> None:
    reader, writer = await open_raw(server)
    try:
        writer.write(b"POST /channels/cc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        response = await read_response(reader)
        assert response.status_code == 201
        assert response.headers["connection"] == "close"
        await assert_closed(reader)
    finally:
        writer.close()


# WebSocket -------------------------------------------------------------------


async def test_ws_non_json_text_gets_an_error_frame(server: Server) -> None:
    async with still_serving(server), connect(ws_url(server, "/channels/w")) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        for text in ("not json", "NaN", "[1, 2]", '{"type": "ping"}', '{"req": 1}',
                     '{"type": "dance", "req": 2}',
                     '{"type": "subscribe", "req": 3, "channel": "bad!"}',
                     '{"type": "subscribe", "req": 4, "channel": "x", "since": "nope"}',
                     '{"type": "publish", "req": 5, "channel": "x"}'):
            await ws.send(text)
            reply = await recv_json(ws)
            assert reply["type"] == "error", (text, reply)
            assert isinstance(reply["error"], str) and reply["message"], reply
        # Still open: a ping is acknowledged.
        await ws.send('{"type": "ping", "req": "p"}')
        assert await recv_json(ws) == {"type": "ack", "req": "p"}


async def test_ws_binary_frame_closes_1003(server: Server) -> None:
    async with still_serving(server), connect(ws_url(server, "/channels/w")) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        await ws.send(b'{"type": "ping", "req": 1}')
        assert await recv_close_code(ws) == 1003


async def test_ws_frame_over_size_limit_closes_1009(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=1024)
    async with still_serving(server), connect(ws_url(server, "/channels/w")) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        await ws.send("x" * 10_000)
        assert await recv_close_code(ws) == 1009


async def test_ws_publish_over_size_limit_is_an_error(make_server: ServerFactory) -> None:
    server = await make_server(max_message_size=1024)
    async with connect(ws_url(server, "/channels/w")) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        await ws.send(json.dumps({"type": "publish", "req": 1, "channel": "w",
                                  "data": "x" * 2000}))
        reply = await recv_json(ws)
        assert reply["type"] == "error" and reply["req"] == 1
        assert reply["error"] == "payload_too_large"


async def test_ws_invalid_utf8_closes_1007(server: Server) -> None:
    async with still_serving(server), connect(ws_url(server, "/channels/w")) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        await ws.send(b'{"type": "ping", "req": "\xff"}', text=True)
        assert await recv_close_code(ws) == 1007


async def _raw_ws(server: Server, path: str) -> tuple[asyncio.StreamReader,
                                                      asyncio.StreamWriter]:
    """A hand-made WebSocket handshake on a raw stream; the 101 is read and checked."""
    reader, writer = await open_raw(server)
    key = base64.b64encode(os.urandom(16))
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 % (path.encode(), key))
    async with asyncio.timeout(5 * UNIT):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    async with asyncio.timeout(5 * UNIT):
        b0, b1 = await reader.readexactly(2)
        assert not b1 & 0x80, "server frames are not masked"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        return b0 & 0x0F, await reader.readexactly(length)


async def _read_close(reader: asyncio.StreamReader) -> tuple[int, str]:
    while True:
        opcode, payload = await _read_frame(reader)
        if opcode == 0x8:
            (code,) = struct.unpack("!H", payload[:2])
            await assert_closed(reader)
            return code, payload[2:].decode()


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def test_ws_unmasked_frame_closes_1002(server: Server) -> None:
    async with still_serving(server):
        reader, writer = await _raw_ws(server, "/channels/w")
        try:
            opcode, payload = await _read_frame(reader)
            assert opcode == 0x1 and json.loads(payload)["type"] == "subscribed"
            # A masked ping is answered: the handshake and framing work.
            writer.write(_masked(0x1, b'{"type":"ping","req":1}'))
            opcode, payload = await _read_frame(reader)
            assert json.loads(payload) == {"type": "ack", "req": 1}
            payload = b'{"type":"ping","req":2}'
            writer.write(bytes([0x81, len(payload)]) + payload)
            code, reason = await _read_close(reader)
        finally:
            writer.close()
    assert code == 1002
    assert "mask" in reason


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes([0xC1, 0x80]) + b"\x00" * 4, 1002),  # RSV1 without an extension
        (bytes([0x83, 0x80]) + b"\x00" * 4, 1002),  # reserved opcode
        (bytes([0x09, 0x80]) + b"\x00" * 4, 1002),  # fragmented ping
        (bytes([0x80, 0x80]) + b"\x00" * 4, 1002),  # continuation without a message
        (bytes([0x88, 0x81]) + b"\x00" * 4 + b"\x03", 1002),  # 1-byte close payload
    ],
    ids=["rsv1", "opcode", "fragmented-ping", "lone-continuation", "short-close"],
)
async def test_ws_protocol_violations_close_1002(server: Server, frame: bytes,
                                                 code: int) -> None:
    reader, writer = await _raw_ws(server, "/channels/w")
    try:
        await _read_frame(reader)  # subscribed
        writer.write(frame)
        got, _reason = await _read_close(reader)
    finally:
        writer.close()
    assert got == code


async def test_ws_bad_handshake_is_400_and_server_keeps_serving(server: Server) -> None:
    async with still_serving(server):
        response = await raw_exchange(
            server,
            b"GET /channels/w HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        body = assert_error(response, 400, "invalid_handshake")
        assert "Sec-WebSocket-Key" in body["message"]


async def test_ws_invalid_since_is_400_before_upgrading(server: Server) -> None:
    async with still_serving(server):
        for path, code in (("/channels/w?since=nope", "invalid_cursor"),
                           ("/channels/bad!", "invalid_channel"),
                           ("/channels/w?since=", "invalid_cursor")):
            with pytest.raises(InvalidStatus) as info:
                async with connect(ws_url(server, path)):
                    pass
            response = info.value.response
            assert response.status_code == 400
            assert response.headers["Content-Type"] == "application/json"
            assert json.loads(response.body)["error"] == code


async def test_timeouts_do_not_cut_a_parked_long_poll(make_server: ServerFactory) -> None:
    """Header and keep-alive deadlines apply while a request is awaited, not while it waits."""
    server = await make_server(header_timeout=0.2, keep_alive_timeout=0.2)
    async with httpx.AsyncClient(base_url=server.url, timeout=5 * UNIT) as client:
        response = await client.get("/channels/slow", params={"wait": "0.8"})
    assert response.status_code == 200
    assert response.json()["messages"] == []


async def test_other_upgrade_is_answered_as_plain_http_and_closed(server: Server) -> None:
    response = await raw_exchange(
        server, b"GET /channels/a?since=0 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                b"Upgrade: h2c\r\n\r\n")
    assert response.status_code == 200
    assert response.json() == {"messages": [], "next": response.json()["next"]}


async def test_upgrade_pipelined_behind_a_request_is_refused(
        server: Server, client: httpx.AsyncClient) -> None:
    """The refusal follows the answer to the parked request: responses stay in order."""
    key = base64.b64encode(os.urandom(16))
    reader, writer = await open_raw(server)
    try:
        writer.write(b"GET /channels/up?since=0&wait=10 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /channels/a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n" % key)
        await until(lambda: bool(server.statistics()["long_polls"]))
        message_id = await publish(client, "up", 1)
        woken = await read_response(reader)
        assert [m["id"] for m in woken.json()["messages"]] == [message_id]
        assert_error(await read_response(reader), 400, "bad_request")
        await assert_closed(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("parked", [b"GET /channels/gp?since=0&wait=10", b"POST /channels/gp"])
async def test_garbage_pipelined_behind_a_parked_request(server: Server,
                                                         client: httpx.AsyncClient,
                                                         parked: bytes) -> None:
    reader, writer = await open_raw(server)
    try:
        writer.write(parked + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n7"
                     b"NOT HTTP AT ALL\r\n\r\n")
        if parked.startswith(b"GET"):
            await until(lambda: bool(server.statistics()["long_polls"]))
            await publish(client, "gp", 7)
        first = await read_response(reader)
        assert first.status_code in (200, 201), first.content
        assert_error(await read_response(reader), 400, "bad_request")
        await assert_closed(reader)
    finally:
        writer.close()
    assert not server.statistics()["long_polls"]
    poll = await client.get("/channels/gp", params={"since": "0"})
    assert [m["data"] for m in poll.json()["messages"]] == [7]
