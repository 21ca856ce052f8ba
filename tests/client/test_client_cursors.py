"""The resume rules of the client, without a network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import Backoff, Gap, Message, UsageError
from tidings.client._cursors import BrokenStream, CursorBook, OutOfOrder


def msg(channel: str, id: str, data: object = None) -> dict[str, object]:
    return {"channel": channel, "id": id, "data": data, "time": 1}


def test_since_starts_as_asked() -> None:
    assert CursorBook(["a"]).since() is None
    assert CursorBook(["a"], "0").since() == "0"
    assert CursorBook(["a"], "abcdefgh-4").since() == "abcdefgh-4"
    assert CursorBook(["a", "b"], "0").since() == "a=0,b=0"
    assert CursorBook(["a", "b"]).since() is None
    book = CursorBook(["a", "b", "c"], "a=abcdefgh-4,c=0")
    assert book.since() == "a=abcdefgh-4,c=0"
    assert book.since_of("b") is None


@pytest.mark.parametrize(("channels", "since"), [
    ([], None), (["a", "a"], None), (["bad!"], None), (["a"], ""), (["a"], "nope"),
    (["a", "b"], "abcdefgh-4"), (["a"], "a=zzz"),
])
def test_bad_subscriptions_are_usage_errors(channels: list[str], since: str | None) -> None:
    with pytest.raises(UsageError):
        CursorBook(channels, since)


def test_messages_advance_and_duplicates_are_dropped() -> None:
    book = CursorBook(["a"], "abcdefgh-4")
    assert book.accept_message(msg("a", "abcdefgh-5", [1])) == Message("a", "abcdefgh-5", [1], 1)
    assert book.accept_message(msg("a", "abcdefgh-5")) is None
    assert book.accept_message(msg("a", "abcdefgh-3")) is None
    assert book.since() == "abcdefgh-5"


def test_a_hole_or_an_unannounced_epoch_is_out_of_order() -> None:
    book = CursorBook(["a"], "abcdefgh-4")
    with pytest.raises(OutOfOrder):
        book.accept_message(msg("a", "abcdefgh-6"))
    with pytest.raises(OutOfOrder):
        book.accept_message(msg("a", "zzzzzzzz-1"))
    assert book.since() == "abcdefgh-4"  # nothing moved: resume from here


def test_the_start_is_learnt_only_while_unknown() -> None:
    book = CursorBook(["a", "b"])
    book.learn_cursor("a=abcdefgh-7,b=qqqqqqqq-0")
    assert book.since() == "a=abcdefgh-7,b=qqqqqqqq-0"
    book.learn("a", "abcdefgh-9")  # an SSE opening after a gap must not skip the gap
    assert book.since_of("a") == "abcdefgh-7"
    single = CursorBook(["a"], "0")
    single.learn_cursor("abcdefgh-2")
    assert single.since() == "abcdefgh-2"


def test_gaps_move_past_and_stale_gaps_are_dropped() -> None:
    book = CursorBook(["a"], "abcdefgh-3")
    gap = {"channel": "a", "from": "abcdefgh-3", "to": "abcdefgh-17", "reason": "expired",
           "missed": 14}
    assert book.accept_gap(gap) == Gap("a", "abcdefgh-3", "abcdefgh-17", "expired", 14)
    assert book.since() == "abcdefgh-17"
    assert book.accept_gap(gap) is None
    epoch = {"channel": "a", "from": "abcdefgh-17", "to": "newepoch-0", "reason": "epoch",
             "missed": None}
    assert book.accept_gap(epoch) == Gap("a", "abcdefgh-17", "newepoch-0", "epoch", None)
    assert book.accept_message(msg("a", "newepoch-1")) is not None


@pytest.mark.parametrize("value", [
    {"channel": "a"}, {"channel": "zz", "id": "abcdefgh-1", "data": 1, "time": 1},
    {"channel": "a", "id": "bogus", "data": 1, "time": 1}, "text",
])
def test_garbage_from_the_server_is_a_broken_stream(value: object) -> None:
    with pytest.raises(BrokenStream):
        CursorBook(["a"]).accept_message(value)  # type: ignore[arg-type]


# A server replaying from any earlier point (a resume, a technique switch)
# never makes the book deliver a message twice or out of order.
replays = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10)), max_size=30)


@given(replays)
def test_replays_deliver_every_message_once_in_order(replays: list[tuple[int, int]]) -> None:
    book = CursorBook(["a"], "abcdefgh-0")
    delivered: list[int] = []
    for back, length in replays:
        last = delivered[-1] if delivered else 0
        start = max(1, last + 1 - back)
        for seq in range(start, start + length):
            message = book.accept_message(msg("a", f"abcdefgh-{seq}"))
            if message is not None:
                delivered.append(int(message.id.split("-")[1]))
    assert delivered == list(range(1, len(delivered) + 1))


@given(st.lists(st.integers(1, 40), min_size=1, max_size=40))
def test_any_arrival_order_delivers_an_unbroken_prefix(arrivals: list[int]) -> None:
    book = CursorBook(["a"], "abcdefgh-0")
    delivered: list[int] = []
    for seq in arrivals:
        try:
            message = book.accept_message(msg("a", f"abcdefgh-{seq}"))
        except OutOfOrder:
            continue
        if message is not None:
            delivered.append(seq)
    assert delivered == list(range(1, len(delivered) + 1))


@given(st.integers(0, 100), st.floats(0, 1))
def test_backoff_is_full_jitter_under_a_growing_capped_ceiling(attempt: int, r: float) -> None:
    backoff = Backoff(initial=0.1, maximum=30.0, factor=2.0)
    assert 0 <= backoff.delay(attempt, lambda: r) <= backoff.ceiling(attempt) <= 30.0
    assert backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1)
    assert backoff.ceiling(0) == 0.1


def test_backoff_settings_are_checked() -> None:
    with pytest.raises(UsageError):
        Backoff(initial=0)
    with pytest.raises(UsageError):
        Backoff(initial=5, maximum=1)


def test_the_users_cursor_moves_only_past_what_was_handed_out() -> None:
    book = CursorBook(["a", "b"])
    book.learn("a", "abcdefgh-4")
    book.learn("b", "bcdefghi-0")
    received = [book.accept_message(msg("a", f"abcdefgh-{seq}")) for seq in (5, 6, 7)]
    assert book.since() == "a=abcdefgh-7,b=bcdefghi-0"
    assert book.handed_since() == "a=abcdefgh-4,b=bcdefghi-0"
    first = received[0]
    assert first is not None
    book.hand(first)
    assert book.handed_since() == "a=abcdefgh-5,b=bcdefghi-0"
    gap = book.accept_gap({"channel": "b", "from": "bcdefghi-0", "to": "bcdefghi-9",
                           "reason": "expired", "missed": 9})
    assert gap is not None
    book.hand(gap)
    assert book.handed_since() == "a=abcdefgh-5,b=bcdefghi-9"
