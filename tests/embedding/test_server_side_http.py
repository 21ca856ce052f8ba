"""Server-side subscriptions over HTTP and in tokens, and across two nodes on Redis.

``POST`` / ``DELETE /users/{user}/channels/{channel}`` with the API key (and
what it answers without it, or to bad input); the token claim
``channels.read``; and two servers sharing a Redis: a change made on one
reaches streams on the other, and a reconnection to the other node keeps it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
import pytest
from asgikit import mounted

from conftest import ServerFactory
from tidings import ConnectRequest, Identity, Server, Settings
from tidings.settings import AuthSettings
from tidings.testing import (
    UNIT,
    http_client,
    open_sse,
    open_ws,
    poll,
    recv_json,
    recv_messages,
    require_error,
)

API_KEY = "the-api-key-of-this-test"
SECRET = "test-secret-of-at-least-32-bytes-length"
KEY = {"Authorization": f"Bearer {API_KEY}"}


def cookie_users(server: Server) -> None:
    @server.on_connect
    async def on_connect(request: ConnectRequest) -> Identity | None:
        user = request.cookies.get("user")
        return Identity(user) if user else None


def token(**channels: Any) -> str:
    return jwt.encode({"sub": "carol", "exp": time.time() + 60, "channels": channels},
                      SECRET, "HS256")


async def test_the_endpoint_adds_lists_and_removes(make_server: ServerFactory) -> None:
    server = await make_server(auth=AuthSettings(api_key=API_KEY))
    cookie_users(server)
    async with http_client(server) as http, \
            open_ws(server, "/subscribe", additional_headers={"Cookie": "user=a/b"}) as ws:
        added = await http.post("/users/a%2Fb/channels/news", headers=KEY)
        again = await http.post("/users/a%2Fb/channels/news", headers=KEY)
        frame = await recv_json(ws)
        listed = await http.get("/users/a%2Fb/channels", headers=KEY)
        removed = await http.delete("/users/a%2Fb/channels/news", headers=KEY)
        absent = await http.delete("/users/a%2Fb/channels/news", headers=KEY)
        assert await recv_json(ws) == {"type": "unsubscribed", "channel": "news"}
    assert (added.status_code, added.json()) == (
        201, {"user": "a/b", "channel": "news", "added": True})
    assert (again.status_code, again.json()["added"]) == (200, False)
    assert frame["type"] == "subscribed" and frame["channel"] == "news"
    assert listed.json() == {"user": "a/b", "channels": {"news": frame["next"]}}
    assert (removed.status_code, removed.json()["removed"]) == (200, True)
    assert (absent.status_code, absent.json()["removed"]) == (200, False)


async def test_the_endpoint_needs_the_api_key(make_server: ServerFactory) -> None:
    keyless = await make_server()
    server = await make_server(auth=AuthSettings(api_key=API_KEY, jwt_hs256_secret=SECRET))
    async with http_client(keyless) as http:
        require_error(await http.post("/users/alice/channels/news"), 403, "api_key_required",
                      "a server without an API key")
    async with http_client(server) as http:
        require_error(await http.post("/users/alice/channels/news"), 401, "api_key_required",
                      "no credentials")
        require_error(await http.post("/users/alice/channels/news",
                                      headers={"Authorization": f"Bearer {token()}"}),
                      403, "api_key_required", "a token instead of the API key")
        require_error(await http.delete("/users/alice/channels/news",
                                        headers={"Authorization": "Bearer wrong"}),
                      401, "invalid_token", "a wrong key")
        assert (await http.get("/users/alice/channels", headers=KEY)).json()["channels"] == {}


async def test_the_endpoint_refuses_bad_input_with_json(make_server: ServerFactory) -> None:
    server = await make_server(auth=AuthSettings(api_key=API_KEY),
                               max_channels_per_subscription=1)
    async with http_client(server) as http:
        require_error(await http.post("/users/alice/channels/bad%20name", headers=KEY),
                      400, "invalid_channel", "a bad channel name")
        require_error(await http.post("/users/a%0Ab/channels/news", headers=KEY),
                      400, "invalid_user", "a control character in the user")
        require_error(await http.post("/users/" + "u" * 300 + "/channels/news", headers=KEY),
                      400, "invalid_user", "a user name too long")
        require_error(await http.post("/users//channels/news", headers=KEY),
                      400, "invalid_user", "an empty user")
        require_error(await http.put("/users/alice/channels/news", headers=KEY),
                      405, "method_not_allowed", "PUT")
        require_error(await http.post("/users/alice/channels", headers=KEY),
                      405, "method_not_allowed", "POST on the list")
        require_error(await http.get("/users/alice", headers=KEY), 404, "not_found",
                      "no channels part")
        assert (await http.post("/users/alice/channels/one", headers=KEY)).status_code == 201
        require_error(await http.post("/users/alice/channels/two", headers=KEY),
                      400, "too_many_channels", "past max_channels_per_subscription")
        # The connection is still good for the next request.
        assert (await http.get("/users/alice/channels", headers=KEY)).status_code == 200


async def test_the_token_claim_channels_read(make_server: ServerFactory) -> None:
    server = await make_server(auth=AuthSettings(jwt_hs256_secret=SECRET, api_key=API_KEY))
    good = token(subscribe=[], read=["alerts", "inbox:carol"])
    async with http_client(server) as http:
        async with open_sse(http, "/subscribe", params={"token": good}) as stream:
            opening = await stream.opening()
            assert opening.json()["user"] == "carol"
            assert set(dict(p.split("=") for p in (stream.last_id or "").split(","))) == {
                "alerts", "inbox:carol"}
            await server.publish("inbox:carol", "hi")
            assert [m["data"] for m in await stream.message_objects(1)] == ["hi"]
        for bad in (token(read="alerts"), token(read=["no spaces"]), token(read=[1])):
            require_error(await http.get("/subscribe", params={"token": bad}), 401,
                          "invalid_token", "a malformed channels.read")


@pytest.mark.parametrize("store", ["redis_url", "redis_cluster_url"])
async def test_two_nodes_share_users_channels(make_server: ServerFactory, store: str,
                                              request: pytest.FixtureRequest) -> None:
    redis_url = request.getfixturevalue(store)
    auth = AuthSettings(api_key=API_KEY)
    one = await make_server(broker=redis_url, auth=auth)
    two = await make_server(broker=redis_url, auth=auth)
    for server in (one, two):
        cookie_users(server)
    alice = {"Cookie": "user=alice"}
    async with http_client(one) as http_one, http_client(two) as http_two:
        async with open_sse(http_two, "/subscribe", headers=alice) as stream, \
                open_ws(two, "/subscribe", additional_headers=alice) as ws:
            await stream.opening()
            added = await http_one.post("/users/alice/channels/room:5", headers=KEY)
            assert added.status_code == 201
            await one.publish("room:5", "from node one")
            async with asyncio.timeout(UNIT):  # within a second, on the other node
                assert (await stream.next_event()).event == "subscribed"
                assert (await recv_json(ws))["type"] == "subscribed"
            assert [m["data"] for m in await stream.message_objects(1)] == ["from node one"]
            assert [m["data"] for m in await recv_messages(ws, 1)] == ["from node one"]
            cursor = stream.last_id
        await one.publish("room:5", "while away")
        # A reconnection to the other node keeps the channel, and resumes it exactly.
        async with open_sse(http_one, "/subscribe",
                            headers={**alice, "Last-Event-ID": cursor or ""}) as again:
            await again.opening()
            assert [m["data"] for m in await again.message_objects(1)] == ["while away"]
            removed = await http_two.delete("/users/alice/channels/room:5", headers=KEY)
            assert removed.json()["removed"] is True
            assert (await again.next_event()).event == "unsubscribed"
        polled = await poll(http_two, "/subscribe", headers=alice)
        assert polled["next"] == ""


async def test_a_node_whose_link_broke_reads_the_sets_again(make_server: ServerFactory,
                                                            shared_redis: Any,
                                                            redis_url: str) -> None:
    """A change whose news the node never heard (its pub/sub link was down) is found when
    the link is back: the node reads the sets of its connected users again."""
    server = await make_server(broker=redis_url)
    cookie_users(server)
    first = await server.publish("room:6", "before")
    alice = {"Cookie": "user=alice"}
    async with http_client(server) as http, open_sse(http, "/subscribe", headers=alice
                                                     ) as stream:
        await stream.opening()
        # Added behind the node's back: in Redis, with no news on pub/sub.
        shared_redis.command("HSET", "tidings:{~users}:u:alice", "room:6", first.id)
        shared_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        async with asyncio.timeout(10 * UNIT):
            announced = await stream.next_event()
            while announced.event == "status":  # the link went away, and came back
                announced = await stream.next_event()
        assert announced.event == "subscribed"
        assert announced.json() == {"channel": "room:6", "next": first.id}
        await server.publish("room:6", "after")
        assert [m["data"] for m in await stream.message_objects(1)] == ["after"]


@pytest.mark.parametrize("kind", ["uvicorn", "hypercorn"])
async def test_through_the_asgi_mount(kind: str) -> None:
    server = Server(Settings(host="127.0.0.1", port=0, auth=AuthSettings(api_key=API_KEY)),
                    listen=False)
    cookie_users(server)
    async with mounted(kind, server) as app, httpx.AsyncClient(base_url=app.url) as http, \
            open_sse(http, "/subscribe", headers={"Cookie": "user=alice"}) as stream:
        await stream.opening()
        require_error(await http.post("/users/alice/channels/news"), 401,
                      "api_key_required", "no key through the mount")
        added = await http.post("/users/alice/channels/news", headers=KEY)
        assert added.status_code == 201
        await server.publish("news", "through the mount")
        assert (await stream.next_event()).event == "subscribed"
        assert [m["data"] for m in await stream.message_objects(1)] == ["through the mount"]
