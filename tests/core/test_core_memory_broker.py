"""MemoryBroker driven by a fake clock, without an event loop (except one test)."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tidings.brokers import memory
from tidings.brokers.base import Replayed
from tidings.brokers.memory import STAND_INS, MemoryBroker
from tidings.core.cursor import END, ORIGIN, Position, parse_position
from tidings.core.fanout import Hub
from tidings.core.log import ChannelLog, Retention
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
    broker = make(clock, Settings(history_ttl=1), idle=1)
    live = Recorder()
    broker.hub.subscribe("news", live)
    message = broker.publish_nowait("news", b"1")
    clock.advance(3600)
    broker.maintain()
    assert broker.channels() == 1
    assert (len(broker.log("news")), broker.log("news").end) == (0, message.position)
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


def test_a_log_whose_messages_expired_goes_on_with_its_ids() -> None:
    clock = Clock()
    broker = make(clock, Settings(history_ttl=10))
    first = broker.publish_nowait("news", b"1")
    clock.advance(10)
    broker.maintain()
    assert broker.channels() == 1 and len(broker.log("news")) == 0
    assert broker.publish_nowait("news", b"2").position == Position(first.position.epoch, 2)
    clock.advance(10)
    broker.read("news", END, 10)  # trims by age too
    assert broker.publish_nowait("news", b"3").position == Position(first.position.epoch, 3)


# Reads keep nothing ------------------------------------------------------------


def held_state(broker: MemoryBroker) -> list[int]:
    """The sizes of everything the broker keeps per channel."""
    return [broker.channels(), len(broker._logs), len(broker._expiries), len(broker._forgets),
            len(broker._tombstones)]


def test_reading_unknown_channels_keeps_nothing() -> None:
    broker = make(Clock())
    broker.read("warm-up", END, 10)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            for start in (END, ORIGIN):
                read = broker.read(f"unknown-{i}", start, 100)
                assert (read.messages, read.gap, read.next.seq) == ([], None, 0)
            broker.read(f"unknown-{i}", read.next, 100)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held_state(broker) == [0, 0, 0, 0, 0]
    assert grown < 64 * 1024  # a log per channel was ~300 bytes: 3 MB here


def test_a_cursor_of_an_unknown_channel_resumes_without_a_gap() -> None:
    clock = Clock()
    broker = make(clock, idle=100)
    cursor = broker.read("news", END, 10).next
    assert cursor.seq == 0
    for _ in range(3):  # long past idle_log_seconds: nothing to forget, nothing changes
        clock.advance(150)
        broker.maintain()
        assert broker.read("news", ORIGIN, 10).next == cursor
    assert broker.channels() == 0
    message = broker.publish_nowait("news", b"1")
    assert message.position == Position(cursor.epoch, 1)
    read = broker.read("news", cursor, 10)
    assert (read.gap, read.messages) == (None, [message])


def test_unknown_channels_have_epochs_of_their_own_per_broker() -> None:
    clock = Clock()
    broker = make(clock)
    cursor = broker.read("news", END, 10).next
    assert parse_position(str(cursor)) == cursor
    assert broker.read("other", END, 10).next.epoch != cursor.epoch
    restarted = make(clock)
    read = restarted.read("news", cursor, 10)
    assert read.gap is not None and read.gap.reason == "epoch"
    assert restarted.publish_nowait("news", b"1").position.epoch != cursor.epoch


def test_reading_a_forgotten_channel_keeps_nothing_more() -> None:
    clock = Clock()
    broker = make(clock, Settings(history_ttl=10), idle=100)
    message = forget_news(clock, broker)
    for _ in range(3):
        read = broker.read("news", message.position, 100)
        assert (read.gap, read.next) == (None, message.position)
    assert held_state(broker) == [0, 0, 0, 0, 1]


def test_past_the_tombstone_limit_a_read_gets_the_epoch_the_next_log_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "MAX_TOMBSTONES", 0)
    clock = Clock()
    broker = make(clock, Settings(history_ttl=10), idle=100)
    message = forget_news(clock, broker)
    read = broker.read("news", message.position, 100)
    assert read.gap is not None and read.gap.reason == "epoch"
    assert read.next.epoch != message.position.epoch and read.next.seq == 0
    assert broker.channels() == 0
    following = broker.publish_nowait("news", b"2")
    assert following.position == Position(read.next.epoch, 1)
    assert broker.read("news", read.next, 10).messages == [following]


def test_the_least_recently_read_tombstones_are_dropped_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "MAX_TOMBSTONES", 2)
    clock = Clock()
    broker = make(clock, Settings(history_ttl=1), idle=1)
    ends = {name: broker.publish_nowait(name, b"1").position for name in ("a", "b", "c")}
    clock.advance(3)
    broker.maintain()
    assert held_state(broker) == [0, 0, 0, 0, 2]  # "a" was dropped
    broker.read("b", END, 10)
    broker.publish_nowait("d", b"1")
    clock.advance(3)
    broker.maintain()  # "c" is dropped, not "b", which was read
    for name, reason in (("a", "epoch"), ("b", None), ("c", "epoch")):
        gap = broker.read(name, ends[name], 10).gap
        assert (gap and gap.reason) == reason


# Upkeep looks only at what is due ---------------------------------------------


class Calls:
    """Counts the calls of a method, patched on its class."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
        self.count = 0
        method = getattr(cls, name)

        def counted(*args: Any) -> Any:
            self.count += 1
            return method(*args)

        monkeypatch.setattr(cls, name, counted)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def test_maintain_looks_only_at_due_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    start = clock.now
    broker = make(clock, Settings(history_ttl=60), idle=600)
    for i in range(10_000):  # 1,000 channels a second for 10 s
        clock.now = start + i // 1000 * 1000
        broker.publish_nowait(f"c{i}", b"1")
    trims = Calls(monkeypatch, ChannelLog, "trim")
    lookups = Calls(monkeypatch, Hub, "subscribers")

    def at(seconds: float) -> tuple[int, int, int]:
        """maintain() at ``seconds`` after the start: the trims, hub lookups and logs left."""
        clock.now = start + int(seconds * 1000)
        broker.maintain()
        return trims.take(), lookups.take(), broker.channels()

    assert at(59.999) == (0, 0, 10_000)
    assert at(60) == (1000, 0, 10_000)  # the first 1,000 messages are 60 s old
    assert at(69) == (9000, 0, 10_000)  # all are; the logs are empty, not idle yet
    assert at(600) == (0, 0, 10_000)
    assert at(600.001) == (0, 1000, 9000)  # the first 1,000 were published 600.001 s ago
    assert at(609.001) == (0, 9000, 0)
    assert held_state(broker) == [0, 0, 0, 0, 10_000]


