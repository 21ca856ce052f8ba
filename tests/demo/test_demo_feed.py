"""The demo's stock feed and pages, without a browser.

The market is checked as a pure object; the feed through a real server on
port 0, read by the ``websockets`` package; the pages over HTTP with httpx.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

from conftest import UNIT
from tidings.demo import pages, start_demo
from tidings.demo.feed import CHANNEL, SYMBOLS, Market, run_feed
from tidings.settings import Settings


def check_tick(data: Any, tick: int | None = None) -> None:
    """``data`` is a tick message with a valid quote of every symbol."""
    assert set(data) == {"tick", "quotes"}
    if tick is not None:
        assert data["tick"] == tick
    assert [quote["symbol"] for quote in data["quotes"]] == list(SYMBOLS)
    for quote in data["quotes"]:
        assert set(quote) == {"symbol", "price", "change"}
        price, change = quote["price"], quote["change"]
        assert isinstance(price, float) and price > 0
        assert round(price, 2) == price  # whole cents
        opening = SYMBOLS[quote["symbol"]]
        assert change == pytest.approx(price - opening, abs=1e-9)


# the market, no I/O -------------------------------------------------------------


def test_every_tick_quotes_every_symbol_and_moves_about_a_quarter() -> None:
    market = Market(seed=7)
    previous = {symbol: price for symbol, price in SYMBOLS.items()}
    for tick in range(1, 201):
        data = market.tick()
        check_tick(data, tick)
        moved = [q for q in data["quotes"] if q["price"] != previous[q["symbol"]]]
        assert len(moved) == len(SYMBOLS) // 4
        previous = {q["symbol"]: q["price"] for q in data["quotes"]}


def test_the_walk_is_repeatable_with_a_seed_and_stays_plausible() -> None:
    first, second = Market(seed=1), Market(seed=1)
    for _ in range(2000):
        assert first.tick() == second.tick()
    # mean reversion keeps an hour of demo (at 5 ticks/s, ~18,000 ticks) near the open
    for _ in range(18_000):
        data = first.tick()
    for quote in data["quotes"]:
        assert 0.5 < quote["price"] / SYMBOLS[quote["symbol"]] < 2


def test_a_market_needs_symbols() -> None:
    with pytest.raises(ValueError):
        Market({})


# the feed on a real server ------------------------------------------------------


async def test_the_feed_publishes_at_the_configured_rate(make_server: Any) -> None:
    server = await make_server()
    rate, count = 20.0, 11
    ws_url = server.url.replace("http://", "ws://") + f"/channels/{CHANNEL}"
    async with ws_connect(ws_url) as websocket:
        assert json.loads(await websocket.recv())["type"] == "subscribed"
        feed = asyncio.create_task(run_feed(server, rate, Market(seed=3)))
        messages = []
        try:
            async with asyncio.timeout(count / rate + 5 * UNIT):
                while len(messages) < count:
                    frame = json.loads(await websocket.recv())
                    assert frame["type"] == "message"
                    messages.append(frame)
        finally:
            feed.cancel()
    for tick, message in enumerate(messages, start=1):
        assert message["channel"] == CHANNEL
        check_tick(message["data"], tick)
    # Ticks are scheduled on the loop clock: never faster than the rate; slower only
    # by scheduling delays (bounded generously for a loaded machine).
    span = (messages[-1]["time"] - messages[0]["time"]) / 1000
    expected = (count - 1) / rate
    assert expected - 0.05 <= span <= expected + 2 * UNIT
    assert server.health()["published"] >= count


@pytest.mark.parametrize("rate", [0, -1, 1e6])
async def test_a_rate_out_of_range_is_refused(make_server: Any, rate: float) -> None:
    server = await make_server()
    with pytest.raises(ValueError, match="rate"):
        await run_feed(server, rate)


async def test_the_demo_serves_its_pages_and_stops_its_feed() -> None:
    demo = await start_demo(Settings(host="127.0.0.1", port=0), rate=50, market=Market(seed=5))
    try:
        async with httpx.AsyncClient(base_url=demo.url, timeout=10 * UNIT) as client:
            for path, kind in [("/", "text/html"), ("/lab", "text/html"),
                               ("/demo.js", "text/javascript"), ("/lab.js", "text/javascript"),
                               ("/chart.js", "text/javascript"), ("/demo.css", "text/css"),
                               ("/tidings.js", "text/javascript")]:
                response = await client.get(path)
                assert response.status_code == 200, path
                assert response.headers["content-type"].startswith(kind), path
            # the feed runs: a long poll from the start of the log gets ticks at once
            response = await client.get(f"/channels/{CHANNEL}", params={"since": "0", "wait": "5"})
            assert response.status_code == 200
            messages = response.json()["messages"]
            assert messages
            check_tick(messages[0]["data"], 1)
    finally:
        async with asyncio.timeout(5 * UNIT):
            await demo.aclose()
    feeds = [task for task in asyncio.all_tasks()
             if getattr(task.get_coro(), "__name__", "") == "run_feed"]
    assert not feeds


def test_the_pages_need_nothing_from_outside() -> None:
    """No CDN, no web font, no absolute URL: the demo works offline."""
    served = pages()
    assert {"/", "/lab", "/demo.js", "/lab.js", "/chart.js", "/demo.css"} <= set(served)
    for path, file in served.items():
        text = file.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:)?//""", text), path
        assert not re.search(r"""(import|from)\s*["'](https?:)?//""", text), path
        assert not re.search(r"url\(\s*[\"']?(https?:)?//", text), path
    for html in (served["/"], served["/lab"]):
        assert '<script type="module"' in html.read_text()
    for script in (served["/demo.js"], served["/lab.js"]):
        assert 'from "/tidings.js"' in script.read_text()
