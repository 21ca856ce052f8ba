"""tidings.js behind Debian's nginx over TLS: through the recommended configuration it
streams; through an nginx that buffers event streams (``proxy_buffering on``, tidings'
``X-Accel-Buffering: no`` ignored) it detects the buffering and falls back to long
polling, losing nothing (see tests/nginxkit.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browserkit import browser, serving
from test_browser_client import open_client, publish, wait_for, wait_for_ids

from nginxkit import Nginx, nginx_missing

pytestmark = pytest.mark.asyncio(loop_scope="module")
#: The connection stays in the page (a leader tab): a SharedWorker's connections do not
#: reach the self-signed nginx (the page context's ignore_https_errors does not seem to
#: cover the worker), while this test is about what nginx does to the streams.
SHARE = "leader"
__all__ = ["browser"]  # fixtures


@pytest_asyncio.fixture(loop_scope="module")
async def tls_page(browser: Any) -> AsyncIterator[Any]:
    """A page that trusts the test's self-signed certificate (as a user who installed it)."""
    context = await browser.new_context(ignore_https_errors=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    await context.close()
    assert not errors, errors


def require_nginx() -> None:
    missing = nginx_missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


async def test_a_buffering_nginx_is_detected_and_long_polling_takes_over(
        tls_page: Any, tmp_path: Path) -> None:
    require_nginx()
    async with serving() as served:
        with Nginx(served.port, tmp_path) as proxy:
            await open_client(tls_page, served, ["b"], server=proxy.buffering_url,
                              transports=["sse", "longpoll"], sseFirstEventTimeout=1000,
                              shareTabs=SHARE)
            await wait_for(tls_page, "window.client.state === 'fallback'")
            assert await tls_page.evaluate("window.client.transport") == "longpoll"
            # A buffering nginx holds even the head of the event stream (the client's
            # BufferingProxy test covers a proxy that sends the head): the attempt times out.
            states = await tls_page.evaluate("window.log.states")
            assert states[-1]["reason"].startswith("sse failed")
            ids = await publish(served, "b", 3)
            await wait_for_ids(tls_page, "b", ids)
            assert await tls_page.evaluate("window.log.errors") == []


@pytest.mark.parametrize("technique", ["websocket", "sse"])
async def test_through_the_recommended_nginx_it_streams(tls_page: Any, tmp_path: Path,
                                                        technique: str) -> None:
    require_nginx()
    async with serving() as served:
        with Nginx(served.port, tmp_path) as proxy:
            await open_client(tls_page, served, ["s"], server=proxy.url,
                              transports=[technique], sseFirstEventTimeout=1000, shareTabs=SHARE)
            await wait_for(tls_page, "window.client.state === 'open'")
            ids = await publish(served, "s", 3)
            await wait_for_ids(tls_page, "s", ids)
            assert await tls_page.evaluate("window.client.transport") == technique
            assert await tls_page.evaluate("window.log.errors") == []
