"""The Redis broker on a real Redis Cluster of three masters (``redis_cluster``).

A channel's keys share the hash tag ``{channel}`` (brokers/redis/keys.py), so
its log, its metadata and its pub/sub name sit on one slot, on one node.
These tests check that on the cluster itself (``CLUSTER KEYSLOT``, and the
stream found on the node that owns the slot), with channels spread over every
node, and that two brokers (two tidings nodes) share the logs: publish, read
from a cursor, live fan-out, retention by size.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from brokerkit import Recorder, read_ready
from websockets.asyncio.client import connect

from conftest import UNIT, ServerFactory
from rediskit import RedisClusterProcesses, RedisError
from tidings.brokers.redis import RedisBroker, pubsub
from tidings.brokers.redis.keys import ChannelKeys
from tidings.brokers.redis.link import Address, redirection
from tidings.core.cursor import END, ORIGIN, Position
from tidings.core.log import Retention
from tidings.errors import BrokerError
from tidings.testing import SseStream

BrokerFactory = Callable[..., Awaitable[RedisBroker]]


@pytest.fixture
async def brokers(redis_cluster_url: str) -> AsyncIterator[BrokerFactory]:
    """Start brokers on the (emptied) cluster: ``await brokers(size=3)``."""
    started: list[RedisBroker] = []

    async def factory(size: int = 1000, ttl: float = 3600.0) -> RedisBroker:
        retention = Retention(size, ttl)
        broker = RedisBroker(redis_cluster_url, lambda channel: retention)
        started.append(broker)
        await broker.start()
        return broker

    yield factory
    for broker in reversed(started):
        await broker.aclose()


def slot_owners(cluster: RedisClusterProcesses) -> dict[int, int]:
    """Slot -> port of the master that owns it, from ``CLUSTER SLOTS``."""
    ranges = cluster.nodes[0].command("CLUSTER", "SLOTS")
    assert isinstance(ranges, list)
    owners: dict[int, int] = {}
    for first, last, master, *_replicas in ranges:
        for slot in range(first, last + 1):
            owners[slot] = int(master[1])
    assert len(owners) == 16384
    return owners


def keyslot(cluster: RedisClusterProcesses, key: str) -> int:
    slot = cluster.nodes[0].command("CLUSTER", "KEYSLOT", key)
    assert isinstance(slot, int)
    return slot


def channel_slot(cluster: RedisClusterProcesses, channel: str) -> int:
    """The one slot of every key of ``channel``; fails if its keys are on different slots."""
    keys = ChannelKeys.of(channel)
    slots = {keyslot(cluster, key) for key in (keys.log, keys.meta, keys.notify)}
    assert len(slots) == 1, f"the keys of {channel!r} are on slots {slots}"
    (slot,) = slots
    assert slot == keyslot(cluster, channel)  # the hash tag is the whole channel name
    return slot


def one_channel_per_node(cluster: RedisClusterProcesses, prefix: str) -> dict[str, int]:
    """Channel -> owning port: the first names ``prefix-N`` that land on each master."""
    owners = slot_owners(cluster)
    chosen: dict[str, int] = {}
    for n in range(200):
        channel = f"{prefix}-{n}"
        port = owners[channel_slot(cluster, channel)]
        if port not in chosen.values():
            chosen[channel] = port
        if len(chosen) == len(cluster.nodes):
            break
    assert sorted(chosen.values()) == sorted(cluster.ports), chosen
    return chosen


def stream_length(cluster: RedisClusterProcesses, channel: str, port: int) -> int:
    """``XLEN`` of the channel's log, asked of the node on ``port`` (which must own it)."""
    node = next(node for node in cluster.nodes if node.port == port)
    length = node.command("XLEN", ChannelKeys.of(channel).log)
    assert isinstance(length, int)
    return length


