"""A Redis Cluster shard comes back with older data: no id is given twice.

test_redis_restore.py does this for one Redis, where any new Redis process
starts a new epoch. In a cluster that rule alone would be wrong: resharding
moves a channel's keys, intact, to another process. So each test here has a
node that never read the channel publish after the event, and checks the
rule the scripts apply (scripts.py): a shard restarted from an older
snapshot, a node restarted from a snapshot taken after a slot moved to it,
and a replica promoted while it was behind all start a new epoch; a slot
moved by resharding keeps its epoch, even for that node.

Each test runs on a cluster of its own (three masters, started for this
module), since it restarts, kills and adds nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from brokerkit import Recorder, read_ready

from conftest import UNIT, _require_redis
from rediskit import RedisClusterProcesses, RedisProcess
from tidings.brokers.redis import RedisBroker
from tidings.brokers.redis.keys import ChannelKeys
from tidings.core.cursor import ORIGIN
from tidings.core.message import Message
from tidings.errors import BrokerError


@pytest.fixture
def cluster() -> Iterator[RedisClusterProcesses]:
    """A private three-master cluster for one test (it restarts and kills nodes)."""
    _require_redis()
    with RedisClusterProcesses() as processes:
        yield processes


class Nodes:
    """RedisBroker nodes of one test on its cluster, closed at its end."""

    def __init__(self, cluster: RedisClusterProcesses) -> None:
        self.cluster = cluster
        self.open: list[RedisBroker] = []

    async def node(self, startup: RedisProcess | None = None) -> RedisBroker:
        url = (startup or self.cluster.nodes[0]).url
        broker = RedisBroker(url, timeout=2 * UNIT)
        self.open.append(broker)
        await broker.start()
        return broker

    async def aclose(self) -> None:
        for broker in reversed(self.open):
            await broker.aclose()


@pytest.fixture
async def nodes(cluster: RedisClusterProcesses) -> AsyncIterator[Nodes]:
    opened = Nodes(cluster)
    yield opened
    await opened.aclose()


def channel_on(cluster: RedisClusterProcesses, port: int, prefix: str = "shard") -> str:
    """A channel name whose slot the master on ``port`` owns."""
    for n in range(1000):
        channel = f"{prefix}-{n}"
        slot = cluster.nodes[0].command("CLUSTER", "KEYSLOT", ChannelKeys.of(channel).log)
        assert isinstance(slot, int)
        if cluster.owner(slot) == port:
            return channel
    raise AssertionError(f"no channel lands on {port}")


def slot_of(cluster: RedisClusterProcesses, channel: str) -> int:
    slot = cluster.nodes[0].command("CLUSTER", "KEYSLOT", ChannelKeys.of(channel).log)
    assert isinstance(slot, int)
    return slot


def process(cluster: RedisClusterProcesses, port: int) -> RedisProcess:
    return next(node for node in cluster.nodes if node.port == port)


async def publish(node: RedisBroker, channel: str, first: int, count: int) -> list[Message]:
    """Publish ``count`` messages, retrying a ``503`` as a publisher would (Redis is back)."""
    published = []
    for n in range(first, first + count):
        async with asyncio.timeout(20 * UNIT):
            while True:
                try:
                    published.append(await node.publish(channel, b'{"n":%d}' % n))
                    break
                except BrokerError:
                    await asyncio.sleep(0.05 * UNIT)
    return published


async def reader(node: RedisBroker, channel: str) -> Recorder:
    live = Recorder()
    await read_ready(node, channel, ORIGIN)
    node.hub.subscribe(channel, live)
    return live


@contextlib.asynccontextmanager
async def upkeep(node: RedisBroker) -> AsyncIterator[None]:
    """Call ``node.maintain()`` as a server's housekeeping does, while the block runs."""

    async def tick() -> None:
        while True:
            node.maintain()
            await asyncio.sleep(0.1 * UNIT)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def assert_new_epoch(before: list[Message], after: list[Message]) -> None:
    """What every test of a come-back asserts of the ids given after it."""
    assert not {m.id for m in before} & {m.id for m in after}, "an acknowledged id was reused"
    assert len({m.position.epoch for m in after}) == 1
    assert after[0].position.epoch != before[0].position.epoch
    assert [m.seq for m in after] == list(range(1, len(after) + 1))


async def test_a_shard_restarted_from_an_older_snapshot_starts_a_new_epoch(
        cluster: RedisClusterProcesses, nodes: Nodes) -> None:
    shard = process(cluster, cluster.ports[1])
    channel = channel_on(cluster, shard.port)
    a = await nodes.node()
    live = await reader(a, channel)
    b = await nodes.node()  # never reads the channel
    c = await nodes.node()  # nor this one
    before = await publish(a, channel, 1, 100)
    shard.command("SAVE")
    snapshot = shard.snapshot()  # the dump and the node's own nodes.conf: same node id
    before += await publish(a, channel, 101, 50)
    await live.wait_for(150)

    shard.restart(snapshot=snapshot)
    cluster.wait_ok()
    after = await publish(b, channel, 200, 10) + await publish(c, channel, 210, 10)
    assert_new_epoch(before, after)

    # The reader's node syncs when its pub/sub link is back; a sync that fails on
    # the cluster client's dead connection is tried again by the server's upkeep.
    async with upkeep(a):
        gap = await live.wait_for_gap(within=15 * UNIT)
    assert gap.reason == "epoch" and gap.start.epoch == before[0].position.epoch
    # The reader's node syncs and publishes too: what was acknowledged after the restore stays.
    later = await publish(a, channel, 300, 1)
    assert later[0].position.epoch == after[0].position.epoch
    for node in (a, b, c):
        read = await read_ready(node, channel, ORIGIN)
        assert [m.id for m in read.messages] == [m.id for m in after + later]


