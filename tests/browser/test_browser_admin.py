"""The live status page ``/admin`` in Chromium: it asks for the API key, then shows
connections per technique, publish and delivery rates as charts, the busiest channels
and the broker's state, read from ``/admin/status``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from browserkit import browser, page, serving
from test_browser_client import wait_for
from websockets.asyncio.client import connect

from conftest import UNIT
from tidings.settings import AuthSettings
from tidings.testing import open_sse, publish, recv_json, ws_url

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

API_KEY = "admin-page-test-key-0123456789"


async def test_the_status_page_shows_the_server(page: Any) -> None:
    async with serving(auth=AuthSettings(api_key=API_KEY)) as served:
        server = served.server
        assert server is not None
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=served.url, timeout=10 * UNIT) as http:
            refused = await http.get("/admin/status")
            assert (refused.status_code, refused.json()["error"]) == (403, "api_key_required")
            await page.goto(f"{served.url}/admin")
            await wait_for(page, "!document.getElementById('login').hidden")
            await page.fill("#key", "not-the-key")
            await page.click("#login button")
            await wait_for(page, "document.getElementById('problem').textContent"
                                 ".startsWith('refused')")
            # Readers: an SSE stream and a WebSocket on "hot", a WebSocket on "cold".
            reader = httpx.AsyncClient(base_url=served.url, timeout=10 * UNIT,
                                       headers=headers)
            async with reader, open_sse(reader, "/channels/hot") as stream, \
                    connect(ws_url(server, "/channels/hot"),
                            additional_headers=headers) as hot, \
                    connect(ws_url(server, "/channels/cold"),
                            additional_headers=headers) as cold:
                await stream.opening()
                assert (await recv_json(hot))["type"] == "subscribed"
                assert (await recv_json(cold))["type"] == "subscribed"
                server.status_history.sample()
                http.headers.update(headers)
                for n in range(5):
                    await publish(http, "hot", n)
                await stream.messages(5)
                server.status_history.sample()
                await page.fill("#key", API_KEY)
                await page.click("#login button")
                await wait_for(page, "!document.getElementById('status').hidden")
                await wait_for(page, "document.getElementById('conn-sse').textContent === '1'"
                                     " && document.getElementById('conn-websocket')"
                                     ".textContent === '2'")
                assert await page.text_content("#published") == "5"
                assert await page.text_content("#broker") == "memory up"
                rows = await page.eval_on_selector_all(
                    "#busiest tr", "(rows) => rows.map((r) => r.innerText.split('\\t'))")
                assert rows == [["hot", "2"], ["cold", "1"]]
                # Charts: a line per series, the publish rate above zero.
                assert await page.eval_on_selector_all("#chart-published polyline",
                                                       "(lines) => lines.length") == 1
                assert await page.eval_on_selector_all("#chart-delivered polyline",
                                                       "(lines) => lines.length") == 4
                legend = await page.text_content("#legend")
                assert legend is not None
                assert legend.startswith("websocket: 5 delivered · sse: 5 delivered")
