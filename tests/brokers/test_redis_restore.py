"""Redis comes back from a restart, an older snapshot or a failover: no id is given twice.

Each way of coming back is a real ``redis-server`` process stopped and
started again (from an RDB ``SAVE``, from AOF files that lost their tail,
empty), or a replica that was behind promoted in its master's place. The
nodes that publish afterwards include some that never read the channel, so
they pass no known position to the scripts: the rule that holds is the
Redis ``run_id`` kept beside the epoch (scripts.py). Every reader gets an
``epoch`` gap, and what is acknowledged after the restore stays in the log
whatever syncs follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from brokerkit import Recorder, read_ready

from conftest import UNIT, _require_redis, until
from rediskit import RedisProcess
from tidings.brokers.base import Replayed
from tidings.brokers.redis import RedisBroker
from tidings.core.cursor import ORIGIN
from tidings.core.message import Message
from tidings.errors import BrokerError

CHANNEL = "restored"


class Nodes:
    """RedisBroker nodes of one test, closed at its end."""

    def __init__(self) -> None:
        self.open: list[RedisBroker] = []

    async def node(self, url: str) -> RedisBroker:
        broker = RedisBroker(url, timeout=2 * UNIT)
        self.open.append(broker)
        await broker.start()
        return broker

    async def aclose(self) -> None:
        for broker in reversed(self.open):
            await broker.aclose()


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    opened = Nodes()
    yield opened
    await opened.aclose()


async def publish(node: RedisBroker, first: int, count: int,
                  key: Callable[[int], str | None] = lambda n: None) -> list[Message]:
    """Publish ``count`` messages, retrying a ``503`` as a publisher would (Redis is back)."""
    published = []
    for n in range(first, first + count):
        async with asyncio.timeout(10 * UNIT):
            while True:
                try:
                    published.append(await node.publish(CHANNEL, b'{"n":%d}' % n,
                                                        idempotency_key=key(n)))
                    break
                except BrokerError:
                    await asyncio.sleep(0.05 * UNIT)
    return published


async def reader(node: RedisBroker) -> Recorder:
    """A live subscriber of CHANNEL on ``node``, as the server makes one."""
    live = Recorder()
    await read_ready(node, CHANNEL, ORIGIN)
    node.hub.subscribe(CHANNEL, live)
    return live


async def check_come_back(nodes: Nodes, redis: RedisProcess,
                          come_back: Callable[[], None], *, count: int = 3) -> None:
    """The issue's scenario with ``count`` nodes: A reads, the others never read the channel."""
    a = await nodes.node(redis.url)
    others = [await nodes.node(redis.url) for _ in range(count - 1)]
    live = await reader(a)
    before = await publish(a, 1, 100)
    redis.command("SAVE")
    come_back_files = redis.snapshot()
    before += await publish(a, 101, 50)
    await live.wait_for(150)
    old_epoch = before[0].position.epoch

    del come_back_files  # the callable decides what Redis comes back with
    come_back()

    after: list[Message] = []
    for index, node in enumerate(others * 10):
        after += await publish(node, 1000 + len(after) + index, 1)
    acknowledged = {m.id for m in before}
    assert not acknowledged & {m.id for m in after}, "an acknowledged id was given again"
    assert {m.position.epoch for m in after} != {old_epoch}
    assert len({m.position.epoch for m in after}) == 1
    assert [m.seq for m in after] == list(range(1, len(after) + 1))

    gap = await live.wait_for_gap(within=10 * UNIT)
    assert gap.reason == "epoch" and gap.start.epoch == old_epoch
    await until(lambda: [m.id for m in live.messages][150:] == [m.id for m in after],
                within=10 * UNIT)
    # Later syncs and publishes (the reader's node included) keep what was acknowledged.
    later = await publish(a, 5000, 1)
    assert later[0].position.epoch == after[0].position.epoch
    for node in [a, *others]:
        read = await read_ready(node, CHANNEL, ORIGIN)
        assert [m.id for m in read.messages] == [m.id for m in after + later]