def test_expiry_and_forgetting_happen_at_their_times() -> None:
    clock = Clock()
    start = clock.now
    broker = make(clock, Settings(history_ttl=100, namespaces={"prices": Retention(100, 60)}),
                  idle=300)
    broker.publish_nowait("prices:A", b"1")
    broker.publish_nowait("news", b"1")

    def at(ms: int) -> tuple[int, int, int]:
        clock.now = start + ms
        broker.maintain()
        logs = broker._logs
        return (broker.channels(), len(logs["prices:A"]) if "prices:A" in logs else -1,
                len(logs["news"]) if "news" in logs else -1)

    assert at(59_999) == (2, 1, 1)
    assert at(60_000) == (2, 0, 1)
    assert at(99_999) == (2, 0, 1)
    assert at(100_000) == (2, 0, 0)
    broker.read("news", END, 10)  # at 100 s: news is forgotten 300 s after that
    assert at(300_000) == (2, 0, 0)
    assert at(300_001) == (1, -1, 0)
    assert at(400_000) == (1, -1, 0)
    assert at(400_001) == (0, -1, -1)


def test_the_same_read_again_keeps_a_log_as_the_clock_last_read() -> None:
    """``same_read`` (a poll repeated with nothing new) counts as a read for forgetting idle
    logs, stamped with the clock's last reading (by maintain, a read, a publish): no
    earlier than the read it repeats, and reading no clock of its own."""
    clock = Clock()
    start = clock.now
    broker = make(clock, idle=100)
    broker.log("news")
    found = broker.read("news", END, 10)  # at 0 s

    def at(ms: int) -> int:
        clock.now = start + ms
        broker.maintain()
        return broker.channels()

    assert at(60_000) == 1
    clock.now = start + 90_000  # read by nobody: same_read stamps 60 s, maintain's reading
    assert broker.same_read("news", END, 10, found)
    assert at(100_001) == 1  # idle since 0 s, had the poll not counted
    assert at(160_000) == 1
    assert at(160_001) == 0
    assert not broker.same_read("news", END, 10, found)  # forgotten: another log's end


