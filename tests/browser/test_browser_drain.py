"""tidings.js in Chromium follows a rolling restart: its node drains, it resumes on another.

Two nodes over Redis behind a TCP balancer (tests/balancer.py) that sends each
new connection to the first node that accepts it; the page comes through the
balancer too. Node A drains (``Server.drain``: WebSocket ``1012``, an SSE
``close`` event ``restart``, long polls answered, ``503 shutdown`` to new
streams) while messages are published; the page gets each message once, in
order, on the same technique, with no error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from browserkit import PAGES, browser, page
from test_browser_client import open_client, wait_for, wait_for_ids

from balancer import Balancer
from conftest import UNIT
from tidings import Server, Settings
from tidings.testing import http_client, publish

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures


@pytest.mark.parametrize("technique", ["websocket", "sse", "longpoll", "poll"])
async def test_the_page_moves_to_another_node_and_loses_nothing(
        page: Any, technique: str, redis_url: str) -> None:
    settings = Settings(host="127.0.0.1", port=0, broker=redis_url)
    a = Server(settings.replace(drain_period=1 * UNIT), pages=PAGES)
    b = Server(settings, pages=PAGES)
    await a.start()
    await b.start()
    balancer = Balancer([a.port, b.port])
    await balancer.start()
    try:
        async with http_client(b) as publisher:
            ids = [await publish(publisher, "roll", 0)]
            await open_client(page, balancer, ["roll"], transports=[technique])
            await wait_for_ids(page, "roll", ids)
            assert set(balancer.routed) == {a.port}
            draining = asyncio.ensure_future(a.drain())
            for n in range(1, 20):
                ids.append(await publish(publisher, "roll", n))
                await asyncio.sleep(0.05 * UNIT)
            await asyncio.wait_for(draining, 10 * UNIT)
            ids.append(await publish(publisher, "roll", 20))
            await wait_for_ids(page, "roll", ids)
        assert b.port in balancer.routed
        assert await page.evaluate("window.client.transport") == technique
        assert await page.evaluate("window.log.errors") == []
        await wait_for(page, "window.client.state === 'open'")
    finally:
        await balancer.aclose()
        await a.aclose()
        await b.aclose()