@pytest.fixture
def persistent_redis() -> AsyncIterator[RedisProcess]:  # type: ignore[misc]
    _require_redis()
    with RedisProcess(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as redis:
        yield redis


@pytest.mark.parametrize("count", [2, 3])
async def test_restored_from_an_older_rdb_snapshot(nodes: Nodes, redis_process: RedisProcess,
                                                   count: int) -> None:
    saved: dict[str, bytes] = {}
    original_save = redis_process.snapshot

    def take() -> dict[str, bytes]:
        saved.update(original_save())
        return saved

    redis_process.snapshot = take  # type: ignore[method-assign]
    await check_come_back(nodes, redis_process,
                          lambda: redis_process.restart(snapshot=saved), count=count)


async def test_restored_from_an_aof_that_lost_its_tail(
        nodes: Nodes, persistent_redis: RedisProcess) -> None:
    saved: dict[str, bytes] = {}
    original_save = persistent_redis.snapshot

    def take() -> dict[str, bytes]:
        saved.update({name: data for name, data in original_save().items()
                      if name.startswith("appendonlydir")})
        return saved

    persistent_redis.snapshot = take  # type: ignore[method-assign]
    await check_come_back(nodes, persistent_redis,
                          lambda: persistent_redis.restart(snapshot=saved))


async def test_restarted_empty(nodes: Nodes, redis_process: RedisProcess) -> None:
    await check_come_back(nodes, redis_process, redis_process.restart, count=2)


async def test_a_restart_that_kept_everything_still_moves_the_epoch_on(
        nodes: Nodes, persistent_redis: RedisProcess) -> None:
    # Redis cannot tell a complete AOF from one that lost its tail: a new run
    # is a new epoch, a spurious gap rather than a risk of reused ids.
    a = await nodes.node(persistent_redis.url)
    first = await publish(a, 1, 5)
    persistent_redis.restart(snapshot=persistent_redis.snapshot())
    b = await nodes.node(persistent_redis.url)
    after = await publish(b, 6, 1)
    assert after[0].position.epoch != first[0].position.epoch and after[0].seq == 1


async def test_failover_to_a_replica_that_was_behind(nodes: Nodes,
                                                     redis_process: RedisProcess) -> None:
    master = redis_process
    with RedisProcess(extra_args=["--replicaof", "127.0.0.1", str(master.port)]) as replica:
        a = await nodes.node(master.url)
        live = await reader(a)
        before = await publish(a, 1, 100)
        await until(lambda: b"master_link_status:up" in _info(replica), within=10 * UNIT)
        master.command("WAIT", 1, int(5000 * UNIT))
        replica.pause()  # falls behind
        before += await publish(a, 101, 50)
        await live.wait_for(150)
        master.stop()
        replica.resume()
        replica.command("REPLICAOF", "NO", "ONE")
        b = await nodes.node(replica.url)  # never read the channel
        c = await nodes.node(replica.url)
        after = await publish(b, 200, 10) + await publish(c, 210, 10)
        assert not {m.id for m in before} & {m.id for m in after}
        assert after[0].position.epoch != before[0].position.epoch
        assert [m.seq for m in after] == list(range(1, 21))
        read = await read_ready(c, CHANNEL, before[-1].position)
        assert read.gap is not None and read.gap.reason == "epoch"
        assert [m.id for m in read.messages] == [m.id for m in after]


def _info(redis: RedisProcess) -> bytes:
    reply = redis.command("INFO", "replication")
    return reply if isinstance(reply, bytes) else str(reply).encode()


# Idempotency keys across restarts --------------------------------------------------------------


async def test_a_key_holds_across_a_node_restart(nodes: Nodes,
                                                 redis_process: RedisProcess) -> None:
    first_node = await nodes.node(redis_process.url)
    first = await first_node.publish(CHANNEL, b'{"n":1}', idempotency_key="once")
    await first_node.aclose()
    nodes.open.remove(first_node)
    restarted = await nodes.node(redis_process.url)
    again = await restarted.publish(CHANNEL, b'{"n":1}', idempotency_key="once")
    assert isinstance(again, Replayed) and again.id == first.id


async def test_after_an_older_snapshot_a_key_never_replays_an_id_of_the_lost_epoch(
        nodes: Nodes, redis_process: RedisProcess) -> None:
    a = await nodes.node(redis_process.url)
    saved_early = await publish(a, 1, 10, key=lambda n: f"key-{n}")
    redis_process.command("SAVE")
    snapshot = redis_process.snapshot()
    lost = await publish(a, 11, 10, key=lambda n: f"key-{n}")
    redis_process.restart(snapshot=snapshot)
    b = await nodes.node(redis_process.url)
    # The record of key-5 came back with the snapshot, that of key-15 did not:
    # both are stored anew, in the new epoch, whose ids mean nothing else yet.
    retried = await publish(b, 5, 1, key=lambda n: f"key-{n}") + \
        await publish(b, 15, 1, key=lambda n: f"key-{n}")
    assert not any(isinstance(m, Replayed) for m in retried)
    assert [m.seq for m in retried] == [1, 2]
    assert not {m.id for m in saved_early + lost} & {m.id for m in retried}
    again = await b.publish(CHANNEL, b'{"n":15}', idempotency_key="key-15")
    assert isinstance(again, Replayed) and again.id == retried[1].id
