"""One connection for all tabs: several pages of one browser context share a client's reading.

Each page is tests/browser/pages/client.html (tidings.js configured from the
query string) in one Chromium context, so they are tabs of one browser and one
origin. In both modes — a SharedWorker holding the connection, and a leader tab
elected over Web Locks speaking to the others over a BroadcastChannel — the
server sees one stream for all the tabs, and every tab gets every message of
its channels once, in order, also when the first tab (the leader) closes in the
middle of a stream, and when one tab reads channels the others do not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import pytest_asyncio
from browserkit import WAIT_MS, Served, browser, serving

from conftest import UNIT, until

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser"]  # fixtures

MODES = ["worker", "leader"]
FAST = {"pollInterval": 200, "longpollWait": 3000, "attemptTimeout": 3000,
        "backoff": {"initial": 100, "max": 500}}


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Any) -> AsyncIterator[Any]:
    """One browser context: its pages are tabs of one browser; page errors fail the test."""
    context = await browser.new_context()
    errors: list[str] = []
    context.on("page", lambda page: page.on("pageerror", lambda e: errors.append(str(e))))
    yield context
    await context.close()
    assert not errors, errors


async def open_tab(context: Any, served: Served, channels: list[str], mode: str | bool,
                   since: str | None = "0", **options: Any) -> Any:
    page = await context.new_page()
    query = {"channels": ",".join(channels),
             "options": json.dumps({**FAST, "shareTabs": mode, **options})}
    if since is not None:
        query["since"] = since
    await page.goto(f"{served.url}/test/client?{urlencode(query)}")
    await page.wait_for_function("() => window.client !== undefined", timeout=WAIT_MS)
    return page


async def wait_open(page: Any) -> None:
    await page.wait_for_function("() => window.client.state === 'open'", timeout=WAIT_MS)


async def ids_of(page: Any, channel: str) -> list[str]:
    ids: list[str] = await page.evaluate(
        "(c) => window.log.messages.filter((m) => m.channel === c).map((m) => m.id)", channel)
    return ids


async def wait_for_ids(page: Any, channel: str, expected: list[str]) -> None:
    """The page has exactly ``expected`` on ``channel``: each once, in order, nothing else."""
    await page.wait_for_function(
        "([c, last]) => window.log.messages.some((m) => m.channel === c && m.id === last)",
        arg=[channel, expected[-1]], timeout=WAIT_MS)
    assert await ids_of(page, channel) == expected


async def publish(served: Served, channel: str, count: int, pause: float = 0) -> list[str]:
    async with httpx.AsyncClient(base_url=served.url, timeout=5 * UNIT) as client:
        ids = []
        for n in range(count):
            response = await client.post(f"/channels/{channel}", json={"n": n})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
            if pause:
                await asyncio.sleep(pause)  # a steady stream, not a wait for anything
        return ids


def streams(served: Served) -> int:
    assert served.server is not None
    count = served.server.statistics()["streams"]
    assert isinstance(count, int)
    return count


@pytest.mark.parametrize("mode", MODES)
async def test_tabs_share_one_connection(context: Any, mode: str) -> None:
    async with serving() as served:
        before = await publish(served, "news", 3)
        tabs = [await open_tab(context, served, ["news"], mode) for _ in range(3)]
        for tab in tabs:
            await wait_open(tab)
        assert await tabs[0].evaluate("window.client.sharing") == mode
        after = await publish(served, "news", 3)
        for tab in tabs:
            await wait_for_ids(tab, "news", before + after)
        assert streams(served) == 1  # one WebSocket for three tabs
        # Publishing from a tab goes through the shared connection too.
        published = await tabs[2].evaluate("window.client.publish('news', {from: 'tab'})")
        for tab in tabs:
            await wait_for_ids(tab, "news", [*before, *after, published])


async def test_without_sharing_each_tab_has_its_own_connection(context: Any) -> None:
    async with serving() as served:
        tabs = [await open_tab(context, served, ["news"], False) for _ in range(3)]
        for tab in tabs:
            await wait_open(tab)
        assert await tabs[0].evaluate("window.client.sharing") is None
        await until(lambda: streams(served) == 3)


@pytest.mark.parametrize("mode", MODES)
async def test_closing_the_first_tab_mid_stream_loses_nothing(context: Any, mode: str) -> None:
    async with serving() as served:
        tabs = [await open_tab(context, served, ["ticks"], mode) for _ in range(3)]
        for tab in tabs:
            await wait_open(tab)
        if mode == "leader":  # the first tab runs the hub
            assert await tabs[0].evaluate("window.client._hub !== null")
            assert not await tabs[1].evaluate("window.client._hub !== null")
        stream = asyncio.create_task(publish(served, "ticks", 60, pause=0.02 * UNIT))
        try:
            # Close the tab that came first (the leader, in leader mode) once the stream flows.
            await tabs[1].wait_for_function(
                "() => window.log.messages.length >= 10", timeout=WAIT_MS)
            await tabs[0].close()
            ids = await stream
        finally:
            if not stream.done():
                stream.cancel()
        sentinel = await publish(served, "ticks", 1)
        for tab in tabs[1:]:
            await wait_for_ids(tab, "ticks", ids + sentinel)
        await until(lambda: streams(served) == 1)


@pytest.mark.parametrize("mode", MODES)
async def test_a_tab_reads_channels_the_others_do_not(context: Any, mode: str) -> None:
    async with serving() as served:
        early = await publish(served, "a", 2)
        first = await open_tab(context, served, ["a"], mode)
        second = await open_tab(context, served, ["a", "b"], mode)
        await wait_open(first)
        await wait_open(second)
        a_ids = early + await publish(served, "a", 2)
        b_ids = await publish(served, "b", 3)
        await wait_for_ids(first, "a", a_ids)
        await wait_for_ids(second, "a", a_ids)
        await wait_for_ids(second, "b", b_ids)
        assert await ids_of(first, "b") == []
        # A third tab starting "b" from the start reads it from there; the second one does
        # not see those messages again.
        third = await open_tab(context, served, ["b"], mode)
        await wait_open(third)
        more = await publish(served, "b", 1)
        await wait_for_ids(third, "b", b_ids + more)
        await wait_for_ids(second, "b", b_ids + more)
        assert await ids_of(third, "a") == []
        # The second tab stops reading "b": the others go on.
        await second.evaluate("window.client.close()")
        last = await publish(served, "b", 1)
        await wait_for_ids(third, "b", b_ids + more + last)
        assert await ids_of(second, "b") == b_ids + more


@pytest.mark.parametrize("mode", MODES)
async def test_the_connection_ends_with_the_last_client(context: Any, mode: str) -> None:
    async with serving() as served:
        tabs = [await open_tab(context, served, ["news"], mode) for _ in range(2)]
        for tab in tabs:
            await wait_open(tab)
        await until(lambda: streams(served) == 1)
        # The first tab's client closes (in leader mode, the leader's): the other goes on.
        await tabs[0].evaluate("window.client.close()")
        assert await tabs[0].evaluate("window.client.state") == "closed"
        ids = await publish(served, "news", 2)
        await wait_for_ids(tabs[1], "news", ids)
        assert await tabs[1].evaluate("window.client.state") == "open"
        await tabs[1].evaluate("window.client.close()")
        await until(lambda: streams(served) == 0)


@pytest.mark.parametrize("mode", MODES)
async def test_publishing_at_once_waits_for_the_hub(context: Any, mode: str) -> None:
    # A client publishing as soon as it is made, in the first tab: no leader is elected and no
    # hub heard from yet. The message is published once.
    async with serving() as served:
        page = await context.new_page()
        await page.goto(f"{served.url}/healthz")
        script = """async (mode) => {
            const { connect } = await import("/tidings.js");
            const client = connect(location.origin, { shareTabs: mode });
            const id = await client.publish("first", { at: "once" });
            return [id, client.sharing];
        }"""
        message_id, sharing = await page.evaluate(script, mode)
        assert sharing == mode
        async with httpx.AsyncClient(base_url=served.url, timeout=5 * UNIT) as http:
            answer = (await http.get("/channels/first", params={"since": "0"})).json()
        assert [m["id"] for m in answer["messages"]] == [message_id]
