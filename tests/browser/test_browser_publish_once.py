"""tidings.js ``publish(channel, data, {idempotencyKey})`` in a real browser (headless Chromium)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from browserkit import Served, browser, page, serving
from test_browser_client import open_client, wait_for

from conftest import UNIT

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

PUBLISH_TWICE_THEN_CONFLICT = """async () => {
  const first = await window.client.publish('o', {n: 1}, {idempotencyKey: 'order-7'});
  const again = await window.client.publish('o', {n: 1}, {idempotencyKey: 'order-7'});
  let conflict = null;
  try { await window.client.publish('o', {n: 2}, {idempotencyKey: 'order-7'}); }
  catch (error) { conflict = error.code; }
  let bad = null;
  try { await window.client.publish('o', 1, {idempotencyKey: 'no spaces'}); }
  catch (error) { bad = error.message; }
  return {first, again, conflict, bad};
}"""


async def poll_ids(served: Served, channel: str) -> list[str]:
    async with httpx.AsyncClient(base_url=served.url, timeout=5 * UNIT) as client:
        answer = (await client.get(f"/channels/{channel}", params={"since": "0"})).json()
    return [message["id"] for message in answer["messages"]]


@pytest.mark.parametrize("technique", ["websocket", "poll"])
async def test_publish_with_a_key_stores_once(page: Any, technique: str) -> None:
    async with serving() as served:
        await open_client(page, served, ["o"], transports=[technique])
        await wait_for(page, "window.client.state === 'open'")
        result = await page.evaluate(PUBLISH_TWICE_THEN_CONFLICT)
        stored = await poll_ids(served, "o")
    assert result["first"] == result["again"]
    assert result["conflict"] == "idempotency_conflict"
    assert "idempotencyKey" in result["bad"]
    assert stored == [result["first"]]
