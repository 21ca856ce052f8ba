"""Headless Chromium (Debian's ``chromium``, driven by Playwright) and servers for browser tests.

The browser is launched once per test module, in the module's event loop
(``pytestmark = pytest.mark.asyncio(loop_scope="module")`` in the test file);
each test gets a fresh context and page, and starts its own tidings server in
that same loop. Without ``/usr/bin/chromium`` the tests skip — and in CI
(``CI=true``) they fail: install it with ``apt-get install chromium``; never
``playwright install``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tidings import Server, Settings
from tidings.testing import UNIT

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
PAGES_DIR = Path(__file__).parent / "pages"
PAGES = {
    "/test/client": PAGES_DIR / "client.html",
    "/test/eventsource": PAGES_DIR / "eventsource.html",
}
#: Milliseconds Playwright waits for a page condition.
WAIT_MS = 10_000 * UNIT


def browser_missing(why: str) -> None:
    """Skip the test, or fail it in CI, where every test must run."""
    message = f"{why}; browser tests need Debian's chromium: apt-get install chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        browser_missing("the playwright package is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 - once per module, before any I/O
        browser_missing(f"{CHROMIUM} is missing")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                    args=ARGS)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh page; uncaught errors in it fail the test."""
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    await context.close()
    assert not errors, errors


class Served:
    """A tidings server serving the test pages, that can be restarted on the same port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: Server | None = None
        self.port = 0

    async def start(self) -> Server:
        previous = self.server
        self.server = Server(self.settings.replace(port=self.port),
                             broker=previous.broker if previous else None, pages=PAGES)
        await self.server.start()
        self.port = self.server.port
        return self.server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.aclose()

    async def restart(self) -> Server:
        """Stop, then serve again on the same port with the same broker (the same logs)."""
        await self.stop()
        return await self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serving(**changes: Any) -> AsyncIterator[Served]:
    served = Served(Settings(host="127.0.0.1", port=0).replace(**changes))
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


class BufferingProxy:
    """A TCP proxy to the server that buffers the first ``count`` event streams.

    Those get a ``200 text/event-stream`` head and then nothing, as a proxy
    that buffers responses shows them to a browser; every other connection is
    piped through unchanged (the first request of a connection decides).
    """

    def __init__(self, upstream_port: int, count: int = 1) -> None:
        self.upstream_port = upstream_port
        self.count = count
        self.buffered = 0
        self.port = 0
        self._listener: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> BufferingProxy:
        self._listener = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._listener is not None
        self._listener.close()
        for writer in list(self._writers):
            writer.close()
        await self._listener.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"text/event-stream" in head.lower() and self.buffered < self.count:
                self.buffered += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\n\r\n")
                await reader.read()  # silence until the client gives up
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(upstream)
            upstream.write(head)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.close()
                    self._writers.discard(end)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