async def test_channels_on_every_node_fan_out_across_two_brokers(
    redis_cluster: RedisClusterProcesses, brokers: BrokerFactory,
) -> None:
    channels = one_channel_per_node(redis_cluster, "room")
    a = await brokers()
    b = await brokers()
    assert a.cluster and b.cluster
    assert a.health()["cluster"] is True and a.health()["status"] == "ok"

    recorders: dict[tuple[int, str], Recorder] = {}
    for index, broker in enumerate((a, b)):
        for channel in channels:
            read = await read_ready(broker, channel, END)
            assert read.messages == []
            recorder = recorders[index, channel] = Recorder()
            broker.hub.subscribe(channel, recorder)
    # One pub/sub link per Redis node that holds a followed channel, never one per channel.
    for broker in (a, b):
        assert broker.health()["links"] == {"connected": 3, "total": 3}

    published: dict[str, list[str]] = {channel: [] for channel in channels}
    for round_ in range(2):
        for channel in channels:
            for broker in (a, b):
                message = await broker.publish(channel, b'{"round":%d}' % round_)
                published[channel].append(message.id)

    for channel, ids in published.items():
        assert len({i.rsplit("-", 1)[0] for i in ids}) == 1  # one epoch
        assert [int(i.rsplit("-", 1)[1]) for i in ids] == [1, 2, 3, 4]
        for index in (0, 1):
            messages = await recorders[index, channel].wait_for(4)
            assert [m.id for m in messages] == ids, (index, channel)
            assert [m.data for m in messages] == [b'{"round":0}'] * 2 + [b'{"round":1}'] * 2
            assert recorders[index, channel].gaps == []

    # Each log is on the node that owns its slot, and only there.
    for channel, port in channels.items():
        assert stream_length(redis_cluster, channel, port) == 4
        elsewhere = next(n for n in redis_cluster.nodes if n.port != port)
        with pytest.raises(RedisError, match="MOVED"):
            elsewhere.command("XLEN", ChannelKeys.of(channel).log)

    # A third node that has read nothing yet reads the shared logs from any cursor.
    c = await brokers()
    for channel, ids in published.items():
        read = await read_ready(c, channel, ORIGIN)
        assert [m.id for m in read.messages] == ids
        epoch, seq = ids[1].rsplit("-", 1)
        read = await read_ready(c, channel, Position(epoch, int(seq)))
        assert [m.id for m in read.messages] == ids[2:] and read.gap is None


async def test_history_is_trimmed_to_its_size_on_the_cluster(
    redis_cluster: RedisClusterProcesses, brokers: BrokerFactory,
) -> None:
    channels = one_channel_per_node(redis_cluster, "ticker")
    a = await brokers(size=3)
    b = await brokers(size=3)
    recorders: dict[str, Recorder] = {}
    for channel in channels:  # a follows the channels live; b only publishes
        await read_ready(a, channel, END)
        recorders[channel] = Recorder()
        a.hub.subscribe(channel, recorders[channel])
    last: dict[str, Position] = {}
    for channel in channels:
        for n in range(5):
            last[channel] = (await b.publish(channel, b"%d" % n)).position
    for recorder in recorders.values():
        await recorder.wait_for(5)

    for channel, port in channels.items():
        epoch = last[channel].epoch
        assert last[channel].seq == 5
        assert stream_length(redis_cluster, channel, port) == 3
        kept = [f"{epoch}-{seq}" for seq in (3, 4, 5)]
        for broker in (a, b):  # a's replica, kept by pub/sub; b loads from Redis
            read = await read_ready(broker, channel, ORIGIN)
            assert [m.id for m in read.messages] == kept
            assert [m.data for m in read.messages] == [b"2", b"3", b"4"]
            read = await read_ready(broker, channel, Position(epoch, 0))
            assert read.gap is not None
            assert (read.gap.reason, read.gap.missed) == ("expired", 2)
            assert read.gap.resume == Position(epoch, 2)
            assert [m.id for m in read.messages] == kept


