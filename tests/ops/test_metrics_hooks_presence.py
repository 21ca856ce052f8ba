"""Hook latency and failures, and presence members per namespace, in ``/metrics``.

Clients we did not write (httpx, the ``websockets`` package) make the hooks
run and the members join; each scrape is parsed with prometheus_client's parser.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_ops_metrics import scrape, totals, value
from websockets.exceptions import InvalidStatus

from conftest import ServerFactory
from tidings import ConnectRequest, Refuse, Server
from tidings.core.presence import PresencePolicy
from tidings.testing import UNIT, http_client, open_ws


async def test_hook_seconds_by_hook_and_failures_by_reason(server: Server) -> None:
    server.hooks.timeout = 0.2 * UNIT
    release = asyncio.Event()

    @server.on_connect
    async def on_connect(request: ConnectRequest) -> Any:
        behaviour = request.headers.get("x-test", "allow")
        if behaviour == "slow":
            await release.wait()
        if behaviour == "raise":
            raise RuntimeError("the application's database is down")
        if behaviour == "refuse":
            raise Refuse("not you")
        if behaviour == "odd":
            return 42  # not an Identity
        return None

    @server.on_subscribe
    async def on_subscribe(user: str | None, channel: str) -> bool:
        return True

    samples = await scrape(server)
    assert "tidings_hook_latency_seconds_count" not in {name for name, _ in samples}
    try:
        async with http_client(server) as http:
            for behaviour, status in (("allow", 200), ("allow", 200), ("refuse", 403),
                                      ("raise", 503), ("slow", 503), ("odd", 503)):
                answer = await http.get("/channels/c", headers={"x-test": behaviour})
                assert answer.status_code == status, (behaviour, answer.text)
        with pytest.raises(InvalidStatus) as refused:
            async with open_ws(server, "/channels/c", additional_headers={"x-test": "raise"}):
                pass
        assert refused.value.response.status_code == 503
    finally:
        release.set()
    samples = await scrape(server)
    assert value(samples, "tidings_hook_latency_seconds_count", hook="on_connect") == 7
    assert value(samples, "tidings_hook_latency_seconds_bucket", hook="on_connect",
                 le="+Inf") == 7
    assert value(samples, "tidings_hook_latency_seconds_count", hook="on_subscribe") == 2
    # The one that timed out took at least the timeout.
    assert value(samples, "tidings_hook_latency_seconds_sum", hook="on_connect") >= 0.2 * UNIT
    failures = {(dict(labels)["hook"], dict(labels)["reason"]): v
                for (name, labels), v in samples.items()
                if name == "tidings_hook_failures_total"}
    assert failures == {("on_connect", "error"): 2, ("on_connect", "timeout"): 1,
                        ("on_connect", "invalid_result"): 1}  # a refusal is no failure


async def test_presence_members_by_configured_namespace_never_by_channel(
        make_server: ServerFactory) -> None:
    server = await make_server(presence=True,
                               namespace_presence={"live": PresencePolicy(True, 30.0),
                                                   "quiet": PresencePolicy(False, 30.0)})
    async with http_client(server) as http:
        for channel, client in (("live:x", "a"), ("live:x", "b"), ("live:y", "a"),
                                ("room", "c"), ("adhoc:1", "d"), ("quiet:z", "e")):
            answer = await http.get(f"/channels/{channel}", params={"client": client})
            assert answer.status_code == 200, answer.text
    samples = await scrape(server)
    assert totals(samples, "tidings_presence_members", "namespace") == {"": 2, "live": 3}
    assert totals(samples, "tidings_presence_channels", "namespace") == {"": 2, "live": 2}
    async with http_client(server) as http:
        response = await http.get("/metrics")
    for name in ("live:x", "adhoc", "room"):
        assert name not in response.text


async def test_no_presence_families_without_presence(server: Server) -> None:
    samples = await scrape(server)
    assert not any(name.startswith("tidings_presence") for name, _ in samples)
