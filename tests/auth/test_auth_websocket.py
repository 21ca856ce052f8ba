"""Credentials and permissions on WebSockets: the handshake, each command, and ``auth``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from authkit import API_KEY, AUTH, bearer, publish_ok, token
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tidings.testing import command, http_client, recv_json, ws_url


async def refused_handshake(url: str, **options: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **options):
            pass
    response = info.value.response
    body = json.loads(response.body or b"{}")
    assert body.get("message"), body
    return response.status_code, body["error"]


async def test_the_handshake_is_refused_with_401_or_403(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    url = ws_url(server, "/channels/chat:a")
    assert await refused_handshake(url) == (401, "token_required")
    assert await refused_handshake(
        url, additional_headers=bearer(token(subscribe=["chat:b"]))) == (403, "forbidden")
    assert await refused_handshake(
        url + "?token=" + token(subscribe=["chat:a"], ttl=-5)) == (401, "token_expired")
    assert await refused_handshake(url + "?token=garbage") == (401, "invalid_token")
    multi = ws_url(server, "/subscribe?channel=public:a&channel=chat:b")
    assert await refused_handshake(
        multi, additional_headers=bearer(token(subscribe=["chat:a"]))) == (403, "forbidden")


async def test_a_granted_handshake_subscribes(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    granted = token(subscribe=["chat:a"])
    async with http_client(server) as client:
        for options in ({"additional_headers": bearer(granted)},
                        {"additional_headers": {"Cookie": f"tidings_token={granted}"}}):
            async with connect(ws_url(server, "/channels/chat:a"), **options) as ws:
                assert (await recv_json(ws))["type"] == "subscribed"
                message_id = await publish_ok(client, "chat:a", "hi")
                frame = await recv_json(ws)
                assert (frame["type"], frame["id"]) == ("message", message_id)
        async with connect(ws_url(server, f"/channels/chat:a?token={granted}")) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"


async def test_each_command_is_checked(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with connect(ws_url(server, "/subscribe")) as ws:  # no token: open namespaces only
        reply = await command(ws, type="subscribe", req=1, channel="chat:a")
        assert (reply["type"], reply["error"]) == ("error", "token_required")
        reply = await command(ws, type="subscribe", req=2, channel="public:a")
        assert reply["type"] == "ack"
        reply = await command(ws, type="publish", req=3, channel="public:a", data=1)
        assert (reply["type"], reply["error"]) == ("error", "api_key_required")
        reply = await command(ws, type="publish", req=4, channel="open:a", data=1)
        assert reply["type"] == "ack"

    granted = token(subscribe=["chat:a"], publish=["chat:a"])
    async with connect(ws_url(server, "/subscribe"),
                       additional_headers=bearer(granted)) as ws:
        assert (await command(ws, type="subscribe", req=1, channel="chat:a"))["type"] == "ack"
        reply = await command(ws, type="subscribe", req=2, channel="chat:b")
        assert (reply["type"], reply["error"]) == ("error", "forbidden")
        reply = await command(ws, type="publish", req=3, channel="chat:b", data=1)
        assert (reply["type"], reply["error"]) == ("error", "forbidden")
        await ws.send(json.dumps({"type": "publish", "req": 4, "channel": "chat:a", "data": 2}))
        frames = [await recv_json(ws), await recv_json(ws)]
        assert {f["type"] for f in frames} == {"ack", "message"}


async def test_the_api_key_may_publish_anywhere_over_a_websocket(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with connect(ws_url(server, "/subscribe"),
                       additional_headers=bearer(API_KEY)) as ws:
        for req, channel in enumerate(["public:a", "misc:a", "chat:a"], 1):
            reply = await command(ws, type="publish", req=req, channel=channel, data=req)
            assert reply["type"] == "ack", reply


async def test_the_auth_command_replaces_the_token(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    async with connect(ws_url(server, "/subscribe")) as ws:
        reply = await command(ws, type="auth", req=1, token="garbage")
        assert (reply["type"], reply["error"]) == ("error", "invalid_token")
        reply = await command(ws, type="auth", req=2, token=token(subscribe=["chat:a"], ttl=-5))
        assert (reply["type"], reply["error"]) == ("error", "token_expired")
        reply = await command(ws, type="auth", req=3)
        assert (reply["type"], reply["error"]) == ("error", "invalid_command")
        # The API key is not a token: it goes in the handshake's Authorization header only.
        reply = await command(ws, type="auth", req=4, token=API_KEY)
        assert (reply["type"], reply["error"]) == ("error", "invalid_token")

        reply = await command(ws, type="auth", req=5, token=token(subscribe=["chat:*"]))
        assert reply["type"] == "ack" and reply["sub"] == "alice" and reply["exp"] > 0
        assert (await command(ws, type="subscribe", req=6, channel="chat:a"))["type"] == "ack"
        # A token that no longer grants a current subscription is refused; the old one stays.
        reply = await command(ws, type="auth", req=7, token=token(subscribe=["chat:b"]))
        assert (reply["type"], reply["error"]) == ("error", "forbidden")
        assert (await command(ws, type="subscribe", req=8, channel="chat:b"))["type"] == "ack"
