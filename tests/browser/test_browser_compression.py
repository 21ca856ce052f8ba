"""WebSocket compression with a real browser: Chromium offers permessage-deflate, we agree."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from browserkit import browser, page, serving
from test_browser_client import open_client, wait_for

from conftest import UNIT
from tidings.wire import deflate

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

OPEN = """(url) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url);
  window.frames_ = [];
  ws.onmessage = (event) => window.frames_.push(JSON.parse(event.data));
  ws.onopen = () => resolve(ws.extensions);
  ws.onerror = () => reject(new Error("no WebSocket"));
  window.ws_ = ws;
})"""

PRICES = {f"SYM{i}": {"bid": 187.21 + i, "ask": 187.25 + i} for i in range(20)}


@pytest.mark.parametrize("compression", [True, False])
async def test_chromium_negotiates_compression_and_reads_messages(
        page: Any, compression: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    compressed: list[int] = []
    original = deflate.compress

    def counting(payload: bytes, window_bits: int = 15) -> bytes:
        compressed.append(len(payload))
        return original(payload, window_bits)

    monkeypatch.setattr(deflate, "compress", counting)
    async with serving(websocket_compression=compression) as served, httpx.AsyncClient(
            base_url=served.url, timeout=5 * UNIT) as http:
        await open_client(page, served, ["other"], transports=["poll"])
        await wait_for(page, "window.client !== undefined")
        url = served.url.replace("http", "ws") + "/channels/prices"
        extensions = await page.evaluate(OPEN, url)
        await wait_for(page, "window.frames_.length === 1")  # subscribed
        sent = [(await http.post("/channels/prices", json=value)).json()["id"]
                for value in (PRICES, 1)]
        await wait_for(page, "window.frames_.length === 3")
        frames = await page.evaluate("window.frames_")
    if compression:
        assert extensions.startswith("permessage-deflate")
        assert "server_no_context_takeover" in extensions
        assert compressed  # PRICES went compressed; {"p": 1} is under the threshold
    else:
        assert extensions == "" and not compressed
    assert [f["id"] for f in frames[1:]] == sent
    assert frames[1]["data"] == json.loads(json.dumps(PRICES)) and frames[2]["data"] == 1
