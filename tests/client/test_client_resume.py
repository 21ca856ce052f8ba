"""Reconnecting: after the server cuts every connection, every message once and in order.

The server is restarted on the same port with the same broker, so the logs
survive; messages published while it is down go straight into the broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from clientkit import TECHNIQUES, StatusLog, fast_client, free_port, start_again, stop, take

from tidings import Connected, Disconnected, Gap, Message, MissedMessages, Server, Settings
from tidings.brokers import MemoryBroker

ServerFactory = Callable[..., Awaitable[Server]]


def publish_into(server: Server, channel: str, values: range) -> list[str]:
    """Publish straight into ``server``'s broker (it may be stopped)."""
    broker = server.broker
    assert isinstance(broker, MemoryBroker)
    return [broker.publish_nowait(channel, b"%d" % value).id for value in values]


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_resume_after_the_server_cuts_every_connection(
    make_server: ServerFactory, transport: str
) -> None:
    old = await make_server()
    status = StatusLog()
    async with fast_client(old.url, transport, on_status=status) as client:
        # since=None: from the end. The start the server names is kept, so
        # a reconnect resumes there, not at the end of the log by then.
        subscription = client.subscribe("feed")
        await status.wait_for(Connected)
        for value in range(1, 4):
            await client.publish("feed", value)
        assert [m.data for m in await take(subscription, 3)] == [1, 2, 3]

        _, port = await stop(old)
        await status.wait_for(Disconnected, transport=transport)
        publish_into(old, "feed", range(4, 7))
        new = await start_again(old, port)
        try:
            await client.publish("feed", 7)
            items = await take(subscription, 4)
            assert [m.data for m in items] == [4, 5, 6, 7]
            assert all(isinstance(m, Message) for m in items)
            # Nothing is delivered twice: the next item is the next message.
            await client.publish("feed", 8)
            assert [m.data for m in await take(subscription, 1)] == [8]
            assert subscription.reconnects >= 1
        finally:
            await new.aclose()


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_a_cut_before_the_first_message_resumes_where_it_started(
    make_server: ServerFactory, transport: str
) -> None:
    old = await make_server()
    publish_into(old, "feed", range(1, 3))  # before the subscription: not wanted
    status = StatusLog()
    async with fast_client(old.url, transport, on_status=status) as client:
        subscription = client.subscribe("feed")
        await status.wait_for(Connected)
        _, port = await stop(old)
        await status.wait_for(Disconnected)
        wanted = publish_into(old, "feed", range(3, 5))
        new = await start_again(old, port)
        try:
            assert [m.id for m in await take(subscription, 2)] == wanted
        finally:
            await new.aclose()


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_a_gap_reaches_the_user_as_an_event(make_server: ServerFactory,
                                                  transport: str) -> None:
    old = await make_server(history_size=3)
    async with fast_client(old.url, transport) as client:
        subscription = client.subscribe("feed", since="0")
        first = await client.publish("feed", 1)
        assert [m.id for m in await take(subscription, 1)] == [first]

        _, port = await stop(old)
        ids = publish_into(old, "feed", range(2, 12))  # only the last 3 are kept
        new = await start_again(old, port)
        try:
            gap, *rest = await take(subscription, 4)
            assert gap == Gap("feed", first, ids[-4], "expired", 7)
            assert [m.data for m in rest] == [9, 10, 11]
        finally:
            await new.aclose()


@pytest.mark.parametrize("transport", TECHNIQUES)
async def test_a_lost_log_is_an_epoch_gap(make_server: ServerFactory, transport: str) -> None:
    old = await make_server()
    async with fast_client(old.url, transport) as client:
        subscription = client.subscribe("feed", since="0")
        first = await client.publish("feed", 1)
        await take(subscription, 1)
        _, port = await stop(old)
        new = await start_again(old, port, same_log=False)
        try:
            fresh = await client.publish("feed", "fresh")
            gap, message = await take(subscription, 2)
            assert isinstance(gap, Gap)
            assert (gap.from_, gap.reason, gap.missed) == (first, "epoch", None)
            assert message.id == fresh and message.data == "fresh"
        finally:
            await new.aclose()


async def test_on_gap_raise_ends_the_loop_after_the_messages_before_it(
    make_server: ServerFactory,
) -> None:
    server = await make_server(history_size=2)
    async with fast_client(server.url, "poll") as client:
        ids = [await client.publish("feed", n) for n in range(5)]
        subscription = client.subscribe("feed", since=ids[0], on_gap="raise")
        with pytest.raises(MissedMessages) as caught:
            await take(subscription, 1)
        assert caught.value.gap == Gap("feed", ids[0], ids[2], "expired", 2)
        with pytest.raises(MissedMessages):  # it stays ended
            await anext(subscription)


async def test_subscribing_while_the_server_is_down_keeps_trying() -> None:
    port = free_port()
    status = StatusLog()
    async with fast_client(f"http://127.0.0.1:{port}", on_status=status) as client:
        subscription = client.subscribe("feed", since="0")
        for _ in range(3):
            event = await status.wait_for(Disconnected)
            status.clear()
        assert event.transport == "websocket"  # refused is not a reason to fall back
        assert "cannot connect" in event.reason
        assert subscription.state == "reconnecting"
        server = Server(Settings(host="127.0.0.1", port=port))
        await server.start()
        try:
            await status.wait_for(Connected, transport="websocket")
            message_id = await client.publish("feed", "up")
            assert [m.id for m in await take(subscription, 1)] == [message_id]
        finally:
            await server.aclose()
