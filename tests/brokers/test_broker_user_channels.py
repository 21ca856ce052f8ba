"""Users' server-side channels: the part of the broker contract for them, on every broker.

``add_user_channel`` / ``remove_user_channel`` / ``user_channels``, and every
node (this one too) that reads sets told of each change that changed something,
in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from brokerkit import KINDS, SHARED_KINDS, BrokerHarness, open_harness

from conftest import UNIT
from tidings.brokers.base import Broker, UserChannelChange
from tidings.core.cursor import Position


@pytest.fixture(params=KINDS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[BrokerHarness]:
    opened = open_harness(request.param, request.getfixturevalue)
    yield opened
    await opened.aclose()


@pytest.fixture(params=SHARED_KINDS)
async def shared_harness(request: pytest.FixtureRequest) -> AsyncIterator[BrokerHarness]:
    opened = open_harness(request.param, request.getfixturevalue)
    yield opened
    await opened.aclose()


def listen(broker: Broker) -> asyncio.Queue[UserChannelChange]:
    changes: asyncio.Queue[UserChannelChange] = asyncio.Queue()
    broker.on_user_channel = changes.put_nowait
    return changes


async def changes_of(queue: asyncio.Queue[UserChannelChange],
                     count: int) -> list[UserChannelChange]:
    async with asyncio.timeout(5 * UNIT):
        return [await queue.get() for _ in range(count)]


START = Position("abcdefgh", 3)
OTHER = Position("zyxwvuts", 0)


async def test_a_set_is_added_to_listed_and_removed(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    changes = listen(broker)
    assert await broker.user_channels("alice") == {}  # (from now on, changes are heard)
    assert await broker.add_user_channel("alice", "a", START, 2) == "added"
    assert await broker.add_user_channel("alice", "a", OTHER, 2) == "present"  # keeps START
    assert await broker.add_user_channel("alice", "b", OTHER, 2) == "added"
    assert await broker.add_user_channel("alice", "c", OTHER, 2) == "full"
    assert await broker.add_user_channel("bob", "c", OTHER, 2) == "added"
    assert await broker.user_channels("alice") == {"a": START, "b": OTHER}
    assert await broker.remove_user_channel("alice", "a") is True
    assert await broker.remove_user_channel("alice", "a") is False
    assert await broker.user_channels("alice") == {"b": OTHER}
    assert await changes_of(changes, 4) == [
        UserChannelChange("alice", "a", START), UserChannelChange("alice", "b", OTHER),
        UserChannelChange("bob", "c", OTHER), UserChannelChange("alice", "a", None)]
    assert changes.empty()  # nothing for what changed nothing


async def test_user_names_are_kept_as_they_are(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    for user in ("é ü/{x}:u:", "a" * 256, "{~users}"):
        assert await broker.add_user_channel(user, "c", START, 5) == "added"
        assert await broker.user_channels(user) == {"c": START}


async def test_every_node_shares_the_sets_and_hears_the_changes(
        shared_harness: BrokerHarness) -> None:
    one = await shared_harness.open_broker()
    two = await shared_harness.second_node()
    heard_one, heard_two = listen(one), listen(two)
    for node in (one, two):  # a node that reads sets hears every change from then on
        assert await node.user_channels("alice") == {}
    await one.add_user_channel("alice", "a", START, 10)
    await two.remove_user_channel("alice", "a")
    await two.add_user_channel("alice", "b", OTHER, 10)
    expected = [UserChannelChange("alice", "a", START), UserChannelChange("alice", "a", None),
                UserChannelChange("alice", "b", OTHER)]
    assert await changes_of(heard_one, 3) == expected
    assert await changes_of(heard_two, 3) == expected
    assert await one.user_channels("alice") == {"b": OTHER}
