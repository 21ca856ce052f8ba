"""The recipes of docs/browser-client.md, as written there, in Chromium.

Each fenced block after a ``<!-- recipe: NAME -->`` line runs as it is, with the
guide's address ``127.0.0.1:8000`` replaced by a live server's:

* ``react-hook``: the hooks, imported by a small React 18 app (React's UMD build
  from npm, installed by tests/js/jskit.py into tests/js/node_modules) through
  an import map that also maps ``"tidings"`` to the server's ``/tidings.js``;
* ``plain-dom``: the copy-paste page, served from another origin than the
  tidings server, as the guide says it may be.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from browserkit import WAIT_MS, browser, page

from conftest import UNIT
from js.jskit import install_tools
from tidings import Server, Settings

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "browser-client.md"
GUIDE_ADDRESS = "http://127.0.0.1:8000"


def recipe(name: str, server_url: str) -> str:
    """The fenced block after ``<!-- recipe: name -->``, pointed at ``server_url``."""
    found = re.search(rf"^<!-- recipe: {name} -->\n```\w+\n(.*?)^```$", GUIDE.read_text(),
                      re.M | re.S)
    assert found is not None, f"no recipe {name} in {GUIDE}"
    assert GUIDE_ADDRESS in found.group(1)
    return found.group(1).replace(GUIDE_ADDRESS, server_url)


REACT_APP = """<!doctype html>
<meta charset="utf-8">
<title>the React recipe</title>
<script src="/test/react.js"></script>
<script src="/test/react-dom.js"></script>
<script type="importmap">
  {"imports": {"react": "/test/react-module.js", "tidings": "/tidings.js"}}
</script>
<div id="root"></div>
<script type="module">
  import { createElement as h, StrictMode } from "react";
  import { useChannel, useConnectionState, client } from "/test/use-tidings.js";

  function Feed({ channel, since }) {
    const messages = useChannel(channel, { since });
    const state = useConnectionState();
    return h("section", null,
      h("p", { id: "state" }, state),
      h("ul", { id: "list" },
        messages.map((m) => h("li", { key: m.id, "data-id": m.id }, JSON.stringify(m.data)))));
  }

  const root = ReactDOM.createRoot(document.getElementById("root"));
  window.show = (channel, since) => root.render(h(StrictMode, null, h(Feed, { channel, since })));
  window.unmount = () => root.unmount();
  window.client = client;
  window.errors = [];
  client.on("error", (error) => window.errors.push(String(error)));
  window.show("prices", "0");
</script>
"""

# React's UMD build defines window.React; this module hands its hooks to `import ... "react"`.
REACT_MODULE = """const React = window.React;
export const { createElement, StrictMode, useEffect, useState, useSyncExternalStore } = React;
export default React;
"""


@pytest_asyncio.fixture(loop_scope="module")
async def tidings_server() -> AsyncIterator[Server]:
    async with Server(Settings(host="127.0.0.1", port=0)) as server:
        yield server


async def publish(server_url: str, channel: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=server_url, timeout=5 * UNIT) as http:
        ids = []
        for n in range(count):
            response = await http.post(f"/channels/{channel}", json={"n": n})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        return ids


async def listed(page: Any) -> list[str]:
    ids: list[str] = await page.evaluate(
        "() => [...document.querySelectorAll('#list li')].map((li) => li.dataset.id)")
    return ids


async def wait_listed(page: Any, expected: list[str]) -> None:
    await page.wait_for_function(
        "(last) => document.querySelector(`#list li[data-id='${last}']`) !== null",
        arg=expected[-1], timeout=WAIT_MS)
    assert await listed(page) == expected


async def test_the_react_hook_recipe(page: Any, tidings_server: Server, tmp_path: Path) -> None:
    modules = install_tools()
    files = {
        "/test/react.html": REACT_APP,
        "/test/react-module.js": REACT_MODULE,
        "/test/use-tidings.js": recipe("react-hook", tidings_server.url),
    }
    pages = {}
    for path, text in files.items():
        pages[path] = tmp_path / path.rsplit("/", 1)[1]
        pages[path].write_text(text)
    pages["/test/react.js"] = modules / "react" / "umd" / "react.development.js"
    pages["/test/react-dom.js"] = modules / "react-dom" / "umd" / "react-dom.development.js"
    before = await publish(tidings_server.url, "prices", 3)
    # The app comes from one origin, the messages from the tidings server at another.
    async with Server(Settings(host="127.0.0.1", port=0), pages=pages) as app:
        await page.goto(f"{app.url}/test/react.html")
        # StrictMode mounts, unmounts and mounts again: the backlog is listed once.
        await wait_listed(page, before)
        await page.wait_for_function(
            "() => document.getElementById('state').textContent === 'open'", timeout=WAIT_MS)
        live = await publish(tidings_server.url, "prices", 2)
        await wait_listed(page, before + live)
        # Another channel: the list starts again, and "prices" is no longer read.
        await page.evaluate("window.show('news', undefined)")
        await page.wait_for_function("() => document.querySelectorAll('#list li').length === 0",
                                     timeout=WAIT_MS)
        news = await publish(tidings_server.url, "news", 2)
        await wait_listed(page, news)
        await publish(tidings_server.url, "prices", 1)
        more_news = await publish(tidings_server.url, "news", 1)
        await wait_listed(page, news + more_news)  # nothing of "prices" came in between
        # Unmounting unsubscribes: the page reads nothing, and nothing went wrong.
        await page.evaluate("window.unmount()")
        assert await page.evaluate("window.errors") == []


async def test_the_plain_dom_recipe_from_another_origin(page: Any, tidings_server: Server,
                                                        tmp_path: Path) -> None:
    html = tmp_path / "plain.html"
    html.write_text(recipe("plain-dom", tidings_server.url))
    # Another server, so another origin (another port), serves the page.
    async with Server(Settings(host="127.0.0.1", port=0), pages={"/plain.html": html}) as site:
        await page.goto(f"{site.url}/plain.html")
        await page.wait_for_function(
            "() => document.getElementById('state').textContent === 'open'", timeout=WAIT_MS)
        ids = await publish(tidings_server.url, "stocks", 2)
        published = await page.evaluate("window.publish({AAPL: 187.2})")
        assert published is None  # the recipe logs the id; the list shows the message
        await page.wait_for_function(
            "() => document.querySelectorAll('#messages li').length === 3", timeout=WAIT_MS)
        items = await page.evaluate(
            "() => [...document.querySelectorAll('#messages li')].map((li) => li.textContent)")
    # Newest first, as the recipe prepends.
    assert items[1:] == [f"stocks {ids[1]}: {json.dumps({'n': 1}, separators=(',', ':'))}",
                         f"stocks {ids[0]}: {json.dumps({'n': 0}, separators=(',', ':'))}"]
    assert items[0].endswith(': {"AAPL":187.2}')
