"""Presence in tidings.js, in a real browser (headless Chromium): on each technique.

The page imports /tidings.js and runs clients in its own script; a reader we did not write
(a ``websockets`` connection with ``?client=``) comes and goes, and the page must be told.
What the page believes (its client id, the members) is checked against the server's own
``GET /channels/{c}/presence``, read with httpx. Every wait is a page condition or a server
answer awaited under a timeout.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from browserkit import WAIT_MS, Served, browser, page, serving
from websockets.asyncio.client import connect as ws_connect

from conftest import UNIT

pytestmark = pytest.mark.asyncio(loop_scope="module")
__all__ = ["browser", "page"]  # fixtures

TECHNIQUES = ["websocket", "sse", "longpoll", "poll"]
FAST = {"pollInterval": 200, "longpollWait": 3000, "attemptTimeout": 3000,
        "backoff": {"initial": 100, "max": 500}, "shareTabs": False}
#: Presence on every channel; a poller that stopped is gone after this many seconds.
PRESENCE = {"presence": True, "presence_timeout": 2.0 * UNIT}

# The page's script: a client on "room" that logs what presence tells it.
START = """async ([options, presence]) => {
  const { connect } = await import("/tidings.js");
  const client = connect(location.origin, options);
  const log = { joins: [], leaves: [], lists: [], errors: [], states: [], messages: [] };
  client.on("error", (error) => log.errors.push(String(error)));
  client.on("state", (state, detail) => log.states.push([state, detail.transport]));
  const callbacks = presence ? {
    onJoin: (member) => log.joins.push(member),
    onLeave: (member) => log.leaves.push(member),
    onPresence: (list) => log.lists.push(list),
  } : {};
  window.subscription = client.subscribe("room", {
    onMessage: (message) => log.messages.push(message), ...callbacks });
  window.client = client;
  window.log = log;
}"""


async def start(page: Any, served: Served, presence: bool = True, **options: Any) -> None:
    await page.goto(f"{served.url}/healthz")  # any page of the origin; the script is ours
    await page.evaluate(START, [{**FAST, **options}, presence])


async def wait_for(page: Any, condition: str) -> None:
    await page.wait_for_function(f"() => {condition}", timeout=WAIT_MS)


async def members(served: Served, channel: str = "room") -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=served.url, timeout=5 * UNIT) as http:
        response = await http.get(f"/channels/{channel}/presence")
        assert response.status_code == 200, response.text
        listed: list[dict[str, Any]] = response.json()["members"]
        return listed


async def until_members(served: Served, check: Any) -> list[dict[str, Any]]:
    """The server's member list once ``check(members)`` holds (under a timeout)."""
    async with asyncio.timeout(10 * UNIT):
        while True:
            listed = await members(served)
            if check(listed):
                return listed
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_joins_leaves_and_presence_on_each_technique(page: Any, technique: str) -> None:
    async with serving(**PRESENCE) as served:
        await start(page, served, transports=[technique])
        # The first member list (itself, once the server counts it) arrives, and an id.
        await wait_for(page, "window.log.lists.length > 0 && window.client.clientId !== null")
        mine = await page.evaluate("window.client.clientId")
        listed = await until_members(served, lambda m: any(x["client"] == mine for x in m))
        assert [m["technique"] for m in listed if m["client"] == mine] == [technique]

        # A reader we did not write comes: the page is told, with who it is.
        guest = await ws_connect(served.url.replace("http", "ws") + "/channels/room?client=guest")
        await wait_for(page, "window.log.joins.some((m) => m.client === 'guest')")
        join = await page.evaluate("window.log.joins.find((m) => m.client === 'guest')")
        assert join["channel"] == "room" and join["technique"] == "websocket"
        assert join["user"] is None and isinstance(join["since"], int)

        # presence() from the subscription and from the client: both members.
        answer = await page.evaluate("window.subscription.presence()")
        assert {m["client"] for m in answer["members"]} == {mine, "guest"}
        assert (answer["count"], answer["users"], answer["more"]) == (2, 0, False)
        numbers = await page.evaluate("window.client.presence('room', {count: true})")
        assert numbers == {"channel": "room", "count": 2, "users": 0}

        # It goes: the page is told once.
        await guest.close()
        await wait_for(page, "window.log.leaves.some((m) => m.client === 'guest')")
        guests = "window.log.joins.filter((m) => m.client === 'guest').length"
        assert await page.evaluate(guests) == 1
        assert await page.evaluate("window.log.errors") == []
        assert await page.evaluate("window.client.clientId") == mine


async def test_presence_off_is_reported_and_reading_goes_on(page: Any) -> None:
    async with serving() as served:  # no presence on this server
        await start(page, served, transports=["sse"])
        await wait_for(page, "window.log.errors.length > 0")
        assert "presence_disabled" in (await page.evaluate("window.log.errors"))[0]
        await wait_for(page, "window.client.state === 'open'")
        async with httpx.AsyncClient(base_url=served.url, timeout=5 * UNIT) as http:
            response = await http.post("/channels/room", json={"n": 1})
            assert response.status_code == 201
        await wait_for(page, "window.log.messages.length === 1")
        rejected = await page.evaluate(
            "window.client.presence('room').then(() => 'resolved', (e) => e.code)")
        assert rejected == "presence_disabled"


