"""transport="auto": WebSocket first, falling back in order, and coming back later."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from clientkit import UNIT, StatusLog, fast_client, seqs, take
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from tidings import Connected, Message, Server, TransportChanged
from tidings.client import AUTO_ORDER, _client, websocket
from tidings.client._session import Session, TechniqueFailed

ServerFactory = Callable[..., Awaitable[Server]]
LinkOpen = Callable[..., Awaitable[websocket.Link]]


def refuse_upgrades(monkeypatch: pytest.MonkeyPatch, times: int = 10**9) -> list[int]:
    """Make the WebSocket handshake fail like a proxy without WebSocket support (426).

    Returns a list that counts the attempts; after ``times`` they succeed again.
    """
    real: LinkOpen = websocket.Link.open.__func__  # type: ignore[attr-defined]
    attempts: list[int] = []

    async def open_or_refuse(cls: type[websocket.Link], client: Any,
                             private: bool = False) -> websocket.Link:
        attempts.append(1)
        if len(attempts) <= times:
            raise InvalidStatus(Response(426, "Upgrade Required", Headers(), b"no websockets"))
        return await real(cls, client, private)

    monkeypatch.setattr(websocket.Link, "open", classmethod(open_or_refuse))
    return attempts


async def test_a_refused_upgrade_falls_back_to_sse(server: Server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_upgrades(monkeypatch)
    status = StatusLog()
    async with fast_client(server.url, on_status=status) as client:
        subscription = client.subscribe("feed", since="0")
        change = await status.wait_for(TransportChanged)
        assert (change.previous, change.transport) == ("websocket", "sse")
        assert "426" in change.reason
        message_id = await client.publish("feed", 1)  # over HTTP: no WebSocket
        assert (await take(subscription, 1))[0].id == message_id
        assert subscription.transport == "sse"


async def test_a_silent_technique_is_given_up_after_connect_timeout(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hang(cls: object, client: object, private: bool = False) -> websocket.Link:
        await asyncio.Event().wait()
        raise AssertionError

    monkeypatch.setattr(websocket.Link, "open", classmethod(hang))
    status = StatusLog()
    async with fast_client(server.url, connect_timeout=0.2 * UNIT, on_status=status) as client:
        client.subscribe("feed")
        change = await status.wait_for(TransportChanged)
        assert change.transport == "sse"
        assert "not working after" in change.reason


@pytest.mark.parametrize("failing", [1, 2, 3])
async def test_fallbacks_go_in_order(server: Server, monkeypatch: pytest.MonkeyPatch,
                                     failing: int) -> None:
    async def broken(session: Session) -> None:
        raise TechniqueFailed(f"{session.technique} blocked by the test")

    for technique in AUTO_ORDER[:failing]:
        monkeypatch.setitem(_client._READERS, technique, broken)
    expected = AUTO_ORDER[failing]
    status = StatusLog()
    async with fast_client(server.url, on_status=status) as client:
        subscription = client.subscribe("feed", since="0")
        await status.wait_for(Connected, transport=expected)
        message_id = await client.publish("feed", "x")
        assert (await take(subscription, 1))[0].id == message_id
        assert subscription.transport == expected


async def test_auto_tries_the_better_technique_again_later(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await make_server(heartbeat_interval=0.05 * UNIT)
    refuse_upgrades(monkeypatch, times=1)
    status = StatusLog()
    async with fast_client(server.url, upgrade_after=0.3 * UNIT, on_status=status) as client:
        subscription = client.subscribe("feed", since="0")
        await status.wait_for(Connected, transport="sse")
        # Publish a steady stream (unread: the subscription buffers it) until
        # the switch is done, so messages are in flight across it.
        upgrade = asyncio.ensure_future(status.wait_for(TransportChanged, transport="websocket"))
        published = 0
        async with asyncio.timeout(5 * UNIT):
            while not upgrade.done() or published < 20:
                published += 1
                await client.publish("feed", published)
                await asyncio.sleep(0.01)  # lets time pass for the upgrade, asserts nothing
        change = await upgrade
        published += 1
        await client.publish("feed", published)
        received = await take(subscription, published)
        assert all(isinstance(item, Message) for item in received)
        assert change.previous == "sse"
        assert seqs(received) == list(range(1, published + 1))
        assert subscription.transport == "websocket"
