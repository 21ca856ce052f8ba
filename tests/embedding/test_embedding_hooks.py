"""The application decides: ``on_connect``, ``on_subscribe``, ``on_publish``, ``on_rpc``.

Allow, refuse, replace and time out, on every technique and over the
WebSocket commands, with clients we did not write; and a hook runs once per
connection or subscription, never per delivered message.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from conftest import ServerFactory
from tidings import ConnectRequest, Identity, Refuse, Replace, Server, UsageError
from tidings.errors import CommandError
from tidings.testing import (
    UNIT,
    command,
    http_client,
    open_sse,
    open_ws,
    poll,
    post,
    publish,
    recv_json,
    recv_messages,
    require_error,
)
from tidings.wire import commands

SESSIONS = {"s-alice": "alice", "s-bob": "bob"}


def install(server: Server, calls: Counter[str]) -> None:
    """An application: users by session cookie; ``private:<user>`` for that user only;
    publishes on ``shout`` upper-cased; ``forbidden`` refused; an ``rpc`` echo."""

    @server.on_connect
    async def on_connect(request: ConnectRequest) -> Identity:
        calls["connect", request.technique] += 1
        user = SESSIONS.get(request.cookies.get("session", ""))
        if user is None:
            raise Refuse("log in first", status=401, code="login_required")
        return Identity(user, info={"technique": request.technique})

    @server.on_subscribe
    async def on_subscribe(user: str | None, channel: str) -> bool:
        calls["subscribe", channel] += 1
        return not channel.startswith("private:") or channel == f"private:{user}"

    @server.on_publish
    async def on_publish(user: str | None, channel: str, data: Any) -> Replace | None:
        calls["publish", channel] += 1
        if channel == "forbidden":
            raise Refuse(f"{user} may not publish there")
        if channel == "shout":
            return Replace({"from": user, "text": str(data).upper()})
        return None

    @server.on_rpc
    async def on_rpc(user: str | None, method: str, data: Any) -> Any:
        calls["rpc", method] += 1
        if method == "secret":
            raise Refuse("no secrets", code="no_secrets")
        return {"user": user, "method": method, "echo": data}


ALICE = {"Cookie": "session=s-alice"}


async def test_on_connect_refuses_every_technique_without_a_session(server: Server) -> None:
    calls: Counter[str] = Counter()
    install(server, calls)
    async with http_client(server) as http:
        require_error(await http.get("/channels/news"), 401, "login_required", "a poll")
        require_error(await http.get("/channels/news", params={"wait": 1}), 401,
                      "login_required", "a long poll")
        require_error(await http.get("/channels/news", headers={"Accept": "text/event-stream"}),
                      401, "login_required", "an event stream")
        require_error(await post(http, "news", 1), 401, "login_required", "a publish")
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(server, "/channels/news"):
                pass
    assert refused.value.response.status_code == 401
    assert server.health()["published"] == 0
    assert {key[1] for key in calls if key[0] == "connect"} == {
        "poll", "longpoll", "sse", "publish", "websocket"}


async def test_on_connect_and_on_subscribe_allow_and_refuse(server: Server) -> None:
    calls: Counter[str] = Counter()
    install(server, calls)
    async with http_client(server) as http:
        mine = await http.get("/channels/private:alice", headers=ALICE, params={"since": "0"})
        theirs = await http.get("/channels/private:bob", headers=ALICE)
        both = await http.get("/subscribe", headers=ALICE,
                              params=[("channel", "news"), ("channel", "private:bob")])
    assert mine.status_code == 200
    require_error(theirs, 403, "forbidden", "another user's channel")
    require_error(both, 403, "forbidden", "a subscription naming another user's channel")


async def test_a_hook_runs_per_subscription_never_per_message(server: Server) -> None:
    calls: Counter[str] = Counter()
    install(server, calls)
    async with http_client(server) as http, \
            open_sse(http, "/channels/news", headers=ALICE) as stream, \
            open_ws(server, "/channels/news", additional_headers=ALICE) as ws:
        await stream.opening()
        await recv_json(ws)
        for n in range(20):
            await server.publish("news", n)  # the application's own: no on_publish
        await stream.messages(20)
        await recv_messages(ws, 20)
    assert calls["connect", "sse"] == calls["connect", "websocket"] == 1
    assert calls["subscribe", "news"] == 2
    assert calls["publish", "news"] == 0


async def test_on_publish_allows_refuses_and_replaces(server: Server) -> None:
    calls: Counter[str] = Counter()
    install(server, calls)
    async with http_client(server) as http:
        kept = await publish(http, "news", {"n": 1}, headers=ALICE)
        refused = await post(http, "forbidden", 1, headers=ALICE)
        replaced = await publish(http, "shout", "hello", headers=ALICE)
        async with open_ws(server, "/subscribe", additional_headers=ALICE) as ws:
            ws_refused = await command(ws, type="publish", req=1, channel="forbidden", data=2)
            ws_replaced = await command(ws, type="publish", req=2, channel="shout", data="hi")
        news = await poll(http, "/channels/news", headers=ALICE, since="0")
        shout = await poll(http, "/channels/shout", headers=ALICE, since="0")
        nothing = await poll(http, "/channels/forbidden", headers=ALICE, since="0")
    require_error(refused, 403, "forbidden", "a refused publish")
    assert ws_refused["type"] == "error" and ws_refused["error"] == "forbidden"
    assert ws_replaced["type"] == "ack"
    assert [m["id"] for m in news["messages"]] == [kept]
    assert [m["data"] for m in shout["messages"]] == [
        {"from": "alice", "text": "HELLO"}, {"from": "alice", "text": "HI"}]
    assert shout["messages"][0]["id"] == replaced
    assert nothing["messages"] == []
    assert server.health()["published"] == 3


async def test_websocket_commands_go_through_the_hooks_in_order(server: Server) -> None:
    calls: Counter[str] = Counter()
    install(server, calls)
    async with open_ws(server, "/subscribe", additional_headers=ALICE) as ws:
        # Sent at once: the replies come in order although the hooks are awaited.
        for req, channel in enumerate(["news", "private:bob", "private:alice"], 1):
            await ws.send(f'{{"type":"subscribe","req":{req},"channel":"{channel}"}}')
        replies = [await recv_json(ws) for _ in range(3)]
        echo = await command(ws, type="rpc", req=4, method="typing", data={"room": "lobby"})
        secret = await command(ws, type="rpc", req=5, method="secret")
    assert [(r["type"], r["req"]) for r in replies] == [("ack", 1), ("error", 2), ("ack", 3)]
    assert replies[1]["error"] == "forbidden"
    assert echo["result"] == {"user": "alice", "method": "typing", "echo": {"room": "lobby"}}
    assert (secret["type"], secret["error"]) == ("error", "no_secrets")


async def test_rpc_without_a_hook_is_an_error_reply(server: Server) -> None:
    async with open_ws(server, "/subscribe") as ws:
        reply = await command(ws, type="rpc", req=1, method="anything")
    assert (reply["type"], reply["error"]) == ("error", "no_rpc")


@pytest.mark.parametrize("failure", ["timeout", "raises"])
async def test_a_hook_that_fails_answers_a_retryable_503(make_server: ServerFactory,
                                                         failure: str) -> None:
    server = await make_server()
    server.hooks.timeout = 0.2 * UNIT
    release = asyncio.Event()

    async def broken(*args: Any) -> None:
        if failure == "timeout":
            await release.wait()
        raise RuntimeError("the application's database is down")

    server.on_connect(broken)
    server.on_rpc(broken)
    try:
        async with http_client(server) as http:
            read = await http.get("/channels/news")
            published = await post(http, "news", 1)
            stream = await http.get("/channels/news", headers={"Accept": "text/event-stream"})
            with pytest.raises(InvalidStatus) as refused:
                async with open_ws(server, "/channels/news"):
                    pass
        server.hooks.connect = None
        async with open_ws(server, "/subscribe") as ws:
            rpc = await command(ws, type="rpc", req=1, method="typing")
    finally:
        release.set()
    for answer in (read, published, stream):
        require_error(answer, 503, "hook_unavailable", "a request whose hook failed")
    assert refused.value.response.status_code == 503
    assert (rpc["type"], rpc["error"]) == ("error", "hook_unavailable")
    assert server.health()["published"] == 0


async def test_hooks_apply_through_the_asgi_mount() -> None:
    from asgikit import mounted

    async with mounted("uvicorn") as app:
        calls: Counter[str] = Counter()
        install(app.server, calls)
        async with httpx.AsyncClient(base_url=app.url, timeout=10 * UNIT) as http:
            anonymous = await http.get("/channels/news")
            theirs = await http.get("/channels/private:bob", headers=ALICE)
            replaced = await http.post("/channels/shout", json="asgi", headers=ALICE)
            shout = await poll(http, "/channels/shout", headers=ALICE, since="0")
    require_error(anonymous, 401, "login_required", "an anonymous read through the mount")
    require_error(theirs, 403, "forbidden", "another user's channel through the mount")
    assert replaced.status_code == 201
    assert shout["messages"][0]["data"] == {"from": "alice", "text": "ASGI"}


@pytest.mark.parametrize("text", ['{"type":"rpc","req":1}', '{"type":"rpc","req":1,"method":""}',
                                  '{"type":"rpc","req":1,"method":7}',
                                  '{"type":"rpc","req":1,"method":"' + "m" * 129 + '"}'])
def test_an_rpc_command_needs_a_method(text: str) -> None:
    with pytest.raises(CommandError) as refused:
        commands.parse(text)
    assert refused.value.req == 1 and refused.value.error.code == "invalid_command"


def test_an_rpc_command_carries_its_data() -> None:
    parsed = commands.parse('{"type":"rpc","req":"a","method":"typing","data":{"room":"x"}}')
    assert parsed == commands.Rpc("a", "typing", {"room": "x"})
    assert commands.parse('{"type":"rpc","req":2,"method":"m"}') == commands.Rpc(2, "m", None)


def test_refuse_takes_401_or_403_only() -> None:
    assert (Refuse(status=401).code, Refuse().code) == ("unauthorized", "forbidden")
    with pytest.raises(UsageError):
        Refuse(status=500)