async def test_two_servers_on_the_cluster_serve_every_technique(
    redis_cluster: RedisClusterProcesses, redis_cluster_url: str, make_server: ServerFactory,
) -> None:
    channels = list(one_channel_per_node(redis_cluster, "feed"))
    publisher = await make_server(broker=redis_cluster_url)
    reader = await make_server(broker=redis_cluster_url)
    query = "&".join(f"channel={channel}" for channel in channels)
    timeout = httpx.Timeout(10 * UNIT, read=None)
    async with httpx.AsyncClient(base_url=publisher.url, timeout=timeout) as to_publisher, \
            httpx.AsyncClient(base_url=reader.url, timeout=timeout) as to_reader, \
            to_reader.stream("GET", f"/subscribe?{query}",
                             headers={"Accept": "text/event-stream"}) as sse_response, \
            connect("ws" + reader.url.removeprefix("http") + f"/subscribe?{query}") as ws:
        assert sse_response.status_code == 200
        sse = SseStream(sse_response.aiter_bytes())
        async with asyncio.timeout(5 * UNIT):
            await sse.next_block()  # the opening block: subscribed
            subscribed = [json.loads(await ws.recv()) for _ in channels]
        assert [(f["type"], f["channel"]) for f in subscribed] == [
            ("subscribed", channel) for channel in channels]

        ids = []
        for channel in channels:
            response = await to_publisher.post(f"/channels/{channel}", json={"on": channel})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])

        async with asyncio.timeout(5 * UNIT):
            events = [await sse.next_event() for _ in channels]
            frames = [json.loads(await ws.recv()) for _ in channels]
        assert [json.loads(e.data or "")["id"] for e in events] == ids
        assert [(f["type"], f["channel"], f["id"]) for f in frames] == [
            ("message", channel, id_) for channel, id_ in zip(channels, ids, strict=True)]

        answer = (await to_reader.get(f"/subscribe?{query}&since=0")).json()
        assert [m["id"] for m in answer["messages"]] == ids
        health = (await to_reader.get("/healthz")).json()
        assert health["broker"]["cluster"] is True and health["broker"]["status"] == "ok"
        assert health["broker"]["links"] == {"connected": 3, "total": 3}


# Resharding: a channel's slot moves to another node while it is read -----------------


def other_port(cluster: RedisClusterProcesses, port: int) -> int:
    return next(node.port for node in cluster.nodes if node.port != port)


class Publishing:
    """Publishers that keep publishing numbered messages, one per channel, until stopped.

    ``publish(channel, n)`` publishes message ``n`` and returns its id, or
    raises ``BrokerError`` if it was refused.
    """

    def __init__(self, channels: list[str],
                 publish: Callable[[str, int], Awaitable[str]]) -> None:
        self._publish_one = publish
        self.ids: dict[str, list[str]] = {channel: [] for channel in channels}
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._published = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for channel in self.ids:
                group.create_task(self._publish(channel))

    async def _publish(self, channel: str) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                id_ = await self._publish_one(channel, n)
            except BrokerError as exc:  # refused: nothing stored; a client retries
                self.failures.append(str(exc))
            else:
                self.ids[channel].append(id_)
                self._published.set()
            n += 1
            await asyncio.sleep(0)

    async def until(self, count: int, *channels: str) -> None:
        """Wait until each of ``channels`` (all if none) has ``count`` messages more than now."""
        targets = {c: len(self.ids[c]) + count for c in channels or self.ids}
        try:
            async with asyncio.timeout(10 * UNIT):
                while any(len(self.ids[c]) < n for c, n in targets.items()):
                    self._published.clear()
                    await self._published.wait()
        except TimeoutError:
            counts = {channel: len(ids) for channel, ids in self.ids.items()}
            raise AssertionError(f"not {targets} messages: {counts}; "
                                 f"failures: {self.failures[-3:]}") from None

    def stop(self) -> None:
        self._stop.set()


