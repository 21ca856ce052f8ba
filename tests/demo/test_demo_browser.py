"""The demo pages in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The demo runs in the test's event loop on port 0; Playwright's async API
drives the browser from the same loop. Every wait is a ``wait_for_function``
on the page bounded by a multiple of ``UNIT``. Without the browser the tests
are skipped, which ``tests/conftest.py`` turns into a failure under CI.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conftest import UNIT
from tidings.demo import Demo, start_demo
from tidings.demo.feed import Market
from tidings.settings import Settings

async_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")

CHROMIUM = os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Ticks per second: fast enough that a few arrive within a fraction of a UNIT.
RATE = 20.0
WAIT_MS = 15 * UNIT * 1000
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
TECHNIQUES = ["websocket", "sse", "longpoll", "poll"]


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    demo = await start_demo(Settings(host="127.0.0.1", port=0), rate=RATE, market=Market(seed=11))
    yield demo
    await demo.aclose()


@pytest.fixture
def expected_errors() -> list[str]:
    """Patterns of console errors a test expects (e.g. refused WebSocket handshakes)."""
    return []


@pytest.fixture
async def page(expected_errors: list[str]) -> AsyncIterator[Any]:
    """A fresh page; JavaScript errors on it fail the test, unless expected."""
    if not HAVE_CHROMIUM:
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium")
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(message.text)
                    if message.type == "error" else None)
            yield page
            unexpected = [error for error in errors
                          if not any(re.search(pattern, error) for pattern in expected_errors)]
            assert not unexpected, unexpected
        finally:
            await browser.close()


async def test_the_demo_page_shows_prices_that_update(demo: Demo, page: Any) -> None:
    await page.goto(demo.url + "/")
    await page.wait_for_function("document.querySelectorAll('#prices tbody tr').length === 20")
    first = await page.eval_on_selector_all("#prices td.price",
                                            "cells => cells.map(c => c.textContent)")
    assert all(float(price) > 0 for price in first)
    # prices move: some cell differs from the first snapshot, and some row flashed
    await page.wait_for_function(
        "first => [...document.querySelectorAll('#prices td.price')]"
        ".some((cell, i) => cell.textContent !== first[i])", arg=first)
    await page.wait_for_function(
        "document.querySelector('#prices tr.flash-up, #prices tr.flash-down')")
    # the technique in use and the connection state are shown
    await page.wait_for_function("document.getElementById('state').textContent === 'open'")
    transport = await page.text_content("#transport")
    assert transport == await page.evaluate("window.tidingsDemo.client.transport")
    assert transport == "websocket"  # nothing blocks it here, so the best technique wins
    # the chart follows a chosen symbol
    await page.click("#prices tr[data-symbol='NVDA']")
    # read in one go: the next tick may move the price between two reads
    shown = await page.evaluate("""() => [
        document.getElementById('chart-symbol').textContent,
        document.getElementById('chart-price').textContent,
        document.querySelector("#prices tr[data-symbol='NVDA'] td.price").textContent]""")
    assert shown[0] == "NVDA"
    assert shown[1] == shown[2]


async def test_the_lab_receives_on_all_four_techniques(demo: Demo, page: Any) -> None:
    await page.goto(demo.url + "/lab")
    await page.wait_for_function(
        "document.querySelectorAll('#columns [data-technique]').length === 4")
    for technique in TECHNIQUES:
        column = f"#columns [data-technique='{technique}']"
        # each column's count rises, and its latency is measured
        count = f"document.querySelector(\"{column} .count\").textContent"
        await page.wait_for_function(f"Number({count}.replace(/,/g, '')) >= 3")
        await page.wait_for_function(
            f"document.querySelector(\"{column} .p50\").textContent.endsWith('ms')")
    offset = await page.text_content("#offset")
    assert offset is not None and "ms" in offset
    used = await page.evaluate("window.tidingsLab.columns.map(c => c.client.transport)")
    assert used == TECHNIQUES  # each column reads with its technique only
    stats = await page.evaluate("window.tidingsLab.columns.map(c => c.client.stats)")
    for technique, figures in zip(TECHNIQUES, stats, strict=True):
        assert figures["messages"] >= 3, technique
        assert figures["bytesReceived"] > 0, technique
        assert figures["requests"] >= 1, technique
    by_name = dict(zip(TECHNIQUES, stats, strict=True))
    assert by_name["websocket"]["requests"] == 1
    assert by_name["longpoll"]["requests"] >= 2


async def test_with_techniques_turned_off_the_pages_say_so(
        page: Any, expected_errors: list[str]) -> None:
    # the browser logs each refused attempt of the client (403: technique turned off)
    expected_errors += ["WebSocket connection to .* failed: .* 403", "status of 403"]
    settings = Settings(host="127.0.0.1", port=0, transports=("sse", "poll"))
    async with await start_demo(settings, rate=RATE, market=Market(seed=12)) as demo:
        await page.goto(demo.url + "/")
        # the page's client falls back to the best technique offered, and shows it
        await page.wait_for_function("document.getElementById('transport').textContent === 'sse'")
        await page.wait_for_function("document.querySelectorAll('#prices tbody tr').length === 20")
        await page.goto(demo.url + "/lab")
        await page.wait_for_function(
            "document.querySelectorAll('#columns [data-technique]').length === 4")
        for technique in ("sse", "poll"):
            count = f"document.querySelector(\"[data-technique='{technique}'] .count\").textContent"
            await page.wait_for_function(f"Number({count}) >= 2")
        states = await page.eval_on_selector_all(
            "#columns [data-technique] .state", "pills => pills.map(p => p.textContent)")
        assert states[0] == states[2] == "off"  # websocket, longpoll
        assert await page.evaluate("window.tidingsLab.columns.map(c => c.client === null)") == [
            True, False, True, False]
