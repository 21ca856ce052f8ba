"""ChannelLog: ids, reads from every cursor, retention, gaps, paging.

Every test drives the log with explicit ``now_ms`` values; no clock, no loop.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tidings.core.cursor import END, ORIGIN, Position, parse_position
from tidings.core.log import ChannelLog, Gap, Retention
from tidings.errors import InvalidCursor

EPOCH = "k2j4h5g6"
OTHER_EPOCH = "q9w8e7r6"
BIG = Retention(size=10_000, ttl=10_000.0)


def filled(count: int, retention: Retention = BIG, start_ms: int = 1_000) -> ChannelLog:
    log = ChannelLog("news", retention, epoch=EPOCH)
    for i in range(count):
        log.append(b'{"n":%d}' % i, start_ms + i)
    return log


def seqs(messages: list) -> list[int]:
    return [m.seq for m in messages]


# Appending ------------------------------------------------------------------


def test_new_log_is_empty_at_seq_zero() -> None:
    log = ChannelLog("news", BIG, epoch=EPOCH)
    assert len(log) == 0
    assert log.end == Position(EPOCH, 0)
    assert log.first_seq == 1


def test_new_log_gets_a_fresh_epoch() -> None:
    a, b = ChannelLog("news", BIG), ChannelLog("news", BIG)
    assert a.epoch != b.epoch
    parse_position(f"{a.epoch}-0")


def test_append_ids_strictly_increase() -> None:
    log = ChannelLog("news", BIG, epoch=EPOCH)
    ids = [log.append(b"1", 5).position for _ in range(200)]
    assert ids == [Position(EPOCH, i) for i in range(1, 201)]
    assert log.end == Position(EPOCH, 200)


def test_message_fields_and_json() -> None:
    log = ChannelLog("prices:AAPL", BIG, epoch=EPOCH)
    message = log.append(b'{"p":187.2}', 1_700_000_000_123)
    assert message.channel == "prices:AAPL"
    assert message.id == f"{EPOCH}-1"
    assert message.data == b'{"p":187.2}'
    assert message.time == 1_700_000_000_123
    assert json.loads(message.json) == {
        "channel": "prices:AAPL", "id": f"{EPOCH}-1", "data": {"p": 187.2},
        "time": 1_700_000_000_123,
    }


# Reading --------------------------------------------------------------------


def test_read_from_every_position_returns_exactly_the_later_messages() -> None:
    log = filled(30)
    for seq in range(31):
        read = log.read(Position(EPOCH, seq), 1000)
        assert seqs(read.messages) == list(range(seq + 1, 31))
        assert read.gap is None
        assert read.after == Position(EPOCH, seq)
        assert read.next == Position(EPOCH, 30)
        assert not read.more


def test_reading_on_from_next_never_repeats_or_skips() -> None:
    log = filled(10)
    cursor = Position(EPOCH, 0)
    seen: list[int] = []
    for _ in range(20):
        read = log.read(cursor, 3)
        seen += seqs(read.messages)
        cursor = read.next
    assert seen == list(range(1, 11))
    log.append(b"11", 2_000)
    assert seqs(log.read(cursor, 3).messages) == [11]


def test_end_returns_nothing_and_the_end() -> None:
    log = filled(5)
    read = log.read(END, 100)
    assert read.messages == []
    assert read.next == read.after == Position(EPOCH, 5)
    assert read.gap is None and not read.more


def test_end_of_an_empty_log() -> None:
    log = ChannelLog("news", BIG, epoch=EPOCH)
    assert log.read(END, 10).next == Position(EPOCH, 0)


def test_origin_reads_the_oldest_retained_without_a_gap() -> None:
    log = filled(10, Retention(size=4, ttl=1e9))
    read = log.read(ORIGIN, 100)
    assert seqs(read.messages) == [7, 8, 9, 10]
    assert read.gap is None
    assert read.after == Position(EPOCH, 6)
    assert read.next == Position(EPOCH, 10)


def test_origin_of_an_empty_log() -> None:
    log = ChannelLog("news", BIG, epoch=EPOCH)
    read = log.read(ORIGIN, 10)
    assert read.messages == [] and read.gap is None
    assert read.next == Position(EPOCH, 0)


def test_origin_of_a_log_emptied_by_retention() -> None:
    log = filled(5, Retention(size=5, ttl=1.0), start_ms=0)
    assert log.trim(10_000) == 5
    read = log.read(ORIGIN, 10)
    assert read.messages == [] and read.gap is None
    assert read.next == Position(EPOCH, 5)


def test_limit_and_more() -> None:
    log = filled(10)
    read = log.read(Position(EPOCH, 0), 4)
    assert seqs(read.messages) == [1, 2, 3, 4]
    assert read.more
    assert read.next == Position(EPOCH, 4)
    read = log.read(read.next, 4)
    assert seqs(read.messages) == [5, 6, 7, 8] and read.more
    read = log.read(read.next, 4)
    assert seqs(read.messages) == [9, 10]
    assert not read.more
    assert read.next == Position(EPOCH, 10)


def test_limit_exactly_reaching_the_end_has_no_more() -> None:
    log = filled(4)
    read = log.read(Position(EPOCH, 0), 4)
    assert seqs(read.messages) == [1, 2, 3, 4]
    assert not read.more


def test_limit_with_origin_and_gap() -> None:
    log = filled(10, Retention(size=5, ttl=1e9))
    read = log.read(ORIGIN, 2)
    assert seqs(read.messages) == [6, 7] and read.more
    read = log.read(Position(EPOCH, 1), 2)
    assert read.gap is not None and read.gap.missed == 4
    assert seqs(read.messages) == [6, 7] and read.more


def test_cursor_ahead_of_end_is_refused() -> None:
    log = filled(3)
    with pytest.raises(InvalidCursor, match="ahead"):
        log.read(Position(EPOCH, 4), 10)
    with pytest.raises(InvalidCursor):
        ChannelLog("news", BIG, epoch=EPOCH).read(Position(EPOCH, 1), 10)


# Retention ------------------------------------------------------------------


def test_retention_by_size() -> None:
    log = filled(10, Retention(size=3, ttl=1e9))
    assert len(log) == 3
    assert log.first_seq == 8
    assert seqs(log.read(ORIGIN, 100).messages) == [8, 9, 10]
    assert log.end == Position(EPOCH, 10)


def test_retention_size_zero_keeps_nothing_but_counts() -> None:
    log = filled(3, Retention(size=0, ttl=1e9))
    assert len(log) == 0
    assert log.end == Position(EPOCH, 3)
    read = log.read(Position(EPOCH, 1), 10)
    assert read.gap is not None and read.gap.missed == 2


def test_retention_by_ttl() -> None:
    log = ChannelLog("news", Retention(size=100, ttl=10.0), epoch=EPOCH)
    for t in (0, 1_000, 2_000, 5_000, 9_000):
        log.append(b"1", t)
    assert log.trim(9_999) == 0
    assert log.trim(10_000) == 1  # exactly ttl old: dropped
    assert log.first_seq == 2
    assert log.trim(11_500) == 1
    assert log.trim(12_500) == 1
    assert log.trim(15_000) == 1  # 5_000 is exactly 10 s old
    assert seqs(log.read(ORIGIN, 100).messages) == [5]
    assert log.trim(1_000_000) == 1
    assert len(log) == 0
    assert log.trim(2_000_000) == 0
    assert log.end == Position(EPOCH, 5)


def test_fractional_ttl() -> None:
    log = ChannelLog("news", Retention(size=100, ttl=0.25), epoch=EPOCH)
    log.append(b"1", 1_000)
    assert log.trim(1_249) == 0
    assert log.trim(1_250) == 1


def test_expires_at_is_when_trim_drops_the_oldest_message() -> None:
    log = ChannelLog("news", Retention(size=2, ttl=10.0), epoch=EPOCH)
    assert log.expires_at() is None
    log.append(b"1", 1_000)
    log.append(b"2", 4_000)
    assert log.expires_at() == 11_000
    log.append(b"3", 5_000)  # drops message 1 by size
    assert log.expires_at() == 14_000
    assert log.trim(13_999) == 0
    assert log.trim(14_000) == 1
    assert log.expires_at() == 15_000
    assert log.trim(15_000) == 1
    assert log.expires_at() is None


def test_long_runs_with_compaction_keep_reads_right() -> None:
    log = ChannelLog("news", Retention(size=7, ttl=1e9), epoch=EPOCH)
    for i in range(1, 1001):
        log.append(b"%d" % i, i)
        if i % 37 == 0:
            read = log.read(Position(EPOCH, i - 3), 100)
            assert seqs(read.messages) == [i - 2, i - 1, i]
            assert [m.data for m in read.messages] == [b"%d" % s for s in range(i - 2, i + 1)]
    assert seqs(log.read(ORIGIN, 100).messages) == list(range(994, 1001))
    assert [m.seq for m in log.select(lambda m: m.seq % 2 == 0)] == [994, 996, 998, 1000]


# Gaps -----------------------------------------------------------------------


def test_cursor_before_the_window_gets_an_expired_gap() -> None:
    log = filled(10, Retention(size=4, ttl=1e9))  # keeps 7..10
    read = log.read(Position(EPOCH, 2), 100)
    assert read.gap == Gap("news", Position(EPOCH, 2), Position(EPOCH, 6), "expired", 4)
    assert seqs(read.messages) == [7, 8, 9, 10]
    assert read.after == Position(EPOCH, 6)
    assert read.next == Position(EPOCH, 10)


def test_cursor_just_before_the_window_has_no_gap() -> None:
    log = filled(10, Retention(size=4, ttl=1e9))
    read = log.read(Position(EPOCH, 6), 100)
    assert read.gap is None
    assert seqs(read.messages) == [7, 8, 9, 10]


def test_epoch_zero_cursor_after_expiry() -> None:
    log = filled(10, Retention(size=4, ttl=1e9))
    gap = log.read(Position(EPOCH, 0), 100).gap
    assert gap is not None and gap.reason == "expired" and gap.missed == 6


def test_gap_when_everything_expired() -> None:
    log = filled(5, Retention(size=100, ttl=1.0), start_ms=0)
    log.trim(100_000)
    read = log.read(Position(EPOCH, 2), 100)
    assert read.messages == []
    assert read.gap == Gap("news", Position(EPOCH, 2), Position(EPOCH, 5), "expired", 3)
    assert read.next == Position(EPOCH, 5)


def test_cursor_of_another_epoch_gets_an_epoch_gap() -> None:
    log = filled(5, Retention(size=3, ttl=1e9))
    read = log.read(Position(OTHER_EPOCH, 99), 100)
    assert read.gap == Gap("news", Position(OTHER_EPOCH, 99), Position(EPOCH, 2), "epoch", None)
    assert seqs(read.messages) == [3, 4, 5]
    assert read.next == Position(EPOCH, 5)


def test_cursor_of_another_epoch_on_an_empty_log() -> None:
    log = ChannelLog("news", BIG, epoch=EPOCH)
    read = log.read(Position(OTHER_EPOCH, 7), 100)
    assert read.gap is not None and read.gap.reason == "epoch" and read.gap.missed is None
    assert read.next == Position(EPOCH, 0)


def test_gap_json() -> None:
    gap = Gap("news", Position(EPOCH, 2), Position(EPOCH, 6), "expired", 4)
    assert gap.to_json() == {
        "channel": "news", "from": f"{EPOCH}-2", "to": f"{EPOCH}-6", "reason": "expired",
        "missed": 4,
    }
    epoch_gap = Gap("news", Position(OTHER_EPOCH, 2), Position(EPOCH, 0), "epoch", None)
    assert epoch_gap.to_json()["missed"] is None


# A model-based test ---------------------------------------------------------


class LogMachine(RuleBasedStateMachine):
    """Random appends, trims and reads against a list of everything published."""

    @initialize(size=st.integers(0, 8), ttl_ms=st.integers(1, 50))
    def start(self, size: int, ttl_ms: int) -> None:
        self.log = ChannelLog("m", Retention(size=size, ttl=ttl_ms / 1000), epoch=EPOCH)
        self.size, self.ttl_ms = size, ttl_ms
        self.now = 0
        self.published: list[tuple[int, int]] = []  # (seq, time)
        self.dropped = 0  # messages 1..dropped are gone
        self.cursors: list[Position] = [Position(EPOCH, 0)]

    def retained(self) -> list[int]:
        return [seq for seq, _ in self.published[self.dropped:]]

    @rule(dt=st.integers(0, 20), count=st.integers(1, 5))
    def append(self, dt: int, count: int) -> None:
        self.now += dt
        for _ in range(count):
            message = self.log.append(b"%d" % self.now, self.now)
            self.published.append((message.seq, self.now))
            assert message.seq == len(self.published)
            self.dropped = max(self.dropped, len(self.published) - self.size)
            self.cursors.append(message.position)

    @rule(dt=st.integers(0, 30))
    def trim(self, dt: int) -> None:
        self.now += dt
        cutoff = self.now - self.ttl_ms
        before = self.dropped
        while self.dropped < len(self.published) and self.published[self.dropped][1] <= cutoff:
            self.dropped += 1
        assert self.log.trim(self.now) == self.dropped - before

    @rule(data=st.data(), limit=st.integers(1, 6))
    def read(self, data: st.DataObject, limit: int) -> None:
        cursor = data.draw(st.sampled_from(self.cursors))
        first = self.dropped + 1
        read = self.log.read(cursor, limit)
        if cursor.seq < first - 1:
            assert read.gap is not None
            assert read.gap.reason == "expired"
            assert read.gap.missed == first - 1 - cursor.seq
            assert read.gap.start == cursor
            assert read.gap.resume == Position(EPOCH, first - 1)
            expected = self.retained()
        else:
            assert read.gap is None
            expected = [seq for seq in self.retained() if seq > cursor.seq]
        assert seqs(read.messages) == expected[:limit]
        assert read.more == (len(expected) > limit)
        assert read.next.seq == (expected[:limit] or [read.after.seq])[-1]
        self.cursors.append(read.next)

    @rule(limit=st.integers(1, 6))
    def read_origin(self, limit: int) -> None:
        read = self.log.read(ORIGIN, limit)
        assert read.gap is None
        assert seqs(read.messages) == self.retained()[:limit]
        self.cursors.append(read.next)

    @rule()
    def read_other_epoch(self) -> None:
        read = self.log.read(Position(OTHER_EPOCH, 3), 1000)
        assert read.gap is not None and read.gap.reason == "epoch" and read.gap.missed is None
        assert seqs(read.messages) == self.retained()

    @invariant()
    def bounds(self) -> None:
        if not hasattr(self, "log"):
            return
        assert len(self.log) == len(self.published) - self.dropped <= self.size
        assert self.log.end == Position(EPOCH, len(self.published))
        assert self.log.first_seq == self.dropped + 1
        expected = self.published[self.dropped][1] + self.ttl_ms if len(self.log) else None
        assert self.log.expires_at() == expected


TestLogMachine = LogMachine.TestCase
TestLogMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