async def test_a_slot_moved_by_resharding_keeps_its_epoch_for_a_node_that_never_read_it(
        cluster: RedisClusterProcesses, nodes: Nodes) -> None:
    source, target = cluster.ports[1], cluster.ports[2]
    channel = channel_on(cluster, source)
    a = await nodes.node()
    live = await reader(a, channel)
    before = await publish(a, channel, 1, 30)
    cluster.migrate_slot(slot_of(cluster, channel), target)

    b = await nodes.node()  # started after the move, never reads the channel
    after = await publish(b, channel, 31, 10)
    assert [str(m.position) for m in after] == [
        f"{before[0].position.epoch}-{seq}" for seq in range(31, 41)]
    await live.wait_for(40, within=15 * UNIT)
    assert not live.gaps
    read = await read_ready(b, channel, ORIGIN)
    assert [m.id for m in read.messages] == [m.id for m in before + after]


async def test_a_node_restarted_from_a_snapshot_taken_after_a_slot_moved_to_it(
        cluster: RedisClusterProcesses, nodes: Nodes) -> None:
    # The snapshot holds the channel's metadata as the source node wrote it, and
    # the source is alive and well: only the age of the channel's last message
    # against the restarted process tells that this data may be older.
    source, target = cluster.ports[1], cluster.ports[2]
    channel = channel_on(cluster, source)
    a = await nodes.node()
    before = await publish(a, channel, 1, 10)
    cluster.migrate_slot(slot_of(cluster, channel), target)
    moved_to = process(cluster, target)
    moved_to.command("SAVE")
    snapshot = moved_to.snapshot()
    before += await publish(a, channel, 11, 5)  # on the target, lost by the restore

    moved_to.restart(snapshot=snapshot)
    cluster.wait_ok()
    b = await nodes.node()
    after = await publish(b, channel, 100, 5)
    assert_new_epoch(before, after)


async def test_failover_to_a_replica_that_was_behind_starts_a_new_epoch(
        cluster: RedisClusterProcesses, nodes: Nodes) -> None:
    master = process(cluster, cluster.ports[1])
    channel = channel_on(cluster, master.port)
    replica = cluster.add_replica(master.port)
    a = await nodes.node()
    live = await reader(a, channel)
    before = await publish(a, channel, 1, 100)
    master.command("WAIT", 1, int(5000 * UNIT))
    replica.pause()  # falls behind
    before += await publish(a, channel, 101, 50)
    master.stop()
    replica.resume()
    replica.command("CLUSTER", "FAILOVER", "TAKEOVER")
    cluster.nodes.remove(master)
    cluster.wait_ok()

    b = await nodes.node()  # never read the channel; finds the slot on the promoted replica
    after = await publish(b, channel, 200, 20)
    assert_new_epoch(before, after)
    read = await read_ready(b, channel, before[-1].position)
    assert read.gap is not None and read.gap.reason == "epoch"
    assert [m.id for m in read.messages] == [m.id for m in after]
    # The node that read before the failover follows the channel to the new
    # master (its link to the dead one cannot reconnect): its reader is told of
    # the new epoch and gets what the other node published there.
    async with upkeep(a):
        gap = await live.wait_for_gap(within=15 * UNIT)
        assert gap.reason == "epoch" and gap.start.epoch == before[0].position.epoch
        await live.wait_for(170, within=15 * UNIT)
    assert [m.id for m in live.messages] == [m.id for m in before + after]
    later = await publish(b, channel, 300, 1)
    await live.wait_for(171, within=5 * UNIT)
    assert live.messages[-1].id == later[0].id
    assert a.health()["status"] == "ok"


async def test_a_publish_to_a_slot_being_moved_does_not_wait_for_the_move(
        cluster: RedisClusterProcesses, nodes: Nodes) -> None:
    # While a slot is MIGRATING, a script whose declared keys are not all on the
    # source is answered TRYAGAIN until the move ends. The channel's pub/sub name
    # is never a key, so it is passed as an argument, not declared.
    source, target = cluster.ports[1], cluster.ports[2]
    channel = channel_on(cluster, source)
    a = await nodes.node()
    first = await publish(a, channel, 1, 1)
    slot = slot_of(cluster, channel)
    cluster.begin_migration(slot, target)
    async with asyncio.timeout(2 * UNIT):  # the move is not ending: this must not wait for it
        during = await a.publish(channel, b'{"n":2}')
    cluster.move_keys(slot, source, target)
    cluster.end_migration(slot, source, target)
    after = await publish(a, channel, 3, 1)
    assert [m.seq for m in [*first, during, *after]] == [1, 2, 3]
    assert len({m.position.epoch for m in [*first, during, *after]}) == 1