async def test_the_client_id_survives_a_reconnect(page: Any) -> None:
    async with serving(**PRESENCE) as served:
        await start(page, served, transports=["websocket"])
        await wait_for(page, "window.client.clientId !== null && window.client.state === 'open'")
        mine = await page.evaluate("window.client.clientId")
        await served.restart()
        await wait_for(page, "window.log.states.filter(([s]) => s === 'open').length >= 2")
        assert await page.evaluate("window.client.clientId") == mine
        listed = await until_members(served, lambda m: [x["client"] for x in m] == [mine])
        assert listed[0]["technique"] == "websocket"


async def test_the_client_id_survives_a_technique_switch(page: Any) -> None:
    async with serving(**PRESENCE, transports=["sse", "longpoll", "poll"]) as served:
        await start(page, served, upgradeAfter=1000)
        await wait_for(page, "window.client.transport === 'sse' && window.client.clientId")
        mine = await page.evaluate("window.client.clientId")
        await until_members(served, lambda m: [(x["client"], x["technique"]) for x in m]
                            == [(mine, "sse")])
        # The server serves WebSocket again: the client upgrades, as the same member.
        served.settings = served.settings.replace(transports=TECHNIQUES)
        await served.restart()
        await wait_for(page, "window.client.transport === 'websocket'")
        assert await page.evaluate("window.client.clientId") == mine
        await until_members(served, lambda m: [(x["client"], x["technique"]) for x in m]
                            == [(mine, "websocket")])


async def test_a_poller_is_one_member_across_requests_then_times_out(page: Any) -> None:
    async with serving(**PRESENCE) as served:
        await start(page, served, presence=False, transports=["poll"])
        await wait_for(page, "window.client.clientId !== null")
        mine = await page.evaluate("window.client.clientId")
        # Many polls later, still one member: each poll named itself with ?client=.
        await wait_for(page, "window.client.stats.requests >= 6")
        assert [m["client"] for m in await members(served)] == [mine]
        await page.evaluate("window.client.close()")
        await until_members(served, lambda m: m == [])


@pytest.mark.parametrize("sharing", ["worker", "leader"])
async def test_tabs_sharing_a_connection_are_one_member(browser: Any, sharing: str) -> None:
    async with serving(**PRESENCE) as served:
        context = await browser.new_context()
        try:
            first, second = await context.new_page(), await context.new_page()
            for tab in (first, second):
                await start(tab, served, shareTabs=sharing)
                await wait_for(tab, "window.log.lists.length > 0 && window.client.clientId")
                assert await tab.evaluate("window.client.sharing") == sharing
            ids = {await tab.evaluate("window.client.clientId") for tab in (first, second)}
            assert len(ids) == 1
            (mine,) = ids
            answer = await second.evaluate("window.subscription.presence()")
            assert [m["client"] for m in answer["members"]] == [mine]
            guest = await ws_connect(served.url.replace("http", "ws") +
                                     "/channels/room?client=guest")
            for tab in (first, second):
                await wait_for(tab, "window.log.joins.some((m) => m.client === 'guest')")
            await guest.close()
            for tab in (first, second):
                await wait_for(tab, "window.log.leaves.some((m) => m.client === 'guest')")
            if sharing == "leader":
                # The leader tab closes: the other tab's new hub goes on with the same id.
                await first.close()
                await until_members(served, lambda m: [x["client"] for x in m] == [mine])
                await wait_for(second, "window.log.states.filter(([s]) => s === 'open')"
                                       ".length >= 2")
                assert await second.evaluate("window.client.clientId") == mine
                listed = await until_members(served, lambda m: len(m) == 1)
                assert listed[0]["client"] == mine
        finally:
            await context.close()


async def test_a_chosen_client_id_is_used_on_every_technique(page: Any) -> None:
    async with serving(**PRESENCE) as served:
        for technique in TECHNIQUES:
            await start(page, served, transports=[technique], clientId=f"kiosk-{technique}")
            await until_members(served, lambda m, t=technique: any(
                (x["client"], x["technique"]) == (f"kiosk-{t}", t) for x in m))
            await page.evaluate("window.client.close()")
        assert json.dumps(await page.evaluate("window.log.errors")) == "[]"


async def test_a_page_of_another_origin_learns_its_client_id_on_polls(page: Any) -> None:
    # The page comes from one server and polls another (another port: another origin), so
    # the Tidings-Client header must be exposed by CORS for the poller to name itself.
    async with serving() as pages, serving(**PRESENCE) as served:
        await page.goto(f"{pages.url}/healthz")
        await page.evaluate(START.replace("location.origin", "options.server"),
                            [{**FAST, "server": served.url, "transports": ["poll"]}, False])
        await wait_for(page, "window.client.clientId !== null")
        mine = await page.evaluate("window.client.clientId")
        await until_members(served, lambda m: [x["client"] for x in m] == [mine])
