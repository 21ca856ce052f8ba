"""The live status page ``/admin`` in Chromium under ``--workers``: the figures are the
node's (two servers sharing a directory, as two workers do), and the page says how many
workers answered."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from browserkit import browser, page
from test_browser_client import wait_for

from conftest import UNIT
from tidings.testing import http_client, open_sse
from workerkit import worker_server

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures


async def test_the_status_page_shows_every_worker(page: Any, tmp_path: Path) -> None:
    async with worker_server(tmp_path, 0, 2) as first, worker_server(tmp_path, 1, 2) as second, \
            http_client(first) as a, http_client(second) as b, \
            open_sse(a, "/channels/hot") as on_first, open_sse(b, "/channels/hot") as on_second:
        await on_first.opening()
        await on_second.opening()
        url = f"http://127.0.0.1:{first.port}"
        await page.goto(f"{url}/admin")
        await wait_for(page, "document.getElementById('conn-sse').textContent === '2'"
                             " && document.getElementById('workers').textContent === '2 of 2'")
        assert await page.get_attribute("#workers", "class") == "ok"
        rows = await page.eval_on_selector_all(
            "#busiest tr", "(rows) => rows.map((r) => r.innerText.split('\\t'))")
        assert rows == [["hot", "2"]]
    # Worker 1 is gone: the page goes on, and says so.
    async with worker_server(tmp_path, 0, 2) as alone:
        await page.goto(f"http://127.0.0.1:{alone.port}/admin")
        async with asyncio.timeout(10 * UNIT):
            await wait_for(page, "document.getElementById('workers').textContent === '1 of 2'")
        assert await page.get_attribute("#workers", "class") == "bad"
