"""One suite for every broker: the contract of ``tidings.brokers.base.Broker``.

Each test runs on every kind in ``brokerkit.KINDS`` (``harness``); those about
several nodes on one store, or a store lost under live subscribers, run on the
kinds that share a store (``shared_harness``). Reads go through
``read_ready``, as the server's do.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable

import pytest
from brokerkit import (
    KINDS,
    SHARED_KINDS,
    BrokerHarness,
    Recorder,
    open_harness,
    read_ready,
)

from conftest import UNIT
from tidings.brokers.base import Broker, Replayed
from tidings.core.cursor import END, ORIGIN, Position, Start, new_epoch
from tidings.core.log import BackRead, Gap, Read
from tidings.core.message import Message
from tidings.errors import IdempotencyConflict, InvalidCursor

CHANNEL = "conformance.news"
EPOCH_RE = re.compile(r"[a-z0-9]{8}")


@pytest.fixture(params=KINDS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[BrokerHarness]:
    """A harness of each kind of broker."""
    opened = open_harness(request.param, request.getfixturevalue)
    yield opened
    await opened.aclose()


@pytest.fixture(params=SHARED_KINDS)
async def shared_harness(request: pytest.FixtureRequest) -> AsyncIterator[BrokerHarness]:
    """A harness of each kind of broker whose store several nodes share."""
    opened = open_harness(request.param, request.getfixturevalue)
    assert opened.shared
    yield opened
    await opened.aclose()


async def publish_many(broker: Broker, count: int, channel: str = CHANNEL,
                       first: int = 1) -> list[Message]:
    return [await broker.publish(channel, b'{"n":%d}' % n) for n in range(first, first + count)]


def seqs(messages: list[Message]) -> list[int]:
    return [message.seq for message in messages]


def ids(messages: list[Message]) -> list[str]:
    return [message.id for message in messages]


async def read_until(broker: Broker, start: Start, condition: Callable[[Read], bool],
                     within: float) -> Read:
    """Read (running ``maintain`` as the server does) until ``condition`` holds; bounded."""
    read = await read_ready(broker, CHANNEL, start)
    async with asyncio.timeout(within):
        while not condition(read):
            await asyncio.sleep(0.05)
            broker.maintain()
            read = await read_ready(broker, CHANNEL, start)
    return read


# Publishing ------------------------------------------------------------------------------------


async def test_publish_returns_contiguous_messages_of_one_epoch(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    before = int(time.time() * 1000)
    published = await publish_many(broker, 5)
    after = int(time.time() * 1000)
    epoch = published[0].position.epoch
    assert EPOCH_RE.fullmatch(epoch)
    assert [m.position for m in published] == [Position(epoch, n) for n in range(1, 6)]
    assert ids(published) == [f"{epoch}-{n}" for n in range(1, 6)]
    assert [m.channel for m in published] == [CHANNEL] * 5
    assert [m.data for m in published] == [b'{"n":%d}' % n for n in range(1, 6)]
    for message in published:
        assert before - 1000 <= message.time <= after + 1000  # milliseconds of wall time
    assert published[0].json == (b'{"channel":"%s","id":"%s","data":{"n":1},"time":%d}'
                                 % (CHANNEL.encode(), published[0].id.encode(), published[0].time))


async def test_channels_have_logs_of_their_own(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    first = await publish_many(broker, 2, "conformance.a")
    second = await publish_many(broker, 3, "conformance.b")
    assert seqs(first) == [1, 2] and seqs(second) == [1, 2, 3]
    read = await read_ready(broker, "conformance.a", ORIGIN)
    assert ids(read.messages) == ids(first)


# Reading ---------------------------------------------------------------------------------------


async def test_read_from_origin_gives_every_retained_message(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    published = await publish_many(broker, 4)
    epoch = published[0].position.epoch
    read = await read_ready(broker, CHANNEL, ORIGIN)
    assert ids(read.messages) == ids(published)
    assert [m.data for m in read.messages] == [m.data for m in published]
    assert (read.after, read.next, read.gap, read.more) == (
        Position(epoch, 0), Position(epoch, 4), None, False)


async def test_read_from_end_gives_nothing_and_the_end(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    published = await publish_many(broker, 3)
    read = await read_ready(broker, CHANNEL, END)
    assert read.messages == []
    assert read.after == read.next == published[-1].position
    assert read.gap is None and not read.more


async def test_read_from_a_position_gives_what_follows(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    published = await publish_many(broker, 5)
    read = await read_ready(broker, CHANNEL, published[1].position)
    assert ids(read.messages) == ids(published[2:])
    assert (read.after, read.next, read.gap) == (
        published[1].position, published[-1].position, None)


async def test_read_from_the_last_id_gives_nothing(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    published = await publish_many(broker, 3)
    read = await read_ready(broker, CHANNEL, published[-1].position)
    assert read.messages == []
    assert read.after == read.next == published[-1].position
    assert read.gap is None and not read.more


async def test_read_with_a_limit_pages_with_more(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    published = await publish_many(broker, 5)
    pages: list[tuple[list[int], int, bool]] = []
    start: Start = ORIGIN
    for _ in range(4):
        read = await read_ready(broker, CHANNEL, start, limit=2)
        pages.append((seqs(read.messages), read.next.seq, read.more))
        start = read.next
    assert pages == [([1, 2], 2, True), ([3, 4], 4, True), ([5], 5, False), ([], 5, False)]
    assert read.next == published[-1].position


async def test_read_of_an_unknown_channel_is_an_empty_log_with_an_epoch(
        harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    for start in (ORIGIN, END):
        read = await read_ready(broker, "conformance.unknown", start)
        assert read.messages == [] and read.gap is None and not read.more
        assert EPOCH_RE.fullmatch(read.after.epoch)
        assert read.after == read.next == Position(read.after.epoch, 0)
    again = await read_ready(broker, "conformance.unknown", ORIGIN)
    assert again.next == read.next  # the same epoch, not a new one per read


async def test_first_publish_keeps_the_epoch_an_empty_read_gave(harness: BrokerHarness) -> None:
    """A client that read an empty channel resumes from its cursor without a gap."""
    broker = await harness.open_broker()
    empty = await read_ready(broker, CHANNEL, ORIGIN)
    (message,) = await publish_many(broker, 1)
    assert message.position == Position(empty.next.epoch, 1)
    read = await read_ready(broker, CHANNEL, empty.next)
    assert read.gap is None and ids(read.messages) == [message.id]


async def test_cursor_ahead_of_the_end_is_invalid(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    published = await publish_many(broker, 2)
    ahead = Position(published[0].position.epoch, 3)
    starts: dict[str, Start] = {CHANNEL: ahead}
    if not broker.ready(starts):
        async with asyncio.timeout(5 * UNIT):
            await broker.prepare(starts)  # only BrokerError may come out of prepare
    with pytest.raises(InvalidCursor):
        broker.read(CHANNEL, ahead, 10)


# Retention and gaps ----------------------------------------------------------------------------


async def test_retention_by_size_gives_an_expired_gap_with_the_exact_count(
        harness: BrokerHarness) -> None:
    broker = await harness.open_broker(size=3)
    published = await publish_many(broker, 5)
    epoch = published[0].position.epoch
    read = await read_ready(broker, CHANNEL, Position(epoch, 0))
    assert ids(read.messages) == ids(published[2:])
    assert read.gap is not None
    assert (read.gap.channel, read.gap.reason, read.gap.missed) == (CHANNEL, "expired", 2)
    assert (read.gap.start, read.gap.resume) == (Position(epoch, 0), Position(epoch, 2))
    assert (read.after, read.next) == (Position(epoch, 2), Position(epoch, 5))
    from_one = await read_ready(broker, CHANNEL, published[0].position)
    assert from_one.gap is not None and from_one.gap.missed == 1
    assert ids(from_one.messages) == ids(published[2:])
    inside = await read_ready(broker, CHANNEL, published[1].position)  # just before the oldest
    assert inside.gap is None and ids(inside.messages) == ids(published[2:])
    origin = await read_ready(broker, CHANNEL, ORIGIN)
    assert origin.gap is None and ids(origin.messages) == ids(published[2:])


async def test_retention_by_age_gives_an_expired_gap_with_the_exact_count(
        harness: BrokerHarness) -> None:
    ttl = 1.0
    broker = await harness.open_broker(ttl=ttl)
    published = await publish_many(broker, 3)
    epoch = published[0].position.epoch
    read = await read_until(broker, Position(epoch, 0), lambda read: read.gap is not None,
                            within=ttl + 5 * UNIT)
    assert read.messages == []
    assert read.gap is not None
    assert (read.gap.reason, read.gap.missed) == ("expired", 3)
    assert (read.gap.resume, read.next) == (Position(epoch, 3), Position(epoch, 3))
    (fresh,) = await publish_many(broker, 1, first=4)
    assert fresh.position == Position(epoch, 4)  # the log goes on in its epoch
    after_expiry = await read_ready(broker, CHANNEL, Position(epoch, 0))
    assert after_expiry.gap is not None and after_expiry.gap.missed == 3
    assert ids(after_expiry.messages) == [fresh.id]
    caught_up = await read_ready(broker, CHANNEL, published[-1].position)
    assert caught_up.gap is None and ids(caught_up.messages) == [fresh.id]


async def test_cursor_of_another_epoch_gives_an_epoch_gap_and_reads_from_the_oldest(
        harness: BrokerHarness) -> None:
    broker = await harness.open_broker(size=3)
    published = await publish_many(broker, 5)
    epoch = published[0].position.epoch
    other = next(e for e in iter(new_epoch, None) if e != epoch)
    stale = Position(other, 2)
    read = await read_ready(broker, CHANNEL, stale)
    assert read.gap is not None
    assert (read.gap.channel, read.gap.reason, read.gap.missed) == (CHANNEL, "epoch", None)
    assert (read.gap.start, read.gap.resume) == (stale, Position(epoch, 2))
    assert ids(read.messages) == ids(published[2:])
    assert read.next == published[-1].position


async def test_cursor_from_a_lost_store_gives_an_epoch_gap(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    old = await publish_many(broker, 3)
    broker = await harness.lose_store(broker)
    new = await publish_many(broker, 2, first=4)
    new_epoch_name = new[0].position.epoch
    assert new_epoch_name != old[0].position.epoch
    assert seqs(new) == [1, 2]  # a new log counts from 1 again
    read = await read_ready(broker, CHANNEL, old[-1].position)
    assert read.gap is not None
    assert (read.gap.reason, read.gap.missed) == ("epoch", None)
    assert (read.gap.start, read.gap.resume) == (old[-1].position, Position(new_epoch_name, 0))
    assert ids(read.messages) == ids(new)


# History backwards ----------------------------------------------------------------------------


async def read_back_ready(broker: Broker, before: Start, since: Start = ORIGIN,
                          limit: int = 1000) -> BackRead:
    """Read backwards as the server does: ready for ``before`` (or ``since``), then read."""
    starts = {CHANNEL: before if isinstance(before, Position) else since}
    if not broker.ready(starts):
        async with asyncio.timeout(5 * UNIT):
            await broker.prepare(starts)
    return broker.read_back(CHANNEL, before, since, limit)


async def test_read_back_pages_newest_first_to_the_oldest(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    published = await publish_many(broker, 7)
    epoch = published[0].position.epoch
    first = await read_back_ready(broker, END, ORIGIN, 3)
    assert ids(first.messages) == ids(published[:-4:-1])
    assert [m.data for m in first.messages] == [b'{"n":7}', b'{"n":6}', b'{"n":5}']
    assert (first.top, first.more, first.gap) == (Position(epoch, 7), True, None)
    pages = [first]
    while pages[-1].more:
        pages.append(await read_back_ready(broker, pages[-1].messages[-1].position, ORIGIN, 3))
    assert [ids(page.messages) for page in pages] == [
        ids(published[6:3:-1]), ids(published[3:0:-1]), [published[0].id]]
    assert pages[1].top == Position(epoch, 4)
    forward = await read_ready(broker, CHANNEL, ORIGIN)
    assert [m for page in pages for m in ids(page.messages)] == ids(forward.messages)[::-1]


async def test_read_back_of_a_channel_never_published_to(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    read = await read_back_ready(broker, END)
    assert (read.messages, read.more, read.gap) == ([], False, None)
    (message,) = await publish_many(broker, 1)
    assert read.top == Position(message.position.epoch, 0)  # the epoch it is published in


async def test_read_back_since_bounds_and_the_expired_gap(harness: BrokerHarness) -> None:
    broker = await harness.open_broker(size=3)
    published = await publish_many(broker, 6)  # keeps 4..6
    epoch = published[0].position.epoch
    bounded = await read_back_ready(broker, END, published[4].position)
    assert ids(bounded.messages) == [published[5].id] and bounded.gap is None
    origin = await read_back_ready(broker, END, ORIGIN)
    assert ids(origin.messages) == ids(published[:2:-1]) and origin.gap is None
    stale = await read_back_ready(broker, END, published[0].position)
    assert ids(stale.messages) == ids(published[:2:-1])
    assert stale.gap == Gap(CHANNEL, published[0].position, Position(epoch, 3), "expired", 2)
    with pytest.raises(InvalidCursor):
        await read_back_ready(broker, Position(epoch, 9))


async def test_read_back_from_a_lost_log_gives_an_epoch_gap(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    old = await publish_many(broker, 3)
    broker = await harness.lose_store(broker)
    new = await publish_many(broker, 2, first=4)
    read = await read_back_ready(broker, old[-1].position)
    assert read.messages == [] and not read.more
    assert read.gap == Gap(CHANNEL, old[-1].position, new[-1].position, "epoch", None)


async def test_read_back_on_another_node_before_an_id_it_has_not_heard_of(
        shared_harness: BrokerHarness) -> None:
    node_b = await shared_harness.open_broker()
    node_a = await shared_harness.node_in_thread()
    first = [node_a.publish_blocking(CHANNEL, b'{"n":%d}' % n) for n in range(1, 4)]
    read = await read_back_ready(node_b, first[-1].position)  # a channel B never read
    assert ids(read.messages) == ids(first[1::-1])
    more = [node_a.publish_blocking(CHANNEL, b'{"n":%d}' % n) for n in range(4, 7)]
    read = await read_back_ready(node_b, more[-1].position, ORIGIN, 4)  # B's replica is behind
    assert ids(read.messages) == ids([*first, *more][4::-1][:4]) and read.more


# Live fan-out ----------------------------------------------------------------------------------


async def test_subscriber_registered_after_a_read_gets_each_later_message_once(
        harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    before = await publish_many(broker, 2)
    live, other = Recorder(), Recorder()
    read = await read_ready(broker, CHANNEL, END)
    broker.hub.subscribe(CHANNEL, live)  # no await since the read
    broker.hub.subscribe("conformance.other", other)
    assert read.next == before[-1].position  # a node reads its own writes
    later = await publish_many(broker, 5, first=3)
    # In order and once each: a repeat would show before the last message does.
    assert ids(await live.wait_for(5)) == ids(later)
    assert live.gaps == [] and other.events == []


async def test_resumed_subscriber_gets_history_then_live_messages(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    before = await publish_many(broker, 4)
    live = Recorder()
    read = await read_ready(broker, CHANNEL, before[1].position)
    broker.hub.subscribe(CHANNEL, live)
    later = await publish_many(broker, 3, first=5)
    await live.wait_for(3)
    assert ids(read.messages) + ids(live.messages) == ids(before[2:] + later)


async def test_unsubscribed_subscriber_gets_nothing_more(harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    leaving, staying = Recorder(), Recorder()
    await read_ready(broker, CHANNEL, END)
    broker.hub.subscribe(CHANNEL, leaving)
    broker.hub.subscribe(CHANNEL, staying)
    first = await publish_many(broker, 2)
    await leaving.wait_for(2)
    broker.hub.unsubscribe(CHANNEL, leaving)
    second = await publish_many(broker, 2, first=3)
    assert ids(await staying.wait_for(4)) == ids(first + second)
    assert ids(leaving.messages) == ids(first)


#: After how many published messages a subscriber joins, and from where it reads.
JOINS: list[tuple[int, str]] = [
    (0, "origin"), (1, "end"), (2, "last"), (25, "behind"), (60, "origin"), (100, "end"),
    (101, "last"), (150, "behind"), (199, "origin"), (200, "last"),
]
TOTAL = 200



async def join(broker: Broker, how: str, published: list[Message],
               label: str) -> tuple[str, Read, Recorder]:
    """Read ``CHANNEL`` from ``how`` (origin, end, last, behind) and subscribe at once.

    The read and the subscription have no ``await`` between them: what the
    read returns and what the recorder gets must join without a hole.
    """
    start: Start = {
        "origin": ORIGIN,
        "end": END,
        "last": published[-1].position if published else ORIGIN,
        "behind": published[len(published) // 2].position if published else ORIGIN,
    }[how]
    recorder = Recorder()
    read = await read_ready(broker, CHANNEL, start)
    broker.hub.subscribe(CHANNEL, recorder)  # no await since the read
    assert read.gap is None and not read.more, (label, read)
    if isinstance(start, Position):
        assert read.after == start
    return label, read, recorder

async def test_history_and_live_merge_without_duplicates_or_holes(harness: BrokerHarness) -> None:
    """Subscribers join while two publishers run; each sees every message after its start once."""
    broker = await harness.open_broker()
    published: list[Message] = []
    reached = {count: asyncio.Event() for count, _ in JOINS}
    reached[0].set()

    async def publisher(name: int) -> None:
        for n in range(TOTAL // 2):
            published.append(await broker.publish(CHANNEL, b'{"p":%d,"n":%d}' % (name, n)))
            if len(published) in reached:
                reached[len(published)].set()
            await asyncio.sleep(0)  # let the other publisher and the joins in between

    joined: list[tuple[str, Read, Recorder]] = []
    async with asyncio.timeout(10 * UNIT), asyncio.TaskGroup() as tasks:
        for name in (1, 2):
            tasks.create_task(publisher(name))
        for count, how in JOINS:
            await reached[count].wait()
            joined.append(await join(broker, how, published, f"{how} after {count}"))

    epoch = published[0].position.epoch
    assert sorted(m.position for m in published) == [
        Position(epoch, n) for n in range(1, TOTAL + 1)]
    by_seq = {m.seq: m.id for m in published}
    (marker,) = await publish_many(broker, 1)  # a late repeat would show before it
    by_seq[marker.seq] = marker.id
    for label, read, recorder in joined:
        live = await recorder.wait_for(marker.seq - read.next.seq)
        union = read.messages + live
        assert seqs(union) == list(range(read.after.seq + 1, marker.seq + 1)), label
        assert [m.id for m in union] == [by_seq[m.seq] for m in union], label
        assert recorder.gaps == [], label


# Several nodes on one store --------------------------------------------------------------------


async def two_nodes_following(
        harness: BrokerHarness) -> tuple[Broker, Broker, Recorder, Recorder]:
    """Two nodes on one store, each with a subscriber to ``CHANNEL`` from its end."""
    node_a = await harness.open_broker()
    node_b = await harness.second_node()
    on_a, on_b = Recorder(), Recorder()
    for node, recorder in ((node_a, on_a), (node_b, on_b)):
        await read_ready(node, CHANNEL, END)
        node.hub.subscribe(CHANNEL, recorder)
    return node_a, node_b, on_a, on_b


async def test_message_published_on_one_node_reaches_subscribers_on_each(
        shared_harness: BrokerHarness) -> None:
    node_a, node_b, on_a, on_b = await two_nodes_following(shared_harness)
    from_a = await publish_many(node_a, 10)
    from_b = await publish_many(node_b, 1, first=11)  # an echo of A's would come before it
    expected = ids(from_a + from_b)
    assert seqs(from_a + from_b) == list(range(1, 12))
    assert ids(await on_b.wait_for(11)) == expected
    assert ids(await on_a.wait_for(11)) == expected
    assert [m.data for m in on_b.messages] == [m.data for m in from_a + from_b]
    assert on_a.gaps == on_b.gaps == []


async def test_empty_read_on_one_node_gives_the_epoch_another_node_publishes_in(
        shared_harness: BrokerHarness) -> None:
    node_a = await shared_harness.open_broker()
    node_b = await shared_harness.second_node()
    empty = await read_ready(node_b, CHANNEL, ORIGIN)
    (message,) = await publish_many(node_a, 1)
    assert message.position == Position(empty.next.epoch, 1)


async def test_node_reads_from_an_id_another_node_just_gave(shared_harness: BrokerHarness) -> None:
    """A client moves to another node with an id that node has not heard of yet."""
    node_b = await shared_harness.open_broker()
    node_a = await shared_harness.node_in_thread()
    first = [node_a.publish_blocking(CHANNEL, b'{"n":%d}' % n) for n in range(1, 4)]
    read = await read_ready(node_b, CHANNEL, first[-1].position)  # a channel B never read
    assert read.gap is None and read.messages == [] and read.next == first[-1].position
    read = await read_ready(node_b, CHANNEL, first[0].position)
    assert read.gap is None and ids(read.messages) == ids(first[1:])
    watching = Recorder()  # B follows the channel now: its replica is live
    node_b.hub.subscribe(CHANNEL, watching)
    later: list[Message] = []
    for n in range(4, 14):
        # Published and stored while this loop stood still: B cannot have heard of it.
        later.append(node_a.publish_blocking(CHANNEL, b'{"n":%d}' % n))
        read = await read_ready(node_b, CHANNEL, later[-1].position)
        assert read.gap is None and read.messages == [], n
        assert read.next == later[-1].position, n
        behind = await read_ready(node_b, CHANNEL, Position(later[-1].position.epoch, n - 1))
        assert ids(behind.messages) == [later[-1].id], n
    (marker,) = await publish_many(node_b, 1, first=14)  # a late repeat would show before it
    assert ids(await watching.wait_for(11)) == ids([*later, marker])


async def test_history_and_live_merge_across_nodes(shared_harness: BrokerHarness) -> None:
    """Subscribers join on B while what A published is still on its way to B."""
    node_b = await shared_harness.open_broker()
    node_a = await shared_harness.node_in_thread()
    published: list[Message] = []
    joined: list[tuple[str, Read, Recorder]] = []
    for turn in range(12):
        # B's loop stands still while A publishes: the store's pushes to B queue up.
        published.extend(node_a.publish_blocking(CHANNEL, b'{"n":%d}' % (len(published) + 1))
                         for _ in range(turn % 4 * 7))
        how = ("origin", "end", "last", "behind")[turn % 4]
        joined.append(await join(node_b, how, published, f"{how} at turn {turn}"))
    (marker,) = await publish_many(node_b, 1, first=len(published) + 1)
    published.append(marker)
    assert seqs(published) == list(range(1, len(published) + 1))
    for label, read, recorder in joined:
        live = await recorder.wait_for(marker.seq - read.next.seq)
        union = read.messages + live
        assert ids(union) == ids(published[read.after.seq:]), label
        assert recorder.gaps == [], label


async def test_store_lost_under_subscribers_gives_them_an_epoch_gap_then_messages(
        shared_harness: BrokerHarness) -> None:
    node_a, node_b, on_a, on_b = await two_nodes_following(shared_harness)
    old = await publish_many(node_a, 3)
    await on_a.wait_for(3)
    await on_b.wait_for(3)
    node_a = await shared_harness.lose_store(node_a)
    new: list[Message] = []
    for n in range(4, 6):
        new.append(await node_a.publish(CHANNEL, b'{"n":%d}' % n))
    new_epoch_name = new[0].position.epoch
    assert new_epoch_name != old[0].position.epoch and seqs(new) == [1, 2]
    for recorder in (on_a, on_b):
        await recorder.wait_for(5, within=10 * UNIT)
        assert [type(event).__name__ for event in recorder.events] == [
            "Message"] * 3 + ["Gap"] + ["Message"] * 2
        (gap,) = recorder.gaps
        assert (gap.channel, gap.reason, gap.missed) == (CHANNEL, "epoch", None)
        assert (gap.start, gap.resume) == (old[-1].position, Position(new_epoch_name, 0))
        assert ids(recorder.messages) == ids(old + new)
    later = await publish_many(node_b, 1, first=6)  # and messages keep flowing, both ways
    for recorder in (on_a, on_b):
        assert ids((await recorder.wait_for(6))[5:]) == ids(later)


# Idempotent publish ----------------------------------------------------------------------------


async def test_a_key_used_again_stores_nothing_and_replays_the_first_message(
        harness: BrokerHarness) -> None:
    broker = await harness.open_broker()
    live = Recorder()
    await read_ready(broker, CHANNEL, ORIGIN)
    broker.hub.subscribe(CHANNEL, live)
    first = await broker.publish(CHANNEL, b'{"n":1}', idempotency_key="k-1")
    assert not isinstance(first, Replayed)
    again = await broker.publish(CHANNEL, b'{"n":1}', idempotency_key="k-1")
    assert isinstance(again, Replayed)
    assert (again.id, again.time, again.data) == (first.id, first.time, first.data)
    with pytest.raises(IdempotencyConflict):
        await broker.publish(CHANNEL, b'{"n":2}', idempotency_key="k-1")
    other = await broker.publish(CHANNEL, b'{"n":1}', idempotency_key="k-2")
    elsewhere = await broker.publish("conformance.other", b'{"n":1}', idempotency_key="k-1")
    assert not isinstance(other, Replayed) and not isinstance(elsewhere, Replayed)
    assert other.seq == 2
    read = await read_ready(broker, CHANNEL, ORIGIN)
    assert ids(read.messages) == [first.id, other.id]
    assert ids(await live.wait_for(2)) == [first.id, other.id]


async def test_a_key_is_forgotten_after_its_window(harness: BrokerHarness) -> None:
    broker = await harness.open_broker(idempotency_window=0.2 * UNIT)
    first = await broker.publish(CHANNEL, b'{"n":1}', idempotency_key="k")
    async with asyncio.timeout(5 * UNIT):
        while True:
            await asyncio.sleep(0.1 * UNIT)
            broker.maintain()
            again = await broker.publish(CHANNEL, b'{"n":1}', idempotency_key="k")
            if not isinstance(again, Replayed):
                break
    assert again.seq == first.seq + 1


async def test_a_key_holds_across_nodes(shared_harness: BrokerHarness) -> None:
    first_node = await shared_harness.open_broker()
    second = await shared_harness.second_node()
    results = await asyncio.gather(
        *(node.publish(CHANNEL, b'{"n":1}', idempotency_key="shared")
          for node in (first_node, second, first_node, second)))
    assert len({message.id for message in results}) == 1
    assert sum(not isinstance(message, Replayed) for message in results) == 1
    read = await read_ready(second, CHANNEL, ORIGIN)
    assert len(read.messages) == 1
