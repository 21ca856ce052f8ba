"""MemoryBroker driven by a fake clock, without an event loop (except one test)."""

from __future__ import annotations

import asyncio

import pytest

from tidings.brokers import memory
from tidings.brokers.memory import MemoryBroker
from tidings.core.cursor import END, ORIGIN, Position
from tidings.core.log import Retention
from tidings.core.message import Message
from tidings.settings import Settings


class Clock:
    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, message: Message) -> None:
        self.messages.append(message)


def make(clock: Clock, settings: Settings | None = None, idle: float = 3600.0) -> MemoryBroker:
    settings = settings or Settings()
    return MemoryBroker(settings.retention, clock=clock, idle_log_seconds=idle)


def test_publish_stamps_time_and_appends() -> None:
    clock = Clock()
    broker = make(clock)
    first = broker.publish_nowait("news", b'{"a":1}')
    clock.advance(1)
    second = broker.publish_nowait("news", b'{"a":2}')
    assert first.time == 1_000_000 and second.time == 1_001_000
    assert second.seq == first.seq + 1
    read = broker.read("news", ORIGIN, 100)
    assert [m.data for m in read.messages] == [b'{"a":1}', b'{"a":2}']
    assert broker.channels() == 1


def test_async_publish() -> None:
    broker = make(Clock())
    message = asyncio.run(broker.publish("news", b"1"))
    assert broker.read("news", ORIGIN, 10).messages == [message]


def test_hub_gets_live_messages_in_order() -> None:
    broker = make(Clock())
    news, other = Recorder(), Recorder()
    broker.hub.subscribe("news", news)
    broker.hub.subscribe("other", other)
    published = [broker.publish_nowait("news", b"%d" % i) for i in range(5)]
    assert news.messages == published
    assert other.messages == []


def test_read_then_subscribe_misses_nothing_and_repeats_nothing() -> None:
    broker = make(Clock())
    for i in range(3):
        broker.publish_nowait("news", b"%d" % i)
    live = Recorder()
    read = broker.read("news", Position(broker.log("news").epoch, 1), 100)
    broker.hub.subscribe("news", live)
    later = broker.publish_nowait("news", b"3")
    assert [m.seq for m in read.messages] + [m.seq for m in live.messages] == [2, 3, 4]
    assert live.messages == [later]


def test_per_namespace_retention() -> None:
    clock = Clock()
    broker = make(clock, Settings(history_size=5, namespaces={"prices": Retention(2, 60)}))
    for i in range(10):
        broker.publish_nowait("prices:AAPL", b"%d" % i)
        broker.publish_nowait("news", b"%d" % i)
        broker.publish_nowait("pricesX", b"%d" % i)
    assert [m.data for m in broker.read("prices:AAPL", ORIGIN, 100).messages] == [b"8", b"9"]
    assert len(broker.read("news", ORIGIN, 100).messages) == 5
    assert len(broker.read("pricesX", ORIGIN, 100).messages) == 5  # no ':' -> no namespace


def test_maintain_trims_by_age() -> None:
    clock = Clock()
    broker = make(clock, Settings(namespaces={"prices": Retention(100, 60)}))
    broker.publish_nowait("prices:AAPL", b"1")
    broker.publish_nowait("news", b"1")
    clock.advance(30)
    broker.publish_nowait("prices:AAPL", b"2")
    clock.advance(30)
    broker.maintain()
    log = broker.log("prices:AAPL")
    assert [m.data for m in log.select(lambda m: True)] == [b"2"]
    assert len(broker.log("news")) == 1
    clock.advance(30)
    broker.maintain()
    assert len(log) == 0
    assert broker.channels() == 2  # empty, but not idle yet


def test_read_applies_age_retention_without_maintain() -> None:
    clock = Clock()
    broker = make(clock, Settings(history_ttl=10))
    first = broker.publish_nowait("news", b"1")
    clock.advance(10)
    read = broker.read("news", Position(first.position.epoch, 0), 100)
    assert read.messages == []
    assert read.gap is not None and read.gap.reason == "expired" and read.gap.missed == 1


def forget_news(clock: Clock, broker: MemoryBroker) -> Message:
    """Publish one message on "news", then let it expire and the empty log be forgotten."""
    message = broker.publish_nowait("news", b"1")
    clock.advance(10)
    broker.maintain()  # trims the message; the log is empty now
    assert broker.channels() == 1
    clock.advance(50)
    broker.maintain()  # empty but touched 60 s ago: kept
    assert broker.channels() == 1
    clock.advance(51)
    broker.maintain()
    assert broker.channels() == 0
    return message


def test_a_forgotten_log_comes_back_where_it_was() -> None:
    clock = Clock()
    broker = make(clock, Settings(history_ttl=10), idle=100)
    message = forget_news(clock, broker)
    # A reader that had seen everything goes on with no gap ...
    read = broker.read("news", message.position, 100)
    assert (read.gap, read.messages, read.next) == (None, [], message.position)
    # ... one that had not is told exactly what expired ...
    behind = broker.read("news", Position(message.position.epoch, 0), 100)
    assert behind.gap is not None and behind.gap.reason == "expired"
    assert behind.gap.missed == 1
    # ... and the log's ids go on.
    following = broker.publish_nowait("news", b"2")
    assert following.position == Position(message.position.epoch, 2)


def test_past_the_tombstone_limit_a_forgotten_log_gets_a_new_epoch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "MAX_TOMBSTONES", 0)
    clock = Clock()
    broker = make(clock, Settings(history_ttl=10), idle=100)
    message = forget_news(clock, broker)
    read = broker.read("news", message.position, 100)
    assert broker.log("news").epoch != message.position.epoch
    assert read.gap is not None
    assert read.gap.reason == "epoch"
    assert read.gap.missed is None
    assert read.gap.start == message.position
    assert read.next == Position(broker.log("news").epoch, 0)


def test_reads_keep_an_empty_log_alive() -> None:
    clock = Clock()
    broker = make(clock, idle=100)
    epoch = broker.read("news", END, 10).next.epoch
    for _ in range(5):
        clock.advance(60)
        broker.read("news", END, 10)
        broker.maintain()
    assert broker.log("news").epoch == epoch


def test_logs_with_subscribers_are_kept_however_idle() -> None:
    clock = Clock()
    broker = make(clock, idle=1)
    live = Recorder()
    epoch = broker.read("news", END, 10).next.epoch
    broker.hub.subscribe("news", live)
    clock.advance(3600)
    broker.maintain()
    assert broker.log("news").epoch == epoch
    broker.hub.unsubscribe("news", live)
    clock.advance(2)
    broker.maintain()
    assert broker.channels() == 0


def test_logs_with_messages_are_never_forgotten() -> None:
    clock = Clock()
    broker = make(clock, idle=1)
    message = broker.publish_nowait("news", b"1")
    clock.advance(1000)
    broker.maintain()
    assert broker.channels() == 1
    assert broker.read("news", ORIGIN, 10).messages == [message]
