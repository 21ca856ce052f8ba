"""A consumer that stops reading is cut off by the server and resumes, losing nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from clientkit import UNIT, StatusLog, fast_client, seqs, take

from tidings import Connected, Disconnected, Server
from tidings.brokers import MemoryBroker

ServerFactory = Callable[..., Awaitable[Server]]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_slow_consumer_is_cut_off_and_resumes(make_server: ServerFactory,
                                                      transport: str) -> None:
    server = await make_server(output_buffer_limit=16 * 1024)
    status = StatusLog()
    async with fast_client(server.url, transport, buffer=1, on_status=status) as client:
        subscription = client.subscribe("flood", since="0")
        await status.wait_for(Connected)
        broker = server.broker
        assert isinstance(broker, MemoryBroker)
        count = 60
        payload = b'"%s"' % (b"x" * 60_000)
        # 3.6 MB nobody reads: more than loopback socket buffers hold, even autotuned.
        for _ in range(count):
            broker.publish_nowait("flood", payload)
        # The server cut the connection while we published; reading now gets
        # what was sent before the cut, then the rest after the resume.
        assert server.stats["slow_consumers"] >= 1
        items = await take(subscription, count, within=10 * UNIT)
        assert seqs(items) == list(range(1, count + 1))
        cut = await status.wait_for(Disconnected)
        assert "slow" in cut.reason or "4008" in cut.reason
