"""tidings.js in headless Chromium, on a page of the host application, through the ASGI mount."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "browser"))
from asgikit import mounted
from browserkit import WAIT_MS, browser, page

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures


@pytest.mark.parametrize("technique", ["websocket", "sse", "longpoll"])
@pytest.mark.parametrize("kind", ["uvicorn", "hypercorn"])
async def test_the_browser_client_reads_and_publishes_through_the_mount(
        page: Any, kind: str, technique: str) -> None:
    async with mounted(kind) as app:
        await page.goto(f"{app.host_url}/?transport={technique}")
        await page.wait_for_function("() => window.log && window.log.states.includes('open')",
                                     timeout=WAIT_MS)
        first = await app.server.publish("room", {"from": "the application"})
        await page.evaluate("() => window.send({from: 'the page'})")
        await page.wait_for_function("() => window.log.messages.length >= 2", timeout=WAIT_MS)
        messages = await page.evaluate("() => window.log.messages")
        await page.goto("about:blank")  # the page leaves before the application stops
    assert messages[0]["id"] == first.id
    assert [m["data"] for m in messages] == [{"from": "the application"}, {"from": "the page"}]
