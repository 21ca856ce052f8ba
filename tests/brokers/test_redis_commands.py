"""How a node talks to Redis: URLs, the pipelined connection, scripts Redis forgot."""

from __future__ import annotations

import asyncio

import pytest

from conftest import UNIT, until
from rediskit import RedisProcess
from tidings.brokers.redis import RedisBroker
from tidings.brokers.redis import broker as broker_module
from tidings.brokers.redis.broker import UNUSED_META_TTL_MS
from tidings.brokers.redis.commands import Pipeline
from tidings.brokers.redis.keys import ChannelKeys
from tidings.brokers.redis.link import Address, parse_redis_url
from tidings.core.cursor import ORIGIN
from tidings.errors import BrokerError, UsageError


@pytest.mark.parametrize(
    ("url", "address", "db"),
    [
        ("redis://127.0.0.1:6380/3", Address("127.0.0.1", 6380), 3),
        ("redis://cache", Address("cache", 6379), 0),
        ("redis://:s%40cret@cache:7000/0", Address("cache", 7000, None, "s@cret"), 0),
        ("rediss://app:pw@redis.example/1", Address("redis.example", 6379, "app", "pw", True), 1),
    ],
)
def test_redis_urls(url: str, address: Address, db: int) -> None:
    assert parse_redis_url(url) == (address, db)


@pytest.mark.parametrize("url", ["http://cache:6379/0", "redis://cache/zero", "cache:6379"])
def test_bad_redis_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="invalid Redis URL"):
        RedisBroker(url)


async def test_pipelined_replies_reach_their_callers_in_order(redis_url: str) -> None:
    address, db = parse_redis_url(redis_url)
    pipeline = Pipeline(address)
    await pipeline.connect(5 * UNIT, db)
    try:
        calls = [pipeline.call("INCR", "counter") for _ in range(500)]
        async with asyncio.timeout(5 * UNIT):
            assert await asyncio.gather(*calls) == list(range(1, 501))
        with pytest.raises(BrokerError, match=r"refused: .*WRONGTYPE"):
            await pipeline.call("LPUSH", "counter", "x")
        assert await pipeline.call("GET", "counter") == b"500"  # the connection goes on
    finally:
        pipeline.close()


async def test_a_broken_connection_fails_every_waiting_call(redis_process: RedisProcess) -> None:
    address, db = parse_redis_url(redis_process.url)
    pipeline = Pipeline(address)
    await pipeline.connect(5 * UNIT, db)
    redis_process.pause()
    try:
        waiting = [pipeline.call("PING") for _ in range(3)]
        pipeline.close()
        for call in waiting:
            with pytest.raises(BrokerError, match="broke"):
                await call
        with pytest.raises(BrokerError, match="not connected"):
            pipeline.call("PING")
    finally:
        redis_process.resume()


async def test_scripts_flushed_from_redis_are_loaded_again(redis_url: str) -> None:
    broker = RedisBroker(redis_url)
    await broker.start()
    try:
        first = await broker.publish("s", b"1")
        address, db = parse_redis_url(redis_url)
        admin = Pipeline(address)
        await admin.connect(5 * UNIT, db)
        await admin.call("SCRIPT", "FLUSH")
        admin.close()
        second = await broker.publish("s", b"2")
        assert (second.position.epoch, second.seq) == (first.position.epoch, first.seq + 1)
    finally:
        await broker.aclose()


async def test_concurrent_first_reads_share_the_link_being_opened(redis_url: str) -> None:
    """On a fresh node, reads of several channels at once wait for the one pub/sub link."""
    broker = RedisBroker(redis_url)
    await broker.start()
    try:
        channels = [f"fresh-{n}" for n in range(8)]
        async with asyncio.timeout(5 * UNIT):
            await asyncio.gather(*(broker.prepare({c: ORIGIN}) for c in channels))
        assert all(broker.ready({c: ORIGIN}) for c in channels)
        assert broker.health()["links"] == {"connected": 1, "total": 1}
        assert broker.health()["status"] == "ok"
    finally:
        await broker.aclose()


async def test_a_followed_channel_nobody_publishes_to_keeps_its_epoch_in_redis(
        redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata of an unpublished channel expires, unless nodes still follow it."""
    broker = RedisBroker(redis_process.url)
    await broker.start()
    try:
        await broker.prepare({"quiet": ORIGIN})
        meta = ChannelKeys.of("quiet").meta
        assert 0 < int(redis_process.command("PTTL", meta)) <= UNUSED_META_TTL_MS
        redis_process.command("PEXPIRE", meta, "60000")
        monkeypatch.setattr(broker_module, "UNUSED_META_REFRESH_SECONDS", 0.0)
        broker.maintain()
        await until(lambda: int(redis_process.command("PTTL", meta)) > 60000)
        epoch = broker.read("quiet", ORIGIN, 1).next.epoch
        assert redis_process.command("HGET", meta, "epoch") == epoch.encode()
    finally:
        await broker.aclose()