def check_once_in_order(ids: list[str]) -> None:
    """One epoch, sequence numbers 1, 2, 3... with no hole and no repeat."""
    assert len({i.rsplit("-", 1)[0] for i in ids}) == 1, ids
    assert [int(i.rsplit("-", 1)[1]) for i in ids] == list(range(1, len(ids) + 1))


async def test_a_channel_whose_slot_moves_keeps_delivering_without_a_reconnect(
    redis_cluster: RedisClusterProcesses, brokers: BrokerFactory,
) -> None:
    channels = one_channel_per_node(redis_cluster, "moving")
    moving, stays = list(channels)[:2]
    source = channels[moving]
    target = channels[stays]  # the moving channel joins a node the reader has a link to
    # Another channel on the source's link, in a slot that does not move.
    neighbour = next(f"neighbour-{n}" for n in range(1000)
                     if redis_cluster.owner(channel_slot(redis_cluster, f"neighbour-{n}"))
                     == source and channel_slot(redis_cluster, f"neighbour-{n}")
                     != channel_slot(redis_cluster, moving))
    reader = await brokers()
    publisher = await brokers()
    statuses: list[tuple[bool, str]] = []
    reader.on_status = lambda ok, why: statuses.append((ok, why))
    recorders = {}
    for channel in (moving, stays, neighbour):
        await read_ready(reader, channel, END)
        recorders[channel] = Recorder()
        reader.hub.subscribe(channel, recorders[channel])
    assert reader.health()["links"] == {"connected": 2, "total": 2}

    publishing = Publishing([moving, stays, neighbour], through_broker(publisher))
    task = asyncio.create_task(publishing.run())
    try:
        await publishing.until(5)
        slot = channel_slot(redis_cluster, moving)
        # While the slot is half moved, publishes to the moving channel may wait
        # (TRYAGAIN); the other channel's go on.
        await asyncio.to_thread(redis_cluster.begin_migration, slot, target)
        await publishing.until(5, stays, neighbour)
        await asyncio.to_thread(redis_cluster.move_keys, slot, source, target)
        await publishing.until(5, stays, neighbour)
        await asyncio.to_thread(redis_cluster.end_migration, slot, source, target)
        await publishing.until(10)
    finally:
        publishing.stop()
        await task

    assert publishing.failures == []
    assert stream_length(redis_cluster, moving, target) == len(publishing.ids[moving])
    for channel, ids in publishing.ids.items():
        check_once_in_order(ids)
        messages = await recorders[channel].wait_for(len(ids))
        assert [m.id for m in messages] == ids, channel
        assert recorders[channel].gaps == []
    # No link was lost on the way: the move was followed, not reconnected.
    assert statuses == []
    assert reader.health()["links"] == {"connected": 2, "total": 2}


