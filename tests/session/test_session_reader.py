"""The reader at a cursor, driven without sockets: events in, bytes out.

The log is a real memory broker driven synchronously (``publish_nowait``)
with a fake clock; the encoder writes readable tuples, so the tests compare
what the reader wrote with ``==``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.brokers.memory import MemoryBroker
from tidings.core.cursor import END, ORIGIN, Position, Start, parse_multi
from tidings.core.log import Gap, Retention
from tidings.core.message import Message
from tidings.errors import InvalidCursor, UsageError
from tidings.session.batch import read_batch
from tidings.session.reader import Reader


class Tuples:
    """An encoder whose bytes are the repr of what it was given, one item per call."""

    key = "test-tuples"

    @staticmethod
    def single(message: Message) -> bytes:
        return repr(("message", message.id, None)).encode() + b"\n"

    def message(self, message: Message, cursor: str | None) -> bytes:
        return repr(("message", message.id, cursor)).encode() + b"\n"

    def gap(self, gap: Gap, cursor: str) -> bytes:
        return repr(("gap", gap.channel, str(gap.start), str(gap.resume), cursor)).encode() + b"\n"


class Socket:
    """What a driver would write: the bytes, split back into items."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def items(self) -> list[tuple[Any, ...]]:
        import ast
        return [ast.literal_eval(line.decode()) for data in self.writes
                for line in data.splitlines()]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


def broker(size: int = 1000, clock: Clock | None = None) -> MemoryBroker:
    return MemoryBroker(lambda channel: Retention(size=size, ttl=3600),
                        clock=clock or Clock())


def publish(log: MemoryBroker, channel: str, count: int) -> list[str]:
    return [log.publish_nowait(channel, b"%d" % n).id for n in range(count)]


def reader_on(log: MemoryBroker, multi: bool = False) -> tuple[Reader, Socket]:
    socket = Socket()
    return Reader(log, Tuples(), socket, multi=multi), socket


def test_a_backlog_is_pulled_in_steps_of_the_budget_then_goes_live() -> None:
    log = broker()
    ids = publish(log, "c", 50)
    reader, socket = reader_on(log)
    reader.open({"c": ORIGIN})
    assert reader.behind and socket.writes == []  # nothing is copied at open
    steps = 0
    while reader.behind:
        reader.pull(budget=200)
        steps += 1
        assert len(socket.writes[-1]) < 200 + 100  # one item past the budget at most
    assert steps > 5
    assert [item[1] for item in socket.items()] == ids
    live = log.publish_nowait("c", b"1")
    reader.deliver(live)
    assert socket.items()[-1] == ("message", live.id, None)


def test_messages_published_while_behind_come_once_from_the_log() -> None:
    log = broker()
    publish(log, "c", 10)
    reader, socket = reader_on(log)
    reader.open({"c": ORIGIN})
    reader.pull(budget=1)  # one step: a page of the backlog
    during = log.publish_nowait("c", b"x")
    reader.deliver(during)  # the hub hands it over while behind: ignored
    while reader.behind:
        reader.pull(budget=1)
    ids = [item[1] for item in socket.items()]
    assert ids.count(during.id) == 1 and ids[-1] == during.id
    assert len(ids) == 11


def test_a_log_trimmed_under_a_reader_that_is_behind_gives_an_exact_gap() -> None:
    log = broker(size=20)
    ids = publish(log, "c", 20)
    reader, socket = reader_on(log)
    reader.open({"c": ORIGIN})
    reader.pull(budget=1)  # the first page only (PULL_PAGE messages at most)
    sent = len(socket.items())
    publish(log, "c", 30)  # pushes everything not yet sent out of the log
    while reader.behind:
        reader.pull(budget=10_000)
    gaps = [item for item in socket.items() if item[0] == "gap"]
    epoch = ids[0].split("-")[0]
    assert gaps == [("gap", "c", f"{epoch}-{sent}", f"{epoch}-30", f"{epoch}-30")]
    assert [item[1] for item in socket.items() if item[0] == "message"][-1] == f"{epoch}-50"


def test_a_multi_channel_cursor_never_claims_past_a_gap_not_yet_written() -> None:
    log = MemoryBroker(lambda channel: Retention(size=5 if channel == "small" else 1000),
                       clock=Clock())
    big = publish(log, "big", 300)
    small = publish(log, "small", 10)
    reader, socket = reader_on(log, multi=True)
    reader.open({"big": _position(big[0]), "small": _position(small[1])})
    assert reader.cursor() == f"big={big[0]},small={small[1]}"  # what the client gave
    while reader.behind:
        reader.pull(budget=100)
    told_gap = False
    for item in socket.items():
        if item[0] == "gap":
            told_gap = True
        claimed = parse_multi(item[-1])
        if not told_gap:
            assert str(claimed["small"]) == small[1], item
    assert told_gap


def _position(message_id: str) -> Start:
    epoch, seq = message_id.split("-")
    return Position(epoch, int(seq))


def test_skip_and_deliver_while_live_and_while_behind() -> None:
    log = broker()
    publish(log, "c", 3)
    reader, socket = reader_on(log)
    reader.open({"c": END})
    reader.pull(budget=100)  # nothing owed: live at once
    assert not reader.behind and socket.items() == []
    epoch = log.log("c").epoch
    gap = Gap("c", Position(epoch, 3), Position("zzzzzzzz", 0), "epoch", None)
    reader.skip(gap)
    assert socket.items() == [("gap", "c", f"{epoch}-3", "zzzzzzzz-0", "zzzzzzzz-0")]
    assert reader.cursor() == "zzzzzzzz-0"
    # Behind, the hub's news is left to the log: the next pull reads it there.
    behind, behind_socket = reader_on(log)
    behind.open({"c": ORIGIN})
    behind.skip(Gap("c", Position(epoch, 0), Position("yyyyyyyy", 0), "epoch", None))
    behind.deliver(log.publish_nowait("c", b"1"))
    assert behind_socket.writes == []
    while behind.behind:
        behind.pull(budget=1000)
    assert [item[1] for item in behind_socket.items()] == [f"{epoch}-{n}" for n in range(1, 5)]


