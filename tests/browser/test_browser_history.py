"""tidings.js ``history(channel, {before, since, limit})`` in a real browser (headless Chromium)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from browserkit import browser, page, serving
from test_browser_client import open_client, wait_for, wait_for_ids

from conftest import UNIT

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

SCROLL_BACK = """async () => {
  const pages = [];
  let page = await window.client.history('chat', {limit: 2});
  pages.push(page);
  while (page.before !== null) {
    page = await window.client.history('chat', {before: page.before, limit: 2});
    pages.push(page);
  }
  const bounded = await window.client.history('chat', {since: pages[0].messages[1].id});
  let refused = null;
  try { await window.client.history('chat', {before: 'nonsense'}); }
  catch (error) { refused = error.code; }
  let bad = null;
  try { await window.client.history('chat', {limit: 0}); }
  catch (error) { bad = error.message; }
  return {
    pages: pages.map((p) => ({ns: p.messages.map((m) => m.data.n), next: p.next,
                              before: p.before, gaps: p.gaps})),
    bounded: bounded.messages.map((m) => m.data.n), refused, bad,
  };
}"""


async def test_scroll_back_page_by_page_then_go_live_from_the_top(page: Any) -> None:
    async with serving() as served, httpx.AsyncClient(base_url=served.url,
                                                      timeout=5 * UNIT) as http:
        ids = [(await http.post("/channels/chat", json={"n": n})).json()["id"]
               for n in range(1, 6)]
        await open_client(page, served, ["other"], transports=["websocket"])
        await wait_for(page, "window.client.state === 'open'")
        result = await page.evaluate(SCROLL_BACK)
        assert [p["ns"] for p in result["pages"]] == [[5, 4], [3, 2], [1]]
        assert [p["before"] for p in result["pages"]] == [ids[3], ids[1], None]
        assert result["pages"][0]["next"] == ids[4]
        assert all(p["gaps"] == [] for p in result["pages"])
        assert result["bounded"] == [5]
        assert result["refused"] == "invalid_cursor"
        assert "limit" in result["bad"]
        # go live from the top of the first page: the next message only, once
        top = result["pages"][0]["next"]
        await page.evaluate(
            "(since) => window.client.subscribe('chat', {since, onMessage: (m) => "
            "window.log.messages.push(m)})", top)
        live = (await http.post("/channels/chat", json={"n": 6})).json()["id"]
        await wait_for_ids(page, "chat", [live])