class Readers:
    """One reader of a channel on each technique, collecting the ids (and anything else)."""

    def __init__(self, client: httpx.AsyncClient, ws_url: str, channel: str) -> None:
        self.client = client
        self.ws_url = ws_url
        self.channel = channel
        self.ids: dict[str, list[str]] = {t: [] for t in ("poll", "longpoll", "sse", "ws")}
        #: Anything but a message (a gap, a status notice...), by technique.
        self.other: list[tuple[str, object]] = []
        self.sse_opened = asyncio.Event()
        self.ws_opened = asyncio.Event()
        self._progress = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._poll("poll", ""))
            group.create_task(self._poll("longpoll", f"&wait={int(5 * UNIT)}"))
            group.create_task(self._sse())
            group.create_task(self._ws())

    def _got(self, technique: str, id_: str) -> None:
        self.ids[technique].append(id_)
        self._progress.set()

    async def _poll(self, technique: str, wait: str) -> None:
        since = "0"
        while True:
            response = await self.client.get(f"/channels/{self.channel}?since={since}{wait}")
            assert response.status_code == 200, response.text
            answer = response.json()
            if answer.get("gap"):
                self.other.append((technique, answer["gap"]))
            for message in answer["messages"]:
                self._got(technique, message["id"])
            since = answer["next"]
            if technique == "poll":
                await asyncio.sleep(0.05)  # a regular poller's period: it is the technique

    async def _sse(self) -> None:
        async with self.client.stream("GET", f"/channels/{self.channel}?since=0",
                                      headers={"Accept": "text/event-stream"}) as response:
            assert response.status_code == 200
            stream = SseStream(response.aiter_bytes())
            await stream.opening()
            self.sse_opened.set()
            while True:
                event = await stream.next_event()
                if event.event in (None, "message"):
                    self._got("sse", json.loads(event.data or "")["id"])
                else:
                    self.other.append(("sse", (event.event, event.data)))

    async def _ws(self) -> None:
        async with connect(self.ws_url + f"/channels/{self.channel}?since=0") as ws:
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "subscribed":
                    self.ws_opened.set()
                elif frame["type"] == "message":
                    self._got("ws", frame["id"])
                else:
                    self.other.append(("ws", frame))

    async def until_each_has(self, count: int, within: float = 10 * UNIT) -> None:
        try:
            async with asyncio.timeout(within):
                while min(len(ids) for ids in self.ids.values()) < count:
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            counts = {t: len(ids) for t, ids in self.ids.items()}
            raise AssertionError(f"not {count} messages on each technique: {counts}; "
                                 f"other events: {self.other[-5:]}") from None


def through_broker(broker: RedisBroker) -> Callable[[str, int], Awaitable[str]]:
    async def publish(channel: str, n: int) -> str:
        return (await broker.publish(channel, b"%d" % n)).id
    return publish


def through_http(client: httpx.AsyncClient) -> Callable[[str, int], Awaitable[str]]:
    """Publish with ``POST /channels/{channel}``; anything but a 201 is a refusal."""
    async def publish(channel: str, n: int) -> str:
        response = await client.post(f"/channels/{channel}", json={"n": n})
        if response.status_code != 201:
            raise BrokerError(f"{response.status_code} {response.text}")
        id_: str = response.json()["id"]
        return id_
    return publish


async def test_readers_on_every_technique_read_through_a_live_slot_migration(
    redis_cluster: RedisClusterProcesses, redis_cluster_url: str, make_server: ServerFactory,
) -> None:
    channels = one_channel_per_node(redis_cluster, "migrating")
    moving, stays = list(channels)[:2]
    source, target = channels[moving], channels[stays]
    publisher = await make_server(broker=redis_cluster_url)
    reader = await make_server(broker=redis_cluster_url)
    statuses: list[tuple[bool, str]] = []
    on_status = reader.broker.on_status

    def record(ok: bool, why: str) -> None:
        statuses.append((ok, why))
        if on_status is not None:
            on_status(ok, why)

    reader.broker.on_status = record
    timeout = httpx.Timeout(10 * UNIT, read=None)
    async with httpx.AsyncClient(base_url=publisher.url, timeout=timeout) as to_publisher, \
            httpx.AsyncClient(base_url=reader.url, timeout=timeout) as to_reader:
        readers = Readers(to_reader, "ws" + reader.url.removeprefix("http"), moving)
        publishing = Publishing([moving, stays], through_http(to_publisher))
        async with asyncio.TaskGroup() as group:
            reading = group.create_task(readers.run())
            async with asyncio.timeout(5 * UNIT):
                await readers.sse_opened.wait()
                await readers.ws_opened.wait()
            publishing_task = group.create_task(publishing.run())
            try:
                await publishing.until(10)
                await readers.until_each_has(5)
                slot = channel_slot(redis_cluster, moving)
                await asyncio.to_thread(redis_cluster.begin_migration, slot, target)
                await publishing.until(5, stays)
                await asyncio.to_thread(redis_cluster.move_keys, slot, source, target)
                await publishing.until(5, stays)
                await asyncio.to_thread(redis_cluster.end_migration, slot, source, target)
                await publishing.until(20)
            finally:
                publishing.stop()
                await publishing_task
            published = publishing.ids[moving]
            try:
                await readers.until_each_has(len(published))
            finally:
                reading.cancel()

    assert publishing.failures == []
    check_once_in_order(published)
    assert stream_length(redis_cluster, moving, target) == len(published)
    for technique, ids in readers.ids.items():
        assert ids == published, technique
    assert readers.other == []  # no gap, no "broker unavailable" notice
    assert statuses == []
    assert reader.broker.health()["links"] == {"connected": 2, "total": 2}