def test_open_refuses_a_cursor_ahead_of_the_log_and_changes_nothing() -> None:
    log = broker()
    [only] = publish(log, "c", 1)
    reader, _ = reader_on(log)
    with pytest.raises(InvalidCursor):
        reader.open({"c": Position(only.split("-")[0], 9)})
    assert reader.channels == [] and not reader.behind


def test_a_poll_reader_answers_with_open_and_has_no_output() -> None:
    log = broker()
    ids = publish(log, "c", 5)
    reader = Reader(log, Tuples())
    page = reader.open({"c": ORIGIN}, limit=3)
    assert [m.id for m in page.messages] == ids[:3] and page.more
    assert reader.cursor() == ids[2]
    assert [m.id for m in reader.page(10).messages] == ids[3:]
    with pytest.raises(UsageError):
        reader.deliver(log.publish_nowait("c", b"1"))


@pytest.mark.parametrize("multi", [False, True])
def test_opened_after_a_page_read_elsewhere_is_open_without_reading_again(multi: bool) -> None:
    log = broker()
    publish(log, "a", 4)
    publish(log, "b", 2)
    starts: dict[str, Start] = {"a": ORIGIN, "b": ORIGIN} if multi else {"a": ORIGIN}
    opened, _ = reader_on(log, multi)
    page = read_batch(log, starts, 3)
    opened.opened(page)
    reference, _ = reader_on(log, multi)
    assert reference.open(starts, 3) == page
    assert opened.cursor() == reference.cursor() == page.cursor(multi)
    assert opened.channels == reference.channels
    live = log.publish_nowait("a", b"9")
    rest = opened.page(10)
    assert rest == reference.page(10)
    assert live.id in [m.id for m in rest.messages]
    assert opened.cursor() == reference.cursor()


def test_closing_a_channel_stops_its_backlog_and_its_cursor() -> None:
    """(The driver unsubscribes it from the hub, so no live message of it comes either.)"""
    log = broker()
    publish(log, "a", 3)
    reader, socket = reader_on(log, multi=True)
    reader.open({"a": ORIGIN, "b": END})
    reader.close("a")
    while reader.behind:
        reader.pull(budget=10)
    assert socket.writes == []
    assert reader.cursor() == f"b={log.log('b').epoch}-0"
    b = log.publish_nowait("b", b"1")
    reader.deliver(b)
    assert socket.items() == [("message", b.id, f"b={b.id}")]
    assert reader.channels == ["b"]


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=3),
       budgets=st.lists(st.integers(1, 400), min_size=1, max_size=20),
       live_after=st.integers(0, 20))
def test_every_message_once_in_order_whatever_the_steps(
        counts: list[int], budgets: list[int], live_after: int) -> None:
    """Backlog pulls of any size interleaved with publishes: each message once, in order."""
    log = broker()
    channels = [f"c{n}" for n in range(len(counts))]
    published = {c: publish(log, c, n) for c, n in zip(channels, counts, strict=True)}
    reader, socket = reader_on(log, multi=len(channels) > 1)
    reader.open(dict.fromkeys(channels, ORIGIN))
    for index, budget in enumerate(budgets * 3):
        if reader.behind:
            reader.pull(budget)
        if index < live_after:
            channel = channels[index % len(channels)]
            message = log.publish_nowait(channel, b"0")
            published[channel].append(message.id)
            reader.deliver(message)  # as the hub would, subscribed all along
    while reader.behind:
        reader.pull(1000)
    for channel in channels:
        got = [item[1] for item in socket.items()
               if item[0] == "message" and item[1] in set(published[channel])]
        assert got == published[channel]


def test_a_reader_of_several_channels_whose_messages_carry_their_ids_reports_each_gap() -> None:
    """A WebSocket's reader: several channels, no shared cursor; each gap names its own end."""
    log = broker(size=3)
    a, b = publish(log, "a", 6), publish(log, "b", 6)
    reader, socket = reader_on(log)  # not multi: every message carries its own id
    reader.open({"a": _position(a[0]), "b": _position(b[1])})
    while reader.behind:
        reader.pull(budget=1)
    gaps = [item for item in socket.items() if item[0] == "gap"]
    assert [(g[1], g[4]) for g in gaps] == [("a", a[2]), ("b", b[2])]
    live = log.publish_nowait("a", b"1")
    reader.deliver(live)
    gap = Gap("b", _position(b[5]), Position("zzzzzzzz", 0), "epoch", None)
    reader.skip(gap)
    assert socket.items()[-2:] == [("message", live.id, None),
                                   ("gap", "b", b[5], "zzzzzzzz-0", "zzzzzzzz-0")]
    # Live messages carry their own ids: the reader keeps where its backlog left it.
    assert reader.position("a") == _position(a[5])


def test_messages_of_several_channels_within_one_millisecond_keep_their_publication_order() -> None:
    log = broker()  # its clock stands still: every message has the same time
    ids = [log.publish_nowait(channel, b"1").id for channel in ("b", "a", "b", "a")]
    page = read_batch(log, {"a": ORIGIN, "b": ORIGIN}, 10)
    assert len({m.time for m in page.messages}) == 1
    assert [(m.channel, m.id) for m in page.messages] == list(zip("baba", ids, strict=True))
