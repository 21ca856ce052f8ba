"""ChannelLog.read_back: history backwards, newest first, against a model.

Driven with explicit ``now_ms`` values; no clock, no loop.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.cursor import END, ORIGIN, Position, Start
from tidings.core.log import BackRead, ChannelLog, Gap, Retention
from tidings.errors import InvalidCursor

EPOCH = "k2j4h5g6"
OTHER_EPOCH = "q9w8e7r6"


def filled(count: int, size: int = 10_000) -> ChannelLog:
    log = ChannelLog("chat", Retention(size=size, ttl=10_000.0), epoch=EPOCH)
    for i in range(count):
        log.append(b'{"n":%d}' % (i + 1), 1_000 + i)
    return log


def seqs(read: BackRead) -> list[int]:
    return [m.seq for m in read.messages]


def test_the_newest_messages_come_first() -> None:
    log = filled(10)
    read = log.read_back(END, ORIGIN, 3)
    assert seqs(read) == [10, 9, 8]
    assert read.top is log.end  # the shared end object
    assert (read.more, read.gap) == (True, None)


def test_paging_back_with_the_oldest_id_reaches_the_first_message_once() -> None:
    log = filled(10)
    seen: list[int] = []
    before: Start = END
    while True:
        read = log.read_back(before, ORIGIN, 4)
        seen += seqs(read)
        if not read.more:
            break
        before = read.messages[-1].position
    assert seen == list(range(10, 0, -1))


def test_before_is_exclusive_and_top_is_where_a_forward_read_goes_on() -> None:
    log = filled(10)
    read = log.read_back(Position(EPOCH, 6), ORIGIN, 100)
    assert seqs(read) == [5, 4, 3, 2, 1]
    assert read.top == Position(EPOCH, 5)
    assert not read.more
    assert log.read(read.top, 100).messages[0].seq == 6


def test_since_bounds_the_page_from_below() -> None:
    log = filled(10)
    read = log.read_back(END, Position(EPOCH, 7), 100)
    assert seqs(read) == [10, 9, 8]
    assert not read.more
    read = log.read_back(END, Position(EPOCH, 4), 2)
    assert seqs(read) == [10, 9] and read.more
    assert log.read_back(Position(EPOCH, 5), Position(EPOCH, 5), 9).messages == []
    assert log.read_back(Position(EPOCH, 5), Position(EPOCH, 8), 9).messages == []


def test_an_empty_log() -> None:
    log = ChannelLog("chat", Retention(), epoch=EPOCH)
    read = log.read_back(END, ORIGIN, 50)
    assert read == BackRead([], Position(EPOCH, 0), False, None)


def test_since_older_than_the_window_gets_the_forward_reads_gap_at_the_bottom() -> None:
    log = filled(10, size=4)  # keeps 7..10
    read = log.read_back(END, Position(EPOCH, 2), 2)
    assert seqs(read) == [10, 9] and read.more and read.gap is None  # not at the bottom yet
    read = log.read_back(read.messages[-1].position, Position(EPOCH, 2), 5)
    assert seqs(read) == [8, 7] and not read.more
    assert read.gap == Gap("chat", Position(EPOCH, 2), Position(EPOCH, 6), "expired", 4)
    assert read.gap == log.read(Position(EPOCH, 2), 100).gap


def test_origin_never_gets_a_gap_even_when_older_messages_expired() -> None:
    log = filled(10, size=4)
    read = log.read_back(END, ORIGIN, 100)
    assert seqs(read) == [10, 9, 8, 7]
    assert (read.more, read.gap) == (False, None)
    # below the window: nothing, and the oldest id's seq (7 > 1) told the client already
    assert log.read_back(Position(EPOCH, 3), ORIGIN, 100) == BackRead(
        [], Position(EPOCH, 2), False, None)


def test_before_of_another_epoch_is_a_lost_log() -> None:
    log = filled(3)
    read = log.read_back(Position(OTHER_EPOCH, 40), ORIGIN, 10)
    assert read == BackRead([], log.end, False,
                            Gap("chat", Position(OTHER_EPOCH, 40), log.end, "epoch", None))


def test_since_of_another_epoch_reads_down_to_the_oldest_with_an_epoch_gap() -> None:
    log = filled(3)
    read = log.read_back(END, Position(OTHER_EPOCH, 40), 10)
    assert seqs(read) == [3, 2, 1]
    assert read.gap == Gap("chat", Position(OTHER_EPOCH, 40), Position(EPOCH, 0), "epoch", None)


@pytest.mark.parametrize(("before", "since"), [
    (Position(EPOCH, 11), ORIGIN),
    (END, Position(EPOCH, 11)),
    (Position(EPOCH, 5), Position(EPOCH, 11)),
])
def test_positions_ahead_of_the_end_are_refused(before: Start, since: Start) -> None:
    with pytest.raises(InvalidCursor, match="ahead of the end"):
        filled(10).read_back(before, since, 5)


@given(count=st.integers(0, 40), size=st.integers(1, 30),
       before=st.one_of(st.none(), st.integers(1, 40)),
       since=st.one_of(st.none(), st.integers(0, 40)), limit=st.integers(1, 45))
def test_read_back_matches_a_model(count: int, size: int, before: int | None,
                                   since: int | None, limit: int) -> None:
    log = filled(count, size)
    before_start: Start = END if before is None or not count else Position(
        EPOCH, min(before, count))
    since_start: Start = ORIGIN if since is None else Position(EPOCH, min(since, count))
    read = log.read_back(before_start, since_start, limit)
    upper = count if before_start is END else min(before or 0, count) - 1
    lower = 0 if since is None else min(since, count)
    wanted = [s for s in range(upper, lower, -1) if s >= log.first_seq]
    assert seqs(read) == wanted[:limit]
    assert read.more == (len(wanted) > limit)
    assert read.top == Position(EPOCH, upper)
    expired = since is not None and lower < log.first_seq - 1 and lower < upper
    assert (read.gap is not None) == (expired and not read.more)
    if read.gap is not None:
        assert read.gap == log.read(since_start, 1).gap
