"""tidings.js and a plain EventSource in a real browser (headless Chromium).

Every wait is a page condition awaited under a timeout; ids are checked
exactly (nothing lost, nothing twice, in order) after a sentinel message
published last has arrived.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from browserkit import WAIT_MS, BufferingProxy, Served, browser, page, serving

from conftest import UNIT
from tidings.errors import CloseCode, Closing

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

TECHNIQUES = ["websocket", "sse", "longpoll", "poll"]
#: Fast settings so that tests take seconds; every one is a documented option.
FAST = {"pollInterval": 200, "longpollWait": 3000, "attemptTimeout": 3000,
        "backoff": {"initial": 100, "max": 500}}


async def publish(served: Served, channel: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=served.url, timeout=5 * UNIT) as client:
        ids = []
        for n in range(count):
            response = await client.post(f"/channels/{channel}", json={"n": n})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        return ids


async def open_client(page: Any, served: Served, channels: list[str], *,
                      server: str | None = None, transports: list[str] | None = None,
                      since: str | None = "0", **options: Any) -> None:
    query = {"channels": ",".join(channels), "options": json.dumps({**FAST, **options})}
    if transports:
        query["transports"] = ",".join(transports)
    if since is not None:
        query["since"] = since
    if server:
        query["server"] = server
    await page.goto(f"{served.url}/test/client?{urlencode(query)}")


async def wait_for(page: Any, condition: str) -> None:
    await page.wait_for_function(f"() => {condition}", timeout=WAIT_MS)


async def received(page: Any, channel: str) -> list[str]:
    ids: list[str] = await page.evaluate(
        "(channel) => window.log.messages.filter((m) => m.channel === channel).map((m) => m.id)",
        channel)
    return ids


async def wait_for_ids(page: Any, channel: str, expected: list[str]) -> None:
    """The page has received exactly ``expected`` on ``channel``, once each, in order."""
    await wait_for(page, "window.log.messages.filter((m) => m.channel === "
                         f"{json.dumps(channel)}).length >= {len(expected)}")
    assert await received(page, channel) == expected


async def test_the_server_serves_the_module(page: Any) -> None:
    async with serving() as served:
        await page.goto(f"{served.url}/test/client?channels=x")
        await wait_for(page, "window.client !== undefined")
        assert await page.evaluate("window.client.state") in ("connecting", "open")


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_receives_and_publishes_on_each_forced_technique(page: Any, technique: str) -> None:
    async with serving() as served:
        before_a = await publish(served, "a", 3)
        before_b = await publish(served, "b", 2)
        await open_client(page, served, ["a", "b"], transports=[technique])
        await wait_for(page, "window.client.state === 'open'")
        assert await page.evaluate("window.client.transport") == technique
        await wait_for_ids(page, "a", before_a)
        after_a = await publish(served, "a", 3)
        from_page = await page.evaluate("window.client.publish('b', {from: 'the page'})")
        after_b = await publish(served, "b", 1)
        await wait_for_ids(page, "a", before_a + after_a)
        await wait_for_ids(page, "b", [*before_b, from_page, *after_b])
        data = await page.evaluate("window.log.messages.find((m) => m.id === '%s').data"
                                   % from_page)
        assert data == {"from": "the page"}
        stats = await page.evaluate("window.client.stats")
        assert stats["messages"] == 10
        assert stats["requests"] >= 1 and stats["bytesReceived"] > 0
        assert await page.evaluate("window.log.gaps") == []


@pytest.mark.parametrize(
    ("enabled", "expected"),
    [(("sse", "longpoll", "poll"), "sse"), (("longpoll", "poll"), "longpoll"),
     (("poll",), "poll")],
)
async def test_falls_back_to_what_the_server_allows(page: Any, enabled: tuple[str, ...],
                                                    expected: str) -> None:
    async with serving(transports=enabled) as served:
        await open_client(page, served, ["f"])
        await wait_for(page, "window.client.state === 'fallback'")
        assert await page.evaluate("window.client.transport") == expected
        states = await page.evaluate("window.log.states")
        assert states[-1]["transport"] == expected
        assert "transport_disabled" in states[-1]["reason"]
        ids = await publish(served, "f", 3)
        await wait_for_ids(page, "f", ids)


async def test_a_page_limited_to_turned_off_techniques_is_told_why(page: Any) -> None:
    """Forced onto techniques the server turned off, the page gets one error saying so."""
    async with serving(transports=("poll",)) as served:
        await open_client(page, served, ["off"], transports=["websocket", "sse"])
        await wait_for(page, "window.log.errors.length >= 1")
        errors = await page.evaluate("window.log.errors")
        assert len(errors) == 1 and "serves none of the techniques" in errors[0], errors
        assert "websocket, sse" in errors[0]
        assert await page.evaluate("window.client.state") == "connecting"


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_resumes_after_a_server_restart(page: Any, technique: str) -> None:
    async with serving() as served:
        first = await publish(served, "r", 3)
        await open_client(page, served, ["r"], transports=[technique])
        await wait_for_ids(page, "r", first)
        await served.stop()
        await wait_for(page, "window.client.state === 'reconnecting'")
        assert served.server is not None
        # Published while the server is down: kept in the log, delivered on resume.
        while_down = [(await served.server.broker.publish("r", b'{"down":true}')).id
                      for _ in range(2)]
        await served.restart()
        await wait_for(page, "window.client.state === 'open'")
        after = await publish(served, "r", 2)
        await wait_for_ids(page, "r", first + while_down + after)
        assert await page.evaluate("window.client.transport") == technique
        states = [s["state"] for s in await page.evaluate("window.log.states")]
        assert states[0] == "open" and "reconnecting" in states and states[-1] == "open"


async def test_buffered_event_stream_falls_back_then_upgrades(page: Any) -> None:
    async with serving() as served, BufferingProxy(served.port) as proxy:
        await open_client(page, served, ["b"], server=proxy.url, transports=["sse", "longpoll"],
                          sseFirstEventTimeout=500, upgradeAfter=1500)
        await wait_for(page, "window.client.state === 'fallback'")
        assert await page.evaluate("window.client.transport") == "longpoll"
        states = await page.evaluate("window.log.states")
        assert "buffers" in states[-1]["reason"]
        first = await publish(served, "b", 2)
        await wait_for_ids(page, "b", first)
        # After upgradeAfter it tries SSE again, which the proxy now lets through.
        await wait_for(page, "window.client.state === 'open'")
        assert await page.evaluate("window.client.transport") == "sse"
        assert proxy.buffered == 1
        after = await publish(served, "b", 2)
        await wait_for_ids(page, "b", first + after)


async def test_gap_reaches_on_gap(page: Any) -> None:
    async with serving(history_size=2) as served:
        ids = await publish(served, "g", 5)
        await open_client(page, served, ["g"], since=ids[0], transports=["sse"])
        await wait_for_ids(page, "g", ids[3:])
        gaps = await page.evaluate("window.log.gaps")
        assert gaps == [{"channel": "g", "from": ids[0], "to": ids[2], "reason": "expired",
                         "missed": 2}]


@pytest.mark.parametrize("technique", ["websocket", "sse"])
async def test_broker_status_reaches_on_broker(page: Any, technique: str) -> None:
    """The page hears that the message store went away and came back; it stays open."""
    async with serving() as served:
        await open_client(page, served, ["s"], transports=[technique])
        await wait_for(page, "window.client.state === 'open'")
        server = served.server
        assert server is not None and server.broker.on_status is not None
        server.broker.on_status(False, "Redis at test: connection refused")
        await wait_for(page, "window.log.broker.length === 1")
        server.broker.on_status(True, "Redis at test")
        await wait_for(page, "window.log.broker.length === 2")
        statuses = await page.evaluate("window.log.broker")
        assert [s["broker"] for s in statuses] == ["unavailable", "ok"]
        assert "nothing is lost yet" in statuses[0]["message"]
        ids = await publish(served, "s", 1)
        await wait_for_ids(page, "s", ids)
        assert [s["state"] for s in await page.evaluate("window.log.states")] == ["open"]


@pytest.mark.parametrize(
    ("path", "channels"),
    [("/channels/e?since=0", ["e"]), ("/subscribe?channel=e&channel=f&since=0", ["e", "f"])],
    ids=["one-channel", "multi-channel"],
)
async def test_plain_eventsource_resumes_with_last_event_id(page: Any, path: str,
                                                            channels: list[str]) -> None:
    async with serving(sse_retry_ms=100) as served:
        expected: dict[str, list[str]] = {c: await publish(served, c, 2) for c in channels}

        async def check() -> None:
            for channel in channels:
                await wait_for(page, "window.log.messages.filter((m) => m.channel === "
                                     f"'{channel}').length >= {len(expected[channel])}")
            messages = await page.evaluate("window.log.messages")
            for channel in channels:
                assert [m["id"] for m in messages if m["channel"] == channel] == expected[channel]

        await page.goto(f"{served.url}/test/eventsource?{urlencode({'path': path})}")
        await check()
        # The server cuts the stream; the browser reconnects with Last-Event-ID.
        assert served.server is not None
        for stream in served.server.registry.streams():
            stream.close_with(Closing("cut_by_test", CloseCode.GOING_AWAY,
                                      "the test cut this stream"))
        await wait_for(page, "window.log.opens >= 2")
        for channel in channels:
            expected[channel] += await publish(served, channel, 2)
        await check()
        # The server restarts; what is published meanwhile arrives after the reconnection.
        await served.stop()
        await wait_for(page, "window.log.errors >= 2")
        for channel in channels:
            message = await served.server.broker.publish(channel, b'"while down"')
            expected[channel].append(message.id)
        await served.restart()
        await wait_for(page, "window.log.opens >= 3")
        for channel in channels:
            expected[channel] += await publish(served, channel, 1)
        await check()
        if len(channels) > 1:  # the multi-channel cursor is the event id
            last_id = (await page.evaluate("window.log.ids")).pop()
            assert last_id == ",".join(f"{c}={expected[c][-1]}" for c in channels)
