"""examples/fastapi_chat runs under uvicorn, and two users chat in Chromium.

The example is started as its README says (uvicorn, ``--app-dir``), on a
listening socket handed to it; two browser contexts (two cookie jars) log in,
join a room, chat, see each other type (``rpc``), and one mention lands in the
other's private channel, which the application subscribed server-side.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "browser"))
from browserkit import WAIT_MS, browser

from tidings.testing import UNIT

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser"]  # fixtures

ROOT = Path(__file__).resolve().parents[2]
UVICORN = Path(sys.executable).with_name("uvicorn")


@contextlib.contextmanager
def listening_socket() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    try:
        yield sock
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def chat_app() -> AsyncIterator[str]:
    """The example under uvicorn, as its README runs it; yields its URL."""
    with listening_socket() as sock:
        fd = sock.fileno()
        process = await asyncio.create_subprocess_exec(
            str(UVICORN), "app:app", "--app-dir", "examples/fastapi_chat",
            "--ws-per-message-deflate", "false", "--fd", str(fd), "--log-level", "warning",
            "--timeout-graceful-shutdown", "2",
            cwd=ROOT, pass_fds=[fd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            async with httpx.AsyncClient(base_url=url) as http, asyncio.timeout(20 * UNIT):
                while True:
                    if process.returncode is not None:
                        assert process.stderr is not None
                        raise AssertionError(f"uvicorn exited: {await process.stderr.read()!r}")
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/")).status_code == 200:
                            break
                    await asyncio.sleep(0.05)
            yield url
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                async with asyncio.timeout(10 * UNIT):
                    await process.communicate()
            except TimeoutError:
                process.kill()
                await process.communicate()


async def logged_in(browser: Any, url: str, name: str) -> Any:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    await page.goto(url)
    await page.fill("input[name=name]", name)
    await page.click("text=Log in")
    await page.wait_for_function("() => window.chat && window.chat.ready", timeout=WAIT_MS)
    return page


async def test_two_users_chat_and_a_mention_reaches_a_private_channel(browser: Any) -> None:
    async with chat_app() as url, httpx.AsyncClient(base_url=url) as http:
        # Without the session cookie, tidings refuses (on_connect): 401 login_required.
        refused = await http.get("/rt/subscribe", params={"channel": "room:lobby"})
        assert (refused.status_code, refused.json()["error"]) == (401, "login_required")
        alice = await logged_in(browser, url, "alice")
        bob = await logged_in(browser, url, "bob")
        try:
            # The private channel was subscribed server-side, at login.
            assert "private:bob" in await bob.evaluate("() => window.chat.subscribed")
            await alice.fill("#text", "hello bob")  # typing: an rpc command
            await bob.wait_for_function("() => window.chat.typing.includes('alice')",
                                        timeout=WAIT_MS)
            await alice.press("#text", "Enter")
            await bob.wait_for_function("() => window.chat.messages.length >= 1",
                                        timeout=WAIT_MS)
            await bob.fill("#text", "hi @alice")
            await bob.press("#text", "Enter")
            await alice.wait_for_function("() => window.chat.private.length >= 1",
                                          timeout=WAIT_MS)
            await alice.wait_for_function("() => window.chat.messages.length >= 2",
                                          timeout=WAIT_MS)
            mention = (await alice.evaluate("() => window.chat.private"))[0]
            said = await alice.evaluate("() => window.chat.messages")
            heard = await bob.evaluate("() => window.chat.messages")
            # on_publish refuses what is not a chat message; the page shows the error.
            await bob.evaluate("() => window.chat.errors.length = 0")
            await bob.select_option("#room", "room:staff")  # on_subscribe: admin only
            await bob.wait_for_function("() => window.chat.errors.length >= 1",
                                        timeout=WAIT_MS)
            staff_error = (await bob.evaluate("() => window.chat.errors"))[0]
        finally:
            for page in (alice, bob):
                await page.goto("about:blank")
                await page.context.close()
        assert heard[0] == {"type": "chat", "from": "alice", "text": "hello bob"}
        assert said == [{"type": "chat", "from": "alice", "text": "hello bob"},
                        {"type": "chat", "from": "bob", "text": "hi @alice"}]
        assert mention == {"type": "mention", "from": "bob", "room": "room:lobby",
                           "text": "hi @alice"}
        assert "forbidden" in staff_error
        assert alice.errors == bob.errors == []
