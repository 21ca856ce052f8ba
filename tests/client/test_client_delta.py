"""The Python client with ``delta=True`` and ``latest=True``, on every technique.

Deltas are applied inside the client: the application gets whole messages,
the same as without; a delta whose base the connection lacks makes it resume.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from clientkit import TECHNIQUES, StatusLog, fast_client, take

from tidings import Connected, Gap, Message, Server
from tidings.demo.feed import Market
from tidings.testing import http_client, publish_many
from tidings.wire import delta


def ticks(count: int) -> list[dict[str, Any]]:
    market = Market(seed=3)
    return [market.tick() for _ in range(count)]


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Each delta the client applies."""
    calls: list[Any] = []
    apply = delta.apply

    def counting(base: Any, patch: Any) -> Any:
        calls.append(patch)
        return apply(base, patch)

    monkeypatch.setattr(delta, "apply", counting)
    return calls


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_deltas_are_applied_and_whole_messages_delivered(
        server: Server, transport: str, applied: list[Any]) -> None:
    values = ticks(8)
    status = StatusLog()
    async with fast_client(server.url, transport, on_status=status) as client:
        retained = [await client.publish("stocks", value) for value in values[:4]]
        subscription = client.subscribe("stocks", since="0", delta=True)
        first = await take(subscription, 4)  # the backlog: one page, or a stream
        assert [m.data for m in first if isinstance(m, Message)] == values[:4]
        assert [m.id for m in first] == retained
        live = [await client.publish("stocks", value) for value in values[4:]]
        rest = await take(subscription, 4)
        assert [(m.id, m.data) for m in rest if isinstance(m, Message)] == list(
            zip(live, values[4:], strict=True))
        assert len(applied) >= 3  # the backlog after its first message, at least
        # what the application is handed is its own: changing it changes no later message
        assert isinstance(rest[0], Message)
        rest[0].data["quotes"].clear()
        more = await client.publish("stocks", values[0])
        (last,) = await take(subscription, 1)
        assert isinstance(last, Message) and (last.id, last.data) == (more, values[0])


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_latest_reads_the_newest_message_and_counts_the_others(
        server: Server, transport: str) -> None:
    async with http_client(server) as http:
        ids = await publish_many(http, "prices", [1, 2, 3, 4])
    async with fast_client(server.url, transport) as client:
        subscription = client.subscribe("prices", since=ids[0], latest=True)
        gap, newest = await take(subscription, 2)
        assert isinstance(gap, Gap) and gap.reason == "latest" and gap.missed == 2
        assert isinstance(newest, Message) and (newest.id, newest.data) == (ids[3], 4)


async def test_a_delta_against_a_base_the_connection_lacks_makes_it_resume(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    values = ticks(3)
    status = StatusLog()
    async with fast_client(server.url, "websocket", on_status=status) as client:
        ids = [await client.publish("stocks", value) for value in values]
        forgot = False
        from tidings.client import _session

        whole = _session.Session._whole

        def forgetful(self: _session.Session, value: Any) -> Any:
            nonlocal forgot
            if "delta" in value and not forgot:
                forgot = True
                self._bases.clear()  # as if the base had been lost
            return whole(self, value)

        monkeypatch.setattr(_session.Session, "_whole", forgetful)
        subscription = client.subscribe("stocks", since="0", delta=True)
        items = await take(subscription, 3)
        assert [(m.id, m.data) for m in items if isinstance(m, Message)] == list(
            zip(ids, values, strict=True))
        assert forgot and subscription.reconnects >= 1
        await status.wait_for(Connected, transport="websocket")


async def test_a_technique_switch_under_deltas_loses_and_repeats_nothing(
        make_server: Any, monkeypatch: pytest.MonkeyPatch, applied: list[Any]) -> None:
    """auto on SSE (the WebSocket refused once) upgrades to a WebSocket mid-stream: the new
    connection starts whole, deltas follow, every value arrives once, in order."""
    from test_client_auto import refuse_upgrades

    from tidings import TransportChanged
    from tidings.testing import UNIT

    server = await make_server(heartbeat_interval=0.05 * UNIT)
    refuse_upgrades(monkeypatch, times=1)
    market = Market(seed=5)
    status = StatusLog()
    sent: list[Any] = []
    async with fast_client(server.url, upgrade_after=0.3 * UNIT, on_status=status) as client:
        subscription = client.subscribe("stocks", since="0", delta=True)
        await status.wait_for(Connected, transport="sse")
        upgrade = asyncio.ensure_future(status.wait_for(TransportChanged, transport="websocket"))
        async with asyncio.timeout(5 * UNIT):
            while not upgrade.done() or len(sent) < 20:
                sent.append(market.tick())
                await client.publish("stocks", sent[-1])
                await asyncio.sleep(0.01)  # lets time pass for the upgrade, asserts nothing
        await upgrade
        sent.append(market.tick())
        await client.publish("stocks", sent[-1])
        received = await take(subscription, len(sent))
        assert [m.data for m in received if isinstance(m, Message)] == sent
        assert subscription.transport == "websocket"
        assert applied  # deltas were applied on the way
