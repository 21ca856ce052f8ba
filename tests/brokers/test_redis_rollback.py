"""Older data put back *inside* one Redis process: the second line of defence.

Here the keys are rewritten in place (as ``RESTORE`` or ``DEBUG RELOAD``
would), so Redis's ``run_id`` does not change and the run check
(test_redis_restore.py, where Redis really restarts) cannot see it. A node
that has seen further into a channel's epoch than Redis now holds makes the
scripts start a new epoch, so that every reader gets an ``epoch`` gap
instead of silently skipping messages whose numbers were reused. A node
that never read the channel can still be given a reused id first, as the
second test shows: no failure of Redis itself produces this case
(docs/topics/redis.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from brokerkit import Recorder, read_ready

from conftest import UNIT, until
from rediskit import RedisProcess
from tidings.brokers.redis import RedisBroker
from tidings.brokers.redis.keys import ChannelKeys
from tidings.core.cursor import ORIGIN

CHANNEL = "rolled"


@pytest.fixture
async def node(redis_process: RedisProcess) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_process.url, timeout=2 * UNIT)
    await broker.start()
    yield broker
    await broker.aclose()


async def published_then_rolled_back(node: RedisBroker, redis: RedisProcess,
                                     live: Recorder) -> str:
    """Publish 20 on ``node`` (read live), then make Redis forget the last 10; the epoch."""
    await read_ready(node, CHANNEL, ORIGIN)
    node.hub.subscribe(CHANNEL, live)
    ids = [(await node.publish(CHANNEL, b'{"n":%d}' % n)).id for n in range(20)]
    assert [m.id for m in await live.wait_for(20)] == ids
    keys = ChannelKeys.of(CHANNEL)
    # What a restart from an older snapshot looks like: the meta hash and the
    # stream as they were ten messages ago.
    kept = redis.command("XRANGE", keys.log, "-", "10-0")
    assert isinstance(kept, list) and len(kept) == 10
    redis.command("DEL", keys.log)
    for entry_id, fields in kept:
        redis.command("XADD", keys.log, entry_id, *fields)
    redis.command("HSET", keys.meta, "seq", "10")
    return ids[0].rsplit("-", 1)[0]


async def test_a_publish_from_a_node_that_saw_further_starts_a_new_epoch(
        node: RedisBroker, redis_process: RedisProcess) -> None:
    live = Recorder()
    epoch = await published_then_rolled_back(node, redis_process, live)
    message = await node.publish(CHANNEL, b'{"n":"after"}')
    assert message.position.epoch != epoch and message.seq == 1
    gap = await live.wait_for_gap()
    assert (gap.reason, str(gap.start), gap.missed) == ("epoch", f"{epoch}-20", None)
    assert [m.id for m in await live.wait_for(21)][-1] == message.id


async def test_a_node_that_resyncs_after_the_rollback_starts_a_new_epoch(
        node: RedisBroker, redis_process: RedisProcess) -> None:
    live = Recorder()
    epoch = await published_then_rolled_back(node, redis_process, live)
    # Another node, which never saw the channel, publishes: Redis gives it seq 11
    # again. This node finds out when it syncs, as it does after any reconnection.
    other = RedisBroker(redis_process.url, timeout=2 * UNIT)
    await other.start()
    try:
        reused = await other.publish(CHANNEL, b'{"n":"reused"}')
        assert str(reused.position) == f"{epoch}-11"
        redis_process.command("CLIENT", "KILL", "TYPE", "pubsub")
        gap = await live.wait_for_gap(within=10 * UNIT)
        assert (gap.reason, str(gap.start)) == ("epoch", f"{epoch}-20")
        # Every reader now meets the new epoch: whoever read the reused id is told too.
        read = await read_ready(other, CHANNEL, reused.position)
        assert read.gap is not None and read.gap.reason == "epoch"
        after = await other.publish(CHANNEL, b'{"n":"after"}')
        assert after.position.epoch == gap.resume.epoch != epoch
        await until(lambda: after.id in [m.id for m in live.messages], within=5 * UNIT)
    finally:
        await other.aclose()
