"""Presence across nodes when a node dies: a ``tidings serve`` process killed with SIGKILL
(no cleanup at all) loses its members on the other nodes within ``presence_timeout``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest
from nodekit import Node, node_argv
from websockets.asyncio.client import connect

from conftest import ServerFactory
from tidings.testing import UNIT, http_client, open_sse, recv_json, ws_url

PRESENCE_TIMEOUT = 3 * UNIT


async def clients_on(http_get: object, channel: str) -> set[str]:
    response = await http_get(f"/channels/{channel}/presence")  # type: ignore[operator]
    assert response.status_code == 200, response.text
    return {member["client"] for member in response.json()["members"]}


async def until_clients(http_get: object, channel: str, wanted: set[str],
                        within: float) -> None:
    seen: set[str] = set()
    try:
        async with asyncio.timeout(within):
            while True:
                seen = await clients_on(http_get, channel)
                if seen == wanted:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"listed {seen}, not {wanted}") from None


async def test_a_killed_node_loses_its_members_within_presence_timeout(
        make_server: ServerFactory, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_PRESENCE", "true")
    monkeypatch.setenv("TIDINGS_PRESENCE_TIMEOUT", str(PRESENCE_TIMEOUT))
    survivor = await make_server(broker=redis_url, presence=True,
                                 presence_timeout=PRESENCE_TIMEOUT)
    directory = Path(tempfile.mkdtemp(prefix="tidings-nodes-"))
    doomed = Node("doomed", node_argv(redis_url), directory)
    try:
        await doomed.wait_url()
        await _kill_with_readers(survivor, doomed)
    finally:
        doomed.kill()
        shutil.rmtree(directory, ignore_errors=True)


async def _kill_with_readers(survivor: object, doomed: Node) -> None:
    async with http_client(survivor) as http, http_client(doomed) as on_doomed, \
            connect(ws_url(survivor, "/channels/room?client=stays")) as stays:
        await recv_json(stays)
        ws = await connect(ws_url(doomed, "/channels/room?client=ws-doomed"))
        sse_context = open_sse(on_doomed, "/channels/room", {"client": "sse-doomed"})
        sse = await sse_context.__aenter__()
        try:
            await recv_json(ws)
            await sse.opening()
            assert (await on_doomed.get("/channels/room",
                                        params={"client": "poll-doomed"})).is_success
            everyone = {"stays", "ws-doomed", "sse-doomed", "poll-doomed"}
            await until_clients(http.get, "room", everyone, 5 * UNIT)
            await until_clients(on_doomed.get, "room", everyone, 5 * UNIT)
            doomed.kill()  # SIGKILL: no leave is sent, its Redis entries stay behind
            loop = asyncio.get_running_loop()
            killed = loop.time()
            await until_clients(http.get, "room", {"stays"}, PRESENCE_TIMEOUT + 5 * UNIT)
            assert loop.time() - killed <= PRESENCE_TIMEOUT + UNIT
        finally:
            await ws.close()
            with contextlib.suppress(Exception):  # the node is gone: the stream broke
                await sse_context.__aexit__(None, None, None)
