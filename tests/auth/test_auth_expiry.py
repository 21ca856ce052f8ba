"""Tokens that expire on long-lived reads: told, cut, and resumed with nothing lost.

The server checks expiries in its once-a-second sweep, so a token is cut
within about a second after its ``exp``. Tokens here live ``TTL`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from authkit import AUTH, bearer, publish_ok, token
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tidings.testing import UNIT, SseStream, command, http_client, recv_json, ws_url

TTL = 1.5 * UNIT
#: The longest a token may outlive its ``exp`` (the sweep's tick, plus slack).
SWEEP = 2 * UNIT


async def test_websocket_is_closed_4001_then_resumes_with_a_new_token(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    short = token(subscribe=["chat:a"], ttl=TTL)
    async with http_client(server) as client:
        async with connect(ws_url(server, "/channels/chat:a"),
                           additional_headers=bearer(short)) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            first = await publish_ok(client, "chat:a", 1)
            assert (await recv_json(ws))["id"] == first
            frame = await recv_json(ws, within=TTL + SWEEP)
            assert (frame["type"], frame["error"], frame["req"]) == (
                "error", "token_expired", None)
            try:
                async with asyncio.timeout(5 * UNIT):
                    await ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 4001
            else:
                raise AssertionError("the connection stayed open after token_expired")
        missed = [await publish_ok(client, "chat:a", n) for n in (2, 3)]
        fresh = token(subscribe=["chat:a"])
        async with connect(ws_url(server, f"/channels/chat:a?since={first}&token={fresh}")) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            assert [(await recv_json(ws))["id"] for _ in missed] == missed


async def test_websocket_auth_command_keeps_the_connection(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    short = token(subscribe=["chat:a"], ttl=TTL)
    url = ws_url(server, "/channels/chat:a")
    async with http_client(server) as client, connect(url,
                                                      additional_headers=bearer(short)) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        reply = await command(ws, type="auth", req=1, token=token(subscribe=["chat:a"]))
        assert reply["type"] == "ack"
        # Let the first token's expiry and a sweep or two pass: nothing must happen.
        await asyncio.sleep(TTL + SWEEP)
        message_id = await publish_ok(client, "chat:a", "still here")
        frame = await recv_json(ws)
        assert (frame["type"], frame["id"]) == ("message", message_id)


async def test_sse_is_told_token_expired_and_resumes(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    short = token(subscribe=["chat:a"], ttl=TTL)
    timeout = httpx.Timeout(10 * UNIT, read=None)
    async with http_client(server) as client:
        async with client.stream("GET", "/channels/chat:a", params={"token": short},
                                 headers={"Accept": "text/event-stream"},
                                 timeout=timeout) as response:
            assert response.status_code == 200
            events = SseStream(response.aiter_bytes())
            async with asyncio.timeout(5 * UNIT):
                await events.next_block()  # retry and the starting cursor
                first = await publish_ok(client, "chat:a", 1)
                assert (await events.next_event()).id == first
            async with asyncio.timeout(TTL + SWEEP):
                closing = await events.next_event()
            assert closing.event == "close"
            assert closing.json()["error"] == "token_expired"
            last_id = events.last_id
            assert last_id == first
            with pytest.raises(EOFError):  # the server ended the stream
                async with asyncio.timeout(5 * UNIT):
                    await events.next_block()
        missed = [await publish_ok(client, "chat:a", n) for n in (2, 3)]
        headers = {"Accept": "text/event-stream", "Last-Event-ID": last_id,
                   **bearer(token(subscribe=["chat:a"]))}
        async with client.stream("GET", "/channels/chat:a", headers=headers,
                                  timeout=timeout) as response:
            assert response.status_code == 200
            events = SseStream(response.aiter_bytes())
            async with asyncio.timeout(5 * UNIT):
                await events.next_block()
                assert [(await events.next_event()).id for _ in missed] == missed


async def test_long_poll_ends_with_401_token_expired_and_resumes(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with http_client(server) as client:
        granted = bearer(token(subscribe=["chat:a"]))
        cursor = (await client.get("/channels/chat:a", headers=granted)).json()["next"]
        short = bearer(token(subscribe=["chat:a"], ttl=TTL))
        async with asyncio.timeout(TTL + SWEEP):
            response = await client.get("/channels/chat:a", headers=short,
                                        params={"since": cursor, "wait": "30"})
        assert response.status_code == 401
        assert response.json()["error"] == "token_expired"
        message_id = await publish_ok(client, "chat:a", "after")
        response = await client.get("/channels/chat:a", headers=granted,
                                    params={"since": cursor, "wait": "30"})
        assert [m["id"] for m in response.json()["messages"]] == [message_id]
        # The connection stays usable after the 401 (keep-alive).
        assert (await client.get("/healthz")).status_code == 200


async def test_an_exp_written_as_a_string_of_digits_expires_too(make_server: Any) -> None:
    """PyJWT accepts ``"exp": "1795937398"``; the connection must still be cut at expiry."""
    server = await make_server(auth=AUTH)
    short = token(subscribe=["chat:a"], exp=str(int(time.time() + TTL + 1)))  # overrides ttl
    async with connect(ws_url(server, "/channels/chat:a"),
                       additional_headers=bearer(short)) as ws:
        assert (await recv_json(ws))["type"] == "subscribed"
        frame = await recv_json(ws, within=TTL + 1 + SWEEP)
        assert (frame["type"], frame["error"]) == ("error", "token_expired")
