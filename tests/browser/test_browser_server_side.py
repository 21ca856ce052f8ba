"""tidings.js reading its user's channels (``subscribeServerSide``) in headless Chromium.

On each technique: a channel the application adds with ``server.subscribe_user``
while the page reads arrives (announced by ``onSubscribed``); a reconnection to a
restarted server resumes every channel exactly, one added while the page was away
included; ``unsubscribe_user`` stops a channel (``onUnsubscribed``) and nothing
more of it is handed on. Every wait is a page condition under a timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from browserkit import PAGES, WAIT_MS, browser, page

from tidings import ConnectRequest, Identity, Refuse, Server, Settings
from tidings.brokers.memory import MemoryBroker

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

TECHNIQUES = ["websocket", "sse", "longpoll", "poll"]
FAST = {"pollInterval": 200, "longpollWait": 3000, "attemptTimeout": 3000,
        "backoff": {"initial": 100, "max": 300}, "shareTabs": "off"}
SERVED = {**PAGES, "/test/serverside": Path(__file__).parent / "pages" / "serverside.html"}


class Node:
    """A server whose ``on_connect`` names the user of the ``user`` cookie; restartable on
    the same port with the same broker (the same logs and user sets)."""

    def __init__(self) -> None:
        self.broker = MemoryBroker()
        self.settings = Settings(host="127.0.0.1", port=0)
        self.server: Server | None = None
        self.open = asyncio.Event()  # cleared: on_connect holds every connection back
        self.open.set()

    async def start(self) -> Server:
        server = Server(self.settings, broker=self.broker,
                        pages=SERVED)

        @server.on_connect
        async def on_connect(request: ConnectRequest) -> Identity | None:
            await self.open.wait()
            user = request.cookies.get("user")
            return Identity(user) if user else None

        @server.on_rpc
        async def on_rpc(user: str | None, method: str, data: Any) -> Any:
            if method == "secret":
                raise Refuse("not for you", code="not_yours")
            return {"user": user, "method": method, "data": data}

        await server.start()
        self.settings = self.settings.replace(port=server.port)
        self.server = server
        return server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.aclose()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"


@asynccontextmanager
async def node() -> AsyncIterator[Node]:
    served = Node()
    await served.start()
    try:
        yield served
    finally:
        await served.stop()


async def open_page(page: Any, served: Node, transports: list[str], **query: str) -> None:
    await page.context.add_cookies([{"name": "user", "value": "alice", "url": served.url}])
    args = {"transports": ",".join(transports), "options": json.dumps(FAST), **query}
    await page.goto(f"{served.url}/test/serverside?{urlencode(args)}")


async def open_shared_tab(tab: Any, served: Node, mode: str, **query: str) -> None:
    """Open the page in ``tab`` as alice, sharing one WebSocket between tabs (``mode``);
    wait until it reads (and, unless ``read=no``, was told of a channel of hers)."""
    await tab.context.add_cookies([{"name": "user", "value": "alice", "url": served.url}])
    args = {"transports": "websocket", "options": json.dumps({**FAST, "shareTabs": mode}),
            **query}
    await tab.goto(f"{served.url}/test/serverside?{urlencode(args)}")
    told = "" if query.get("read") == "no" else "window.log.subscribed.length >= 1 && "
    await wait_for(tab, f"{told}window.client.state === 'open'")


async def wait_for(page: Any, condition: str) -> None:
    await page.wait_for_function(f"() => {condition}", timeout=WAIT_MS)


async def data_of(page: Any, channel: str) -> list[Any]:
    return list(await page.evaluate(
        "(c) => window.log.messages.filter((m) => m.channel === c).map((m) => m.data)", channel))


async def wait_for_data(page: Any, channel: str, expected: list[Any]) -> None:
    await wait_for(page, f"window.log.messages.filter((m) => m.channel === {json.dumps(channel)})"
                         f".length >= {len(expected)}")
    assert await data_of(page, channel) == expected


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_reads_added_channels_resumes_them_and_stops_removed_ones(
        page: Any, technique: str) -> None:
    async with node() as served:
        assert served.server is not None
        await served.server.subscribe_user("alice", "inbox:alice")
        await open_page(page, served, [technique])
        await wait_for(page, "window.client.state === 'open' && "
                             "window.log.subscribed.some((s) => s.channel === 'inbox:alice')")
        assert await page.evaluate("window.client.transport") == technique
        await served.server.publish("inbox:alice", "hello")
        await wait_for_data(page, "inbox:alice", ["hello"])

        # Added while the page reads: announced, then its messages.
        await served.server.subscribe_user("alice", "room:b")
        if technique in ("websocket", "sse"):
            await wait_for(page, "window.log.subscribed.some((s) => s.channel === 'room:b')")
        await served.server.publish("room:b", "one")
        await wait_for_data(page, "room:b", ["one"])
        subscribed = await page.evaluate("window.log.subscribed")
        assert [s["channel"] for s in subscribed] == ["inbox:alice", "room:b"]

        # The server restarts: published and added meanwhile, all resumed exactly.
        await served.stop()
        server = await served.start()
        await server.publish("room:b", "two")
        await server.publish("inbox:alice", "while away")
        await server.subscribe_user("alice", "room:c")
        await server.publish("room:c", "three")
        await wait_for_data(page, "room:c", ["three"])
        await server.publish("room:b", "four")
        await wait_for_data(page, "room:b", ["one", "two", "four"])
        assert await data_of(page, "inbox:alice") == ["hello", "while away"]

        # Removed: announced, and nothing more of it is handed on. (A long poll parked
        # before the removal answers with the set it was asked with: "five" may come.)
        await server.unsubscribe_user("alice", "room:b")
        await server.publish("room:b", "five")
        await server.publish("room:c", "six")
        await wait_for_data(page, "room:c", ["three", "six"])
        await wait_for(page, "window.log.unsubscribed.length >= 1")
        await server.publish("room:b", "seven")
        await server.publish("room:c", "eight")
        await wait_for_data(page, "room:c", ["three", "six", "eight"])
        log = await page.evaluate("window.log")
        channels = await page.evaluate("window.mine.serverChannels")
        await page.goto("about:blank")
    assert log["unsubscribed"] == [{"channel": "room:b"}]
    expected = [["one", "two", "four"]] + (
        [["one", "two", "four", "five"]] if technique == "longpoll" else [])
    assert [m["data"] for m in log["messages"] if m["channel"] == "room:b"] in expected
    assert sorted(channels) == ["inbox:alice", "room:c"]
    assert log["gaps"] == [] and log["errors"] == []


async def test_a_channel_removed_while_away_is_announced_on_return(page: Any) -> None:
    async with node() as served:
        assert served.server is not None
        await served.server.subscribe_user("alice", "room:a")
        await served.server.subscribe_user("alice", "room:b")
        await open_page(page, served, ["websocket"])
        await wait_for(page, "window.log.subscribed.length >= 2 && "
                             "window.client.state === 'open'")
        served.open.clear()  # the page's reconnection waits in on_connect
        await served.stop()
        server = await served.start()
        await server.unsubscribe_user("alice", "room:a")
        served.open.set()
        await server.publish("room:b", "still here")
        await wait_for_data(page, "room:b", ["still here"])
        await wait_for(page, "window.log.unsubscribed.length >= 1")
        assert await page.evaluate("window.log.unsubscribed") == [{"channel": "room:a"}]
        await page.goto("about:blank")


async def test_switching_technique_keeps_the_positions(page: Any) -> None:
    """The WebSocket fails over to SSE: no message twice, none missed."""
    async with node() as served:
        assert served.server is not None
        await served.server.subscribe_user("alice", "room:a")
        await open_page(page, served, ["websocket", "sse"])
        await wait_for(page, "window.client.transport === 'websocket'")
        await served.server.publish("room:a", 1)
        await wait_for_data(page, "room:a", [1])
        # The WebSocket stops working (the server turns it off); SSE takes over.
        await served.stop()
        served.settings = served.settings.replace(transports=("sse", "longpoll", "poll"))
        server = await served.start()
        await server.publish("room:a", 2)
        await wait_for_data(page, "room:a", [1, 2])
        await page.goto("about:blank")


async def test_rpc_result_refusal_and_no_websocket(page: Any) -> None:
    async with node() as served:
        await open_page(page, served, ["websocket"])
        answer = await page.evaluate("window.call('typing', {room: 'lobby'})")
        refused = await page.evaluate("window.call('secret')")
        bad = await page.evaluate("window.call('')")
        await page.goto("about:blank")
        await open_page(page, served, ["sse"])
        await wait_for(page, "window.client.state === 'open'")
        on_sse = await page.evaluate("window.call('typing', {})")
        await page.goto("about:blank")
    assert answer == {"result": {"user": "alice", "method": "typing", "data": {"room": "lobby"}}}
    assert refused["error"]["name"] == "TidingsError"
    assert refused["error"]["code"] == "not_yours"
    assert "not for you" in refused["error"]["message"]
    assert bad["error"]["code"] == "client_error"
    assert on_sse["error"]["code"] == "not_websocket"


async def test_rpc_without_a_hook_is_no_rpc(page: Any) -> None:
    server = Server(Settings(host="127.0.0.1", port=0), pages=SERVED)
    async with server:
        await page.goto(f"{server.url}/test/serverside?read=no&transports=websocket&"
                        + urlencode({"options": json.dumps(FAST)}))
        # No channel to read: the client opens no WebSocket, so rpc says why.
        idle = await page.evaluate("window.call('anything')")
        await page.evaluate("window.client.subscribe('news')")
        no_rpc = await page.evaluate("window.call('anything')")
        await page.goto("about:blank")
    assert idle["error"]["code"] == "not_websocket"
    assert no_rpc["error"]["code"] == "no_rpc"


@pytest.mark.parametrize("mode", ["worker", "leader"])
async def test_tabs_sharing_a_connection_read_the_users_channels(page: Any, mode: str) -> None:
    """Two tabs, one connection (a SharedWorker, or a leader tab): both are told of each
    channel added and get its messages; a tab that joins later learns the channels read
    already; rpc goes over the shared WebSocket; a tab's unsubscribe leaves the other's."""
    context = page.context
    async with node() as served:
        assert served.server is not None
        await served.server.subscribe_user("alice", "inbox:alice")
        await open_shared_tab(page, served, mode)
        assert await page.evaluate("window.client.sharing") == mode
        other = await context.new_page()
        await open_shared_tab(other, served, mode)
        await served.server.subscribe_user("alice", "room:b")
        await served.server.publish("room:b", "one")
        await served.server.publish("inbox:alice", "hi")
        for tab in (page, other):
            await wait_for_data(tab, "room:b", ["one"])
            await wait_for_data(tab, "inbox:alice", ["hi"])
        answer = await other.evaluate("window.call('typing', {room: 'b'})")
        refused = await other.evaluate("window.call('secret')")
        await other.evaluate("window.mine.unsubscribe()")
        await served.server.publish("room:b", "two")
        await wait_for_data(page, "room:b", ["one", "two"])
        assert await data_of(other, "room:b") == ["one"]
        subscribed = await other.evaluate("window.log.subscribed")
        await other.close()
        await page.goto("about:blank")
    assert [s["channel"] for s in subscribed] == ["inbox:alice", "room:b"]
    assert answer == {"result": {"user": "alice", "method": "typing", "data": {"room": "b"}}}
    assert refused["error"]["code"] == "not_yours"


@pytest.mark.parametrize("mode", ["worker", "leader"])
async def test_a_tab_behind_the_shared_connection_loses_nothing(page: Any, mode: str) -> None:
    """A tab that joins the shared connection behind it on a channel (as every tab but the
    first does when a new leader takes over from their cursors) is read from its own
    position: it gets what it had not, the tab ahead gets nothing twice."""
    context = page.context
    async with node() as served:
        assert served.server is not None
        await served.server.subscribe_user("alice", "inbox:alice")
        await open_shared_tab(page, served, mode)
        ids = [(await served.server.publish("inbox:alice", n)).id for n in ("a", "b", "c")]
        await wait_for_data(page, "inbox:alice", ["a", "b", "c"])
        other = await context.new_page()
        await open_shared_tab(other, served, mode, read="no")
        await other.evaluate("""(since) => { window.mine = window.client.subscribeServerSide({
            since, onMessage: (m) => window.log.messages.push(m),
            onGap: (g) => window.log.gaps.push(g),
            onSubscribed: (e) => window.log.subscribed.push(e) }); }""",
                             f"inbox:alice={ids[0]}")
        await wait_for_data(other, "inbox:alice", ["b", "c"])
        await served.server.publish("inbox:alice", "d")
        await wait_for_data(other, "inbox:alice", ["b", "c", "d"])
        await wait_for_data(page, "inbox:alice", ["a", "b", "c", "d"])
        logs = [await tab.evaluate("window.log") for tab in (page, other)]
        await other.close()
        await page.goto("about:blank")
    for log in logs:
        assert log["gaps"] == [] and log["errors"] == []


@pytest.mark.parametrize("mode", ["worker", "leader"])
async def test_closing_the_first_tab_mid_stream_loses_none_of_the_users_channels(
        page: Any, mode: str) -> None:
    """Three tabs read the user's channels over one connection; the first (the leader, in
    leader mode) closes while messages flow: the others get every message once, in order."""
    context = page.context
    async with node() as served:
        server = served.server
        assert server is not None
        await server.subscribe_user("alice", "ticks:alice")
        tabs = [page] + [await context.new_page() for _ in range(2)]
        for tab in tabs:
            await open_shared_tab(tab, served, mode)

        async def stream() -> list[int]:
            sent = []
            for n in range(60):
                await server.publish("ticks:alice", n)
                sent.append(n)
                await asyncio.sleep(0.02)  # a steady stream, not a wait for anything
            return sent

        flowing = asyncio.create_task(stream())
        try:
            await wait_for(tabs[1], "window.log.messages.length >= 10")
            await page.goto("about:blank")  # the first tab goes away
            sent = await flowing
        finally:
            if not flowing.done():
                flowing.cancel()
        await server.publish("ticks:alice", "last")
        for tab in tabs[1:]:
            await wait_for_data(tab, "ticks:alice", [*sent, "last"])
            assert await tab.evaluate("window.log.gaps") == []
        for tab in tabs[1:]:
            await tab.close()


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_channel_added_to_an_empty_set_loses_nothing(page: Any, technique: str) -> None:
    """Once the server named an empty set, the client's cursor is "" (not none): a channel
    added between two polls is read from where it was added, not from its end."""
    async with node() as served:
        assert served.server is not None
        await open_page(page, served, [technique])
        await wait_for(page, "window.client.state === 'open'")
        await served.server.subscribe_user("alice", "room:x")
        await served.server.publish("room:x", "first")
        await wait_for_data(page, "room:x", ["first"])
        subscribed = await page.evaluate("window.log.subscribed.map((s) => s.channel)")
        await page.goto("about:blank")
    assert subscribed == ["room:x"]
