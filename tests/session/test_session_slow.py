"""Slow-reader policies in the reader, driven without sockets (session/slow.py).

A fake socket plays the driver: past its limit it calls ``reader.lag()`` as
``Stream.pause_writing`` does, and ``drain()`` empties it and pulls, as
``resume_writing`` does. The encoder writes readable tuples, gaps with their
reason and count, so what the client would see is compared with ``==``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.brokers.memory import MemoryBroker
from tidings.core.cursor import END, ORIGIN, Position, Start, parse_position
from tidings.core.log import Gap, Retention
from tidings.core.message import Message
from tidings.session import slow
from tidings.session.reader import Reader, TrackingReader, make_reader


class Tuples:
    key = "test-slow-tuples"

    @staticmethod
    def single(message: Message) -> bytes:
        return repr(("message", message.id, None)).encode() + b"\n"

    def message(self, message: Message, cursor: str | None) -> bytes:
        return repr(("message", message.id, cursor)).encode() + b"\n"

    def gap(self, gap: Gap, cursor: str) -> bytes:
        return repr(("gap", gap.channel, str(gap.start), str(gap.resume), gap.reason,
                     gap.missed, cursor)).encode() + b"\n"


class Socket:
    """A socket with room for ``limit`` bytes: past it, the reader lags or is cut off."""

    def __init__(self, limit: int = 10**9) -> None:
        self.limit = limit
        self.buffered = 0
        self.items: list[tuple[Any, ...]] = []
        self.reader: Reader | None = None
        self.cut_off = False
        self.lags = 0

    def write(self, data: bytes) -> None:
        import ast
        assert not self.cut_off
        self.items += [ast.literal_eval(line.decode()) for line in data.splitlines()]
        was_below = self.buffered <= self.limit
        self.buffered += len(data)
        if was_below and self.buffered > self.limit and self.reader is not None:
            if self.reader.behind:
                return  # catching up: the driver waits for the socket
            if self.reader.lag():
                self.lags += 1
            else:
                self.cut_off = True

    def drain(self) -> None:
        """The client read everything: pull while the reader is behind."""
        self.buffered = 0
        assert self.reader is not None
        while self.reader.behind and self.buffered <= self.limit:
            self.reader.pull(10**6)

    def take(self) -> list[tuple[Any, ...]]:
        items, self.items = self.items, []
        return items


def broker(size: int = 1000) -> MemoryBroker:
    return MemoryBroker(lambda channel: Retention(size=size, ttl=3600))


def publish(log: MemoryBroker, channel: str, count: int) -> list[str]:
    return [log.publish_nowait(channel, b"%d" % n).id for n in range(count)]


def live(log: MemoryBroker, socket: Socket, starts: dict[str, Start], **options: Any) -> Reader:
    """A stream's reader on ``socket``, subscribed and caught up."""
    reader = make_reader(log, Tuples(), socket, **options)
    socket.reader = reader
    reader.open(starts)
    for channel in starts:
        log.hub.subscribe(channel, reader)
    socket.drain()
    return reader


def policy(**by_channel: str) -> Any:
    return lambda channel: by_channel.get(channel, slow.DISCONNECT)


ITEM = len(repr(("message", "abcdefgh-1", None))) + 1  # bytes of one message item


def test_without_a_policy_a_plain_reader_is_cut_off() -> None:
    log, socket = broker(), Socket(limit=3 * ITEM)
    reader = live(log, socket, {"prices": END})
    assert type(reader) is Reader
    publish(log, "prices", 5)
    assert socket.cut_off


def test_latest_skips_to_the_newest_message_with_a_counted_gap() -> None:
    log, socket = broker(), Socket(limit=3 * ITEM)
    reader = live(log, socket, {"prices": END}, policy=policy(prices=slow.LATEST))
    assert isinstance(reader, TrackingReader)
    ids = publish(log, "prices", 4)  # the 4th passes the limit: the reader lags
    assert socket.lags == 1 and not socket.cut_off
    assert socket.take() == [("message", i, None) for i in ids]
    ids += publish(log, "prices", 10)
    assert socket.take() == []  # nothing written while it lags: memory stays within the limit
    socket.drain()
    assert socket.take() == [("gap", "prices", ids[3], ids[12], "latest", 9, ids[12]),
                             ("message", ids[13], None)]
    ids += publish(log, "prices", 1)
    assert socket.take() == [("message", ids[14], None)]  # live again


def test_skip_goes_to_the_end_of_the_log_with_a_counted_gap() -> None:
    log, socket = broker(), Socket(limit=3 * ITEM)
    live(log, socket, {"news": END}, policy=policy(news=slow.SKIP))
    ids = publish(log, "news", 14)
    socket.take()
    socket.drain()
    assert socket.take() == [("gap", "news", ids[3], ids[13], "skipped", 10, ids[13])]
    ids += publish(log, "news", 1)
    assert socket.take() == [("message", ids[14], None)]


def test_drained_before_anything_new_writes_nothing() -> None:
    log, socket = broker(), Socket(limit=3 * ITEM)
    live(log, socket, {"prices": END}, policy=policy(prices=slow.LATEST))
    publish(log, "prices", 4)
    socket.take()
    socket.drain()
    assert socket.take() == []


