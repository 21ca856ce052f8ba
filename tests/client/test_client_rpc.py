"""``await client.rpc(method, data)``: the application's ``on_rpc`` over the WebSocket.

A result; a refusal with the hook's code; a hook that fails (``hook_unavailable``);
no hook (``no_rpc``); bad arguments refused before anything is sent; a server
that cannot be reached. The same call from a plain ``websockets`` client gets
the same answers (the wire the client speaks).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from clientkit import FAST, free_port

import tidings
from tidings import Refuse, Server, Settings
from tidings.testing import UNIT


def with_rpc(server: Server) -> list[tuple[str | None, str, Any]]:
    calls: list[tuple[str | None, str, Any]] = []

    @server.on_rpc
    async def on_rpc(user: str | None, method: str, data: Any) -> Any:
        calls.append((user, method, data))
        if method == "secret":
            raise Refuse("not for you", code="not_yours")
        if method == "broken":
            raise RuntimeError("the application failed")
        if method == "nothing":
            return None
        return {"echo": data}

    return calls


@pytest.mark.parametrize("transport", ["auto", "sse", "poll"])
async def test_a_result_whatever_the_client_reads_with(transport: str) -> None:
    server = Server(Settings(host="127.0.0.1", port=0))
    calls = with_rpc(server)
    async with server, tidings.connect(server.url, transport, **FAST) as client:
        async with asyncio.timeout(5 * UNIT):
            echo = await client.rpc("typing", {"room": "lobby"})
            bare = await client.rpc("typing")
            nothing = await client.rpc("nothing", [1, 2])
    assert echo == {"echo": {"room": "lobby"}}
    assert bare == {"echo": None}
    assert nothing is None
    assert [(m, d) for _, m, d in calls] == [
        ("typing", {"room": "lobby"}), ("typing", None), ("nothing", [1, 2])]


async def test_refusals_are_request_refused_with_the_servers_code() -> None:
    server = Server(Settings(host="127.0.0.1", port=0))
    with_rpc(server)
    async with server, tidings.connect(server.url, **FAST) as client:
        async with asyncio.timeout(5 * UNIT):
            with pytest.raises(tidings.RequestRefused) as refused:
                await client.rpc("secret")
            with pytest.raises(tidings.RequestRefused) as failed:
                await client.rpc("broken", {})
            after = await client.rpc("typing", 1)  # the connection is still fine
    assert (refused.value.code, "not for you" in str(refused.value)) == ("not_yours", True)
    assert failed.value.code == "hook_unavailable"
    assert after == {"echo": 1}


async def test_without_a_hook_it_is_no_rpc() -> None:
    server = Server(Settings(host="127.0.0.1", port=0))
    async with server, tidings.connect(server.url, **FAST) as client:
        with pytest.raises(tidings.RequestRefused) as refused:
            async with asyncio.timeout(5 * UNIT):
                await client.rpc("anything")
        # A client we did not write gets the same reply.
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/subscribe") as ws:
            await ws.send(json.dumps({"type": "rpc", "req": 1, "method": "anything"}))
            async with asyncio.timeout(5 * UNIT):
                reply = json.loads(await ws.recv())
    assert refused.value.code == "no_rpc"
    assert (reply["type"], reply["error"]) == ("error", "no_rpc")


async def test_bad_arguments_are_refused_before_sending() -> None:
    async with tidings.connect(f"http://127.0.0.1:{free_port()}", **FAST) as client:
        for method in ("", "x" * 129, 7):
            with pytest.raises(tidings.UsageError):
                await client.rpc(method)  # type: ignore[arg-type]
        with pytest.raises(tidings.UsageError):
            await client.rpc("typing", {1, 2})  # not JSON
        with pytest.raises(tidings.ConnectionFailed):  # nothing listens there
            async with asyncio.timeout(5 * UNIT):
                await client.rpc("typing")
    with pytest.raises(tidings.ClientClosed):
        await client.rpc("typing")
