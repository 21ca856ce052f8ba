"""The demo's presence in headless Chromium: "N watching" on the prices page, and the lab's
four columns as four members (each with its technique and client id).

The demo runs in the module's event loop on port 0 (``start_demo``, which turns presence on
for the demo's channel); each page is in a context of its own, as separate browsers are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from browserkit import WAIT_MS, browser

from conftest import UNIT
from tidings.demo import Demo, start_demo
from tidings.demo.feed import CHANNEL, Market
from tidings.settings import Settings

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser"]  # fixtures

TECHNIQUES = ["websocket", "sse", "longpoll", "poll"]


@pytest_asyncio.fixture(loop_scope="module")
async def demo() -> AsyncIterator[Demo]:
    demo = await start_demo(Settings(host="127.0.0.1", port=0), rate=10.0,
                            market=Market(seed=3))
    yield demo
    await demo.aclose()


async def open_page(browser: Any, url: str) -> Any:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    await page.goto(url)
    return page


async def watching(page: Any, count: int) -> None:
    await page.wait_for_function(
        f"() => document.getElementById('watching').textContent === '{count}'", timeout=WAIT_MS)


async def members(demo: Demo) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=demo.url, timeout=5 * UNIT) as http:
        response = await http.get(f"/channels/{CHANNEL}/presence")
        assert response.status_code == 200, response.text
        listed: list[dict[str, Any]] = response.json()["members"]
        return listed


async def test_the_watching_count_follows_the_pages(demo: Demo, browser: Any) -> None:
    first = await open_page(browser, demo.url + "/")
    await watching(first, 1)
    second = await open_page(browser, demo.url + "/")
    await watching(second, 2)
    await watching(first, 2)  # told of the join
    await second.context.close()
    await watching(first, 1)  # and of the leave
    assert first.errors == [] and second.errors == []
    await first.context.close()


async def test_the_watching_count_counts_every_technique(demo: Demo, browser: Any) -> None:
    page = await open_page(browser, demo.url + "/")
    await watching(page, 1)
    # A reader on each other technique, none written by us: curl-like HTTP and a WebSocket.
    async with httpx.AsyncClient(base_url=demo.url, timeout=5 * UNIT) as http:
        response = await http.get(f"/channels/{CHANNEL}", params={"client": "a-poller"})
        assert response.status_code == 200
        await watching(page, 2)
        async with http.stream("GET", f"/channels/{CHANNEL}",
                               headers={"Accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200
            await watching(page, 3)
        await watching(page, 2)  # the stream ended
    await page.context.close()


async def test_the_lab_shows_its_four_columns_as_four_members(demo: Demo, browser: Any) -> None:
    page = await open_page(browser, demo.url + "/lab")
    await page.wait_for_function(
        "() => window.tidingsLab && window.tidingsLab.columns.every((c) => c.client.clientId)"
        " && document.querySelectorAll('#members tbody tr.mine').length === 4"
        " && [...document.querySelectorAll('.column .client')].every("
        "(c) => c.textContent !== '\u2013')",
        timeout=WAIT_MS)
    columns = await page.evaluate(
        "window.tidingsLab.columns.map((c) => [c.technique.name, c.client.clientId])")
    assert sorted(t for t, _ in columns) == sorted(TECHNIQUES)
    assert len({c for _, c in columns}) == 4
    rows = await page.eval_on_selector_all(
        "#members tbody tr.mine", "rows => rows.map((r) => [r.dataset.technique, r.dataset.client,"
        " r.querySelector('.reader').textContent])")
    titles = await page.evaluate(
        "Object.fromEntries(window.tidingsLab.columns.map((c) => [c.technique.name,"
        " c.technique.title]))")
    assert sorted(rows) == sorted([t, c, titles[t]] for t, c in columns)
    # Each column shows its client id; the server lists the same four.
    shown = await page.eval_on_selector_all(".column .client",
                                            "cells => cells.map((c) => c.textContent)")
    assert sorted(shown) == sorted(c for _, c in columns)
    listed = await members(demo)
    assert sorted((m["technique"], m["client"]) for m in listed) == sorted(map(tuple, columns))
    assert page.errors == []
    await page.context.close()
