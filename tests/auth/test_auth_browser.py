"""tidings.js with a token function in headless Chromium: refreshed on expiry, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from authkit import AUTH, publish_ok, token

from tidings.testing import UNIT, http_client

CHROMIUM = "/usr/bin/chromium"
TTL = 1.5 * UNIT
FAST = {"pollInterval": 100, "longpollWait": 30000, "attemptTimeout": 3000,
        "backoff": {"initial": 50, "max": 200}}


async def launch() -> tuple[Any, Any]:
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 - once, before any I/O
        message = f"{CHROMIUM} is missing: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright
    playwright = await async_playwright().start()
    browser = await playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
    return playwright, browser


@contextlib.asynccontextmanager
async def client_page(server: Any, mint_token: Callable[[], str],
                      technique: str) -> AsyncIterator[tuple[Any, list[str]]]:
    """A page reading ``chat:a`` from 0 with tidings.js, its token from ``mint_token``.

    The page logs ``window.ids`` (messages) and ``window.states``; yields the
    page and the script errors it raised.
    """
    playwright, browser = await launch()
    try:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        # A Python function the page calls; it returns a promise, like a fetch() would.
        await page.expose_function("mintToken", mint_token)
        await page.goto(f"{server.url}/tidings.js")  # any page of the server's origin
        await page.evaluate("""async ([url, options]) => {
            const { connect } = await import("/tidings.js");
            window.ids = [];
            window.states = [];
            window.client = connect(url, { ...options, token: () => window.mintToken() });
            window.client.on("state", (state) => window.states.push(state));
            window.client.subscribe("chat:a", {
                since: "0", onMessage: (m) => window.ids.push(m.id) });
        }""", [server.url, {**FAST, "transports": [technique]}])
        yield page, errors
    finally:
        await browser.close()
        await playwright.stop()


async def publish_paced(server: Any, count: int, interval: float) -> list[str]:
    """Publish ``count`` messages on ``chat:a``, ``interval`` seconds apart (across expiries)."""
    published = []
    async with http_client(server) as client:
        for n in range(count):
            published.append(await publish_ok(client, "chat:a", n))
            await asyncio.sleep(interval)
    return published


async def received(page: Any, count: int) -> list[str]:
    await page.wait_for_function(f"() => window.ids.length >= {count}", timeout=15_000 * UNIT)
    ids: list[str] = await page.evaluate("window.ids")
    return ids


# Poll reads like long poll (the same refusal path); left out to keep the file short.
@pytest.mark.parametrize("technique", ["websocket", "sse", "longpoll"])
async def test_the_browser_client_refreshes_an_expired_token(make_server: Any,
                                                              technique: str) -> None:
    server = await make_server(auth=AUTH)
    minted: list[str] = []

    def mint_token() -> str:
        # The first one is already expired: the client must notice and ask again.
        minted.append(token(subscribe=["chat:a"], ttl=TTL if minted else -5))
        return minted[-1]

    async with client_page(server, mint_token, technique) as (page, errors):
        published = await publish_paced(server, 10, TTL / 4)
        assert await received(page, len(published)) == published
        assert len(minted) >= 3  # the expired one, then at least one refresh on expiry
        await page.evaluate("window.client.close()")
        assert errors == []


REFRESH_TTL = 3 * UNIT


@pytest.mark.parametrize("case", ["refreshed", "function_fails"])
async def test_the_browser_client_refreshes_a_jwt_over_the_open_websocket(
        make_server: Any, case: str) -> None:
    """A JWT is replaced ahead of `exp` with an `auth` command: one WebSocket throughout.

    A function that fails at refresh time leaves the 4001 close and a resume.
    """
    server = await make_server(auth=AUTH)
    minted: list[str] = []

    def mint_token() -> str:
        minted.append(token(subscribe=["chat:a"], ttl=REFRESH_TTL))
        if case == "function_fails" and len(minted) == 2:
            raise RuntimeError("the token service is down for a moment")
        return minted[-1]

    async with client_page(server, mint_token, "websocket") as (page, errors):
        published = await publish_paced(server, 10, REFRESH_TTL / 4)  # 2.5 token lifetimes
        assert await received(page, len(published)) == published
        states = await page.evaluate("window.states")
        requests = await page.evaluate("window.client.stats.requests")
        if case == "refreshed":
            assert len(minted) >= 4, "the token was not refreshed ahead of each expiry"
            assert (states, requests) == (["open"], 1)
        else:
            assert "reconnecting" in states and requests >= 2, (states, requests)
        await page.evaluate("window.client.close()")
        assert errors == []