def test_the_same_read_again_is_stamped_no_earlier_than_the_read_it_repeats() -> None:
    clock = Clock()
    start = clock.now
    broker = make(clock, idle=100)
    broker.log("news")
    clock.now = start + 70_000
    found = broker.read("news", END, 10)  # read at 70 s, after maintain last ran (never)
    assert broker.same_read("news", END, 10, found)
    clock.now = start + 170_000
    broker.maintain()
    assert broker.channels() == 1
    clock.now = start + 170_001
    broker.maintain()
    assert broker.channels() == 0


def test_one_late_maintain_does_all_that_is_due() -> None:
    clock = Clock()
    broker = make(clock, Settings(history_ttl=10), idle=100)
    broker.publish_nowait("news", b"1")
    broker.log("empty")
    clock.advance(1000)
    broker.maintain()
    assert held_state(broker) == [0, 0, 0, 0, 1]


def test_the_schedules_stay_small_however_a_log_is_used() -> None:
    clock = Clock()
    broker = make(clock, Settings(history_ttl=1), idle=3600)
    for i in range(2000):
        broker.publish_nowait("news", b"1")
        clock.advance(1)
        if i % 2:
            broker.read("news", ORIGIN, 10)  # trims by age, out of schedule
        broker.maintain()
        assert len(broker._expiries) + len(broker._forgets) <= 2


# A model-based test ---------------------------------------------------------

TTL_MS, IDLE_MS = 5_000, 8_000
CHANNELS = ("a", "b", "small:x")