def test_channels_whose_policy_is_disconnect_catch_up_on_everything() -> None:
    log, socket = broker(), Socket(limit=3 * ITEM)
    live(log, socket, {"prices": END, "news": END}, policy=policy(prices=slow.LATEST))
    news = publish(log, "news", 4)  # news passes the limit; prices lets the reader lag
    assert socket.lags == 1
    prices = publish(log, "prices", 5)
    news += publish(log, "news", 3)
    socket.take()
    socket.drain()
    assert socket.take() == [
        ("gap", "prices", "%s-0" % prices[0][:8], prices[3], "latest", 4, prices[3]),
        ("message", prices[4], None),
        *[("message", i, None) for i in news[4:]],
    ]


def test_a_reader_whose_every_channel_is_disconnect_is_cut_off() -> None:
    log, socket = broker(), Socket(limit=3 * ITEM)
    reader = live(log, socket, {"news": END}, policy=policy(prices=slow.LATEST))
    assert isinstance(reader, TrackingReader)
    publish(log, "news", 5)
    assert socket.cut_off


def test_multi_channel_cursors_claim_only_what_was_written() -> None:
    log, socket = broker(), Socket(limit=3 * 60)  # a multi item is about 60 bytes
    live(log, socket, {"a": END, "b": END}, multi=True,
         policy=policy(a=slow.LATEST, b=slow.LATEST))
    a = publish(log, "a", 2)
    b = publish(log, "b", 2)  # the 4th item passes the limit
    a += publish(log, "a", 3)
    assert socket.lags == 1
    assert socket.take()[-1] == ("message", b[1], f"a={a[1]},b={b[1]}")
    socket.drain()
    assert socket.take() == [("gap", "a", a[1], a[3], "latest", 2, f"a={a[3]},b={b[1]}"),
                             ("message", a[4], f"a={a[4]},b={b[1]}")]


def test_latest_poll_pages_the_newest_message_of_each_channel() -> None:
    log = broker()
    a = publish(log, "a", 5)
    b = publish(log, "b", 1)
    reader = make_reader(log, Tuples(), multi=True, latest=True)
    batch = reader.open({"a": parse_position(a[0]), "b": ORIGIN}, 100)
    assert [m.id for m in batch.messages] == [a[4], b[0]]  # in publication order
    assert batch.gaps == [Gap("a", parse_position(a[0]), parse_position(a[3]), "latest", 3)]
    assert reader.cursor() == f"a={a[4]},b={b[0]}"
    assert not batch.more
    again = reader.page(100)
    assert again.messages == [] and again.gaps == []
    a += publish(log, "a", 2)
    assert [m.id for m in reader.page(100).messages] == [a[6]]


def test_latest_poll_from_the_end_or_the_newest_is_empty() -> None:
    log = broker()
    ids = publish(log, "a", 3)
    for start in (END, parse_position(ids[-1])):
        batch = make_reader(log, Tuples(), latest=True).open({"a": start}, 100)
        assert (batch.messages, batch.gaps) == ([], [])


def test_latest_poll_from_another_epoch_is_an_epoch_gap() -> None:
    log = broker()
    ids = publish(log, "a", 3)
    stale = Position("zzzzzzzz", 7)
    batch = make_reader(log, Tuples(), latest=True).open({"a": stale}, 100)
    assert [m.id for m in batch.messages] == [ids[2]]
    assert batch.gaps == [Gap("a", stale, parse_position(ids[1]), "epoch", None)]


def test_a_stream_asking_latest_gets_the_newest_message_first_then_live() -> None:
    log, socket = broker(), Socket()
    ids = publish(log, "a", 6)
    live(log, socket, {"a": parse_position(ids[1])}, latest=True)
    assert socket.take() == [("gap", "a", ids[1], ids[4], "latest", 3, ids[4]),
                             ("message", ids[5], None)]
    ids += publish(log, "a", 2)
    assert socket.take() == [("message", i, None) for i in ids[6:]]


def test_a_latest_stream_from_expired_messages_counts_them_too() -> None:
    log, socket = broker(size=2), Socket()
    ids = publish(log, "a", 6)
    live(log, socket, {"a": parse_position(ids[0])}, latest=True)
    assert socket.take() == [("gap", "a", ids[0], ids[4], "latest", 4, ids[4]),
                             ("message", ids[5], None)]


@given(steps=st.lists(st.one_of(st.integers(1, 6), st.just("drain")), max_size=30),
       mode=st.sampled_from([slow.SKIP, slow.LATEST]), limit=st.integers(1, 6))
def test_whatever_happens_the_client_can_account_for_every_message(
        steps: list[int | str], mode: str, limit: int) -> None:
    log, socket = broker(), Socket(limit=limit * ITEM)
    live(log, socket, {"c": END}, policy=policy(c=mode))
    published: list[str] = []
    for step in steps:
        if step == "drain":
            socket.drain()
        else:
            assert isinstance(step, int)
            published += publish(log, "c", step)
    socket.drain()
    at = 0
    for item in socket.take():
        if item[0] == "gap":
            _, _, start, to, reason, missed, _ = item
            assert parse_position(start).seq == at and reason == slow.GAP_REASONS[mode]
            assert missed == parse_position(to).seq - at > 0
            at = parse_position(to).seq
        else:
            seq = parse_position(item[1]).seq
            assert seq == at + 1  # follows what the client stands on, never repeated
            at = seq
    assert at == len(published)  # caught up, every message delivered or counted
    assert not socket.cut_off


@pytest.mark.parametrize("value", ["fast", "", None, 1])
def test_only_the_three_policies_are_settings(value: object) -> None:
    from tidings import Settings
    from tidings.errors import UsageError
    with pytest.raises(UsageError, match="slow_reader must be one of"):
        Settings(slow_reader=value)  # type: ignore[arg-type]
