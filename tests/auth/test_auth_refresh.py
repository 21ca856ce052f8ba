"""The Python client refreshes a JWT over the open WebSocket, before it expires.

With a token function, a WebSocket link reads the token's ``exp`` and sends an
``auth`` command with a fresh token ahead of it (docs/security.md): one
connection across many expiries. Opaque tokens, a function that fails and a
token the server refuses fall back to the server's 4001 close and a resume.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from authkit import AUTH, publish_ok, token

import tidings
from tidings import Backoff
from tidings.client import websocket
from tidings.client._token import refresh_delay, token_expiry
from tidings.client.events import StatusEvent
from tidings.testing import UNIT, http_client

#: Tokens live this long; the server cuts an expired one within about a second.
TTL = 3 * UNIT
FAST = {"backoff": Backoff(initial=0.01, maximum=0.1)}


def test_token_expiry_reads_the_exp_of_a_jwt_without_verifying() -> None:
    assert token_expiry(token(ttl=60, exp=1767225600)) == 1767225600.0
    assert token_expiry(token(key="another secret of at least 32 bytes", exp=12.5)) == 12.5

    def unsigned(payload: Any) -> str:
        middle = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        return f"eyJhbGciOiJIUzI1NiJ9.{middle}.signature"

    assert token_expiry(unsigned({"exp": 100})) == 100.0
    for opaque in ["", "opaque-token", "a.b", "a.b.c.d", "x..y", "x.!!!.y",
                   unsigned([1]), unsigned({"sub": "no exp"}), unsigned({"exp": "100"}),
                   unsigned({"exp": True}), unsigned({"exp": None}),
                   "x." + base64.urlsafe_b64encode(b"\xff\xfe").decode() + ".y"]:
        assert token_expiry(opaque) is None, opaque


def test_refresh_delay_is_early_but_not_too_early() -> None:
    assert refresh_delay(3600) == pytest.approx(3600 - 540)  # 15 % early
    assert refresh_delay(60) == pytest.approx(51)  # at least 5 s early
    assert refresh_delay(20) == pytest.approx(15)
    assert refresh_delay(3) == pytest.approx(1.5)  # but not before half the lifetime
    assert refresh_delay(1) == pytest.approx(0.5)
    for too_late in (0.9, 0, -10, float("nan")):
        assert refresh_delay(too_late) is None


async def read_while_publishing(server: Any, subscription: tidings.Subscription,
                                count: int) -> tuple[list[str], list[str]]:
    """Publish ``count`` messages ``TTL / 4`` apart; return (published, received) ids."""
    published: list[str] = []
    received: list[str] = []

    async def publish_across_expiries() -> None:
        async with http_client(server) as publisher:
            while len(published) < count:
                published.append(await publish_ok(publisher, "chat:a", len(published)))
                await asyncio.sleep(TTL / 4)

    async with asyncio.timeout(count * TTL / 4 + 20 * UNIT), asyncio.TaskGroup() as tasks:
        tasks.create_task(publish_across_expiries())
        async for item in subscription:
            assert isinstance(item, tidings.Message), item
            received.append(item.id)
            if len(received) == count:
                break
    return published, received


async def test_one_websocket_lives_through_several_expiries(make_server: Any) -> None:
    server = await make_server(auth=AUTH)
    minted: list[str] = []
    events: list[StatusEvent] = []

    async def fetch_token() -> str:
        minted.append(token(subscribe=["chat:a"], ttl=TTL))
        return minted[-1]

    async with tidings.connect(server.url, "websocket", token=fetch_token,
                               on_status=events.append, **FAST) as client:
        subscription = client.subscribe("chat:a", since="0")
        # 2.5 lifetimes: the first three tokens would each have been cut.
        published, received = await read_while_publishing(server, subscription, 10)
        assert received == published
        assert len(minted) >= 4, "the token was not refreshed ahead of each expiry"
        assert subscription.reconnects == 0
        assert events == [tidings.Connected("websocket", ("chat:a",))]
        assert all(token_expiry(m) is not None for m in minted)
    assert not client._tasks, "a refresh timer outlived the client"


@pytest.mark.parametrize("case", ["opaque", "function_fails", "token_refused"])
async def test_a_refresh_that_cannot_happen_falls_back_to_reconnect_and_resume(
        make_server: Any, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    server = await make_server(auth=AUTH)
    if case == "opaque":  # the server only takes JWTs: make the client unable to read them
        monkeypatch.setattr(websocket, "token_expiry", lambda token: None)
    calls = 0

    async def fetch_token() -> str:
        nonlocal calls
        calls += 1
        if calls == 2 and case == "function_fails":
            raise RuntimeError("the token service is down for a moment")
        grants = ["chat:other"] if calls == 2 and case == "token_refused" else ["chat:a"]
        return token(subscribe=grants, ttl=TTL)

    events: list[StatusEvent] = []
    async with tidings.connect(server.url, "websocket", token=fetch_token,
                               on_status=events.append, **FAST) as client:
        subscription = client.subscribe("chat:a", since="0")
        published, received = await read_while_publishing(server, subscription, 8)
        assert received == published
        assert subscription.reconnects >= 1
        disconnected = [e for e in events if isinstance(e, tidings.Disconnected)]
        assert disconnected and "4001" in disconnected[0].reason, events
        if case == "opaque":
            assert calls >= 2  # asked again only after the server's cut
    assert not client._tasks