class BrokerMachine(RuleBasedStateMachine):
    """Random publishes, reads, subscriptions and upkeep on a fake clock.

    Whatever happens, a cursor this broker gave never gets an ``epoch`` gap
    (tombstones are not limited here), a read never returns an expired
    message, maintain() leaves nothing due undone, and each held log has
    exactly its live entries in the schedules.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        config = Settings(history_ttl=TTL_MS / 1000,
                          namespaces={"small": Retention(2, TTL_MS / 1000)})
        self.broker = make(self.clock, config, idle=IDLE_MS / 1000)
        self.cursors: dict[str, list[Position]] = {channel: [] for channel in CHANNELS}
        self.subscribers: dict[str, list[Recorder]] = {channel: [] for channel in CHANNELS}
        self.unsubscribed = dict.fromkeys(CHANNELS, 0)

    @rule(ms=st.integers(0, 2 * IDLE_MS))
    def advance(self, ms: int) -> None:
        self.clock.now += ms

    @rule(channel=st.sampled_from(CHANNELS))
    def publish(self, channel: str) -> None:
        message = self.broker.publish_nowait(channel, b"1")
        assert message.seq == 1 or self.cursors[channel], "ids of a channel went back to 1"
        self.cursors[channel].append(message.position)

    @rule(channel=st.sampled_from(CHANNELS), data=st.data())
    def read(self, channel: str, data: st.DataObject) -> None:
        start = data.draw(st.sampled_from([END, ORIGIN, *self.cursors[channel]]))
        read = self.broker.read(channel, start, 100)
        assert read.gap is None or read.gap.reason == "expired"
        now = self.clock.now
        assert all(message.time + TTL_MS > now for message in read.messages)
        if isinstance(start, Position) and read.gap is None:
            assert [m.seq for m in read.messages] == list(
                range(start.seq + 1, start.seq + 1 + len(read.messages)))
        self.cursors[channel].append(read.next)

    @rule(channel=st.sampled_from(CHANNELS))
    def subscribe(self, channel: str) -> None:
        recorder = Recorder()
        self.broker.hub.subscribe(channel, recorder)
        self.subscribers[channel].append(recorder)

    @rule(channel=st.sampled_from(CHANNELS))
    def unsubscribe(self, channel: str) -> None:
        if self.subscribers[channel]:
            self.broker.hub.unsubscribe(channel, self.subscribers[channel].pop())
            self.unsubscribed[channel] = self.clock.now

    @rule()
    def maintain(self) -> None:
        subscribed = {channel for channel in self.broker._logs if self.subscribers[channel]}
        self.broker.maintain()
        now = self.clock.now
        assert subscribed <= self.broker._logs.keys(), "a log with subscribers was forgotten"
        for channel, log in self.broker._logs.items():
            assert not log.select(lambda m: m.time + TTL_MS <= now), "maintain() was late"
            if not len(log) and not self.subscribers[channel]:
                # (one with subscribers at its last look is looked at again IDLE_MS later)
                idle = now - max(log.touched, self.unsubscribed[channel])
                assert idle <= IDLE_MS, "an idle empty log was kept"

    @invariant()
    def schedules_hold_exactly_the_live_entries(self) -> None:
        logs = self.broker._logs.items()
        assert sorted(self.broker._expiries) == sorted(
            (log.expiry_due, channel) for channel, log in logs if log.expiry_due >= 0)
        assert sorted(self.broker._forgets) == sorted(
            (log.forget_due, channel) for channel, log in logs if log.forget_due >= 0)
        for log in self.broker._logs.values():
            assert not len(log) or log.expiry_due >= 0, "a log with messages is not scheduled"


TestBrokerMachine = BrokerMachine.TestCase
TestBrokerMachine.settings = hypothesis.settings(max_examples=150, stateful_step_count=50,
                                                 deadline=None)


def test_readers_of_a_channel_without_a_log_share_its_end() -> None:
    """Idle subscribers of a quiet channel hold one position between them, not one each;
    the stand-ins that make it so are a bounded cache."""
    broker = MemoryBroker()
    first = broker.read("quiet", END, 0).next
    assert broker.read("quiet", END, 0).next is first
    for n in range(3 * STAND_INS):
        broker.read(f"other-{n}", END, 0)
    assert len(broker._stand_ins) <= STAND_INS
    message = broker.publish_nowait("quiet", b"1")  # the log starts where the stand-in said
    assert message.position == Position(first.epoch, 1)


def test_keys_outlive_a_forgotten_log_without_keeping_one() -> None:
    """A window longer than idle_log_seconds: the replay is answered, no log is made for it."""
    clock = Clock()
    broker = make(clock, Settings(history_ttl=60, idempotency_window=7200), idle=600)
    first = broker.publish_nowait("jobs", b"1", idempotency_key="k")
    clock.advance(60 + 600 + 1)
    broker.maintain()  # expired, then forgotten: only a tombstone is left
    assert broker.channels() == 0
    again = broker.publish_nowait("jobs", b"1", idempotency_key="k")
    assert isinstance(again, Replayed) and again.id == first.id
    assert broker.channels() == 0
    clock.advance(7200)
    broker.maintain()
    assert broker.publish_nowait("jobs", b"1", idempotency_key="k").seq == 2


def test_idempotency_records_are_bounded_the_oldest_dropped_first(
        caplog: pytest.LogCaptureFixture) -> None:
    """However fast keys come, at most max_idempotency_keys records are held; dropping one
    is logged, and only the records nearest to the end of their window go."""
    clock = Clock()
    broker = MemoryBroker(Settings(idempotency_window=300).retention, clock=clock,
                          max_idempotency_keys=100)
    for n in range(250):
        broker.publish_nowait("jobs", b"%d" % n, idempotency_key=f"k{n}")
        clock.advance(0.01)
    assert len(broker._keys) == 100 and broker.idempotency_keys_dropped == 150
    assert sum("idempotency keys" in r.getMessage() for r in caplog.records) == 1
    kept = broker.publish_nowait("jobs", b"249", idempotency_key="k249")
    assert isinstance(kept, Replayed) and kept.seq == 250
    dropped = broker.publish_nowait("jobs", b"0", idempotency_key="k0")
    assert not isinstance(dropped, Replayed) and dropped.seq == 251
