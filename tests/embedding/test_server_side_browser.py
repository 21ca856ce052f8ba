"""A browser's own EventSource on ``/subscribe`` (no channel): channels added server-side
arrive, and its automatic reconnection (``Last-Event-ID``) resumes them exactly."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "browser"))
from browserkit import PAGES, WAIT_MS, browser, page

from tidings import ConnectRequest, Identity, Server, Settings
from tidings.errors import RESTART

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures


async def test_an_eventsource_reads_added_channels_and_resumes_them(page: Any) -> None:
    server = Server(Settings(host="127.0.0.1", port=0, sse_retry_ms=100), pages=PAGES)

    @server.on_connect
    async def on_connect(request: ConnectRequest) -> Identity | None:
        user = request.cookies.get("user")
        return Identity(user) if user else None

    async with server:
        await page.context.add_cookies([{"name": "user", "value": "alice",
                                         "url": server.url}])
        await page.goto(f"{server.url}/test/eventsource?path=/subscribe")
        await page.wait_for_function("() => window.log.opens >= 1", timeout=WAIT_MS)
        await server.subscribe_user("alice", "room:b")
        await server.publish("room:b", "one")
        await page.wait_for_function("() => window.log.messages.length >= 1", timeout=WAIT_MS)
        for stream in server.registry.streams():  # the connection drops (a restart)
            stream.close_with(RESTART)
        await server.publish("room:b", "two")  # while the browser is away
        await server.subscribe_user("alice", "room:c")  # added while it is away
        await server.publish("room:c", "three")
        await page.wait_for_function("() => window.log.messages.length >= 3", timeout=WAIT_MS)
        await server.publish("room:b", "four")
        await page.wait_for_function("() => window.log.messages.length >= 4", timeout=WAIT_MS)
        log = await page.evaluate("() => window.log")
        await page.goto("about:blank")
    assert log["opens"] >= 2
    assert [(m["channel"], m["data"]) for m in log["messages"]] in (
        [("room:b", "one"), ("room:b", "two"), ("room:c", "three"), ("room:b", "four")],
        [("room:b", "one"), ("room:c", "three"), ("room:b", "two"), ("room:b", "four")])
    assert "room:b=" in log["ids"][0] and "room:c=" in log["ids"][-1]