async def test_a_node_whose_slot_map_is_stale_follows_the_subscription_redirect(
    redis_cluster: RedisClusterProcesses, brokers: BrokerFactory,
) -> None:
    channels = one_channel_per_node(redis_cluster, "stale")
    moved, other = list(channels)[:2]
    reader = await brokers()  # reads the slot map now
    publisher = await brokers()
    first = await publisher.publish(moved, b"1")
    slot = channel_slot(redis_cluster, moved)
    await asyncio.to_thread(redis_cluster.migrate_slot, slot, channels[other])

    # The reader's map still names the old node: SSUBSCRIBE there gets MOVED.
    read = await read_ready(reader, moved, ORIGIN)
    assert [m.id for m in read.messages] == [first.id]
    recorder = Recorder()
    reader.hub.subscribe(moved, recorder)
    second = await publisher.publish(moved, b"2")
    assert [m.id for m in await recorder.wait_for(1)] == [second.id]
    assert recorder.gaps == []


def test_redirection_names_the_node_that_holds_the_slot() -> None:
    assert redirection("MOVED 3999 127.0.0.1:6381") == ("127.0.0.1", 6381)
    assert redirection("ASK 3999 10.0.0.2:7000") == ("10.0.0.2", 7000)
    assert redirection("MOVED 3999 :6381") == ("", 6381)  # the host of the node asked
    assert redirection("ERR unknown command") is None
    assert redirection("MOVED 3999") is None
    template = Address("a", 1, "user", "secret", True)
    assert template.elsewhere("b", 2) == Address("b", 2, "user", "secret", True)
    assert template.elsewhere("", 2) == Address("a", 2, "user", "secret", True)


async def test_a_link_that_comes_back_after_a_move_follows_the_channel_to_its_new_node(
    redis_cluster: RedisClusterProcesses, brokers: BrokerFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The link waits 2 UNIT before it reconnects: the slot has moved by then.
    monkeypatch.setattr(pubsub, "RECONNECT_DELAYS", (2 * UNIT, 2 * UNIT))
    channels = one_channel_per_node(redis_cluster, "away")
    moved, other = list(channels)[:2]
    source, target = channels[moved], channels[other]
    reader = await brokers()
    publisher = await brokers()
    await read_ready(reader, moved, END)
    recorder = Recorder()
    reader.hub.subscribe(moved, recorder)
    first = await publisher.publish(moved, b"1")
    await recorder.wait_for(1)

    redis_cluster.nodes[redis_cluster.ports.index(source)].command(
        "CLIENT", "KILL", "TYPE", "pubsub")
    slot = channel_slot(redis_cluster, moved)
    await asyncio.to_thread(redis_cluster.migrate_slot, slot, target)
    second = await publisher.publish(moved, b"2")  # while the reader's link is down
    third = await publisher.publish(moved, b"3")
    messages = await recorder.wait_for(3, within=10 * UNIT)
    assert [m.id for m in messages] == [first.id, second.id, third.id]
    fourth = await publisher.publish(moved, b"4")  # live, from the new node
    messages = await recorder.wait_for(4)
    assert [m.id for m in messages] == [first.id, second.id, third.id, fourth.id]
    assert recorder.gaps == []
