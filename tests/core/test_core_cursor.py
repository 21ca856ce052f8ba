"""Positions, ``since`` values, multi-channel cursors and channel names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.cursor import (
    END,
    EPOCH_LENGTH,
    MAX_CURSOR_LENGTH,
    ORIGIN,
    Position,
    format_multi,
    new_epoch,
    parse_multi,
    parse_position,
    parse_since,
    parse_start,
)
from tidings.core.names import MAX_CHANNEL_LENGTH, check_channel, namespace_of
from tidings.errors import BadRequest, InvalidChannel, InvalidCursor

CHANNEL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:@"

channel_names = st.text(alphabet=CHANNEL_CHARS, min_size=1, max_size=MAX_CHANNEL_LENGTH)
epochs = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=8)
positions = st.builds(Position, epochs, st.integers(min_value=0, max_value=10**18 - 1))


# Positions ------------------------------------------------------------------


def test_position_formats_as_epoch_dash_seq() -> None:
    assert str(Position("k2j4h5g6", 17)) == "k2j4h5g6-17"
    assert str(Position("k2j4h5g6", 0)) == "k2j4h5g6-0"


@given(positions)
def test_position_round_trips(position: Position) -> None:
    assert parse_position(str(position)) == position


def test_positions_order_by_seq_within_an_epoch() -> None:
    assert Position("aaaaaaaa", 2) < Position("aaaaaaaa", 10)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",  # ORIGIN is not a position
        "k2j4h5g6",
        "k2j4h5g6-",
        "-17",
        "k2j4h5g-17",  # epoch too short
        "k2j4h5g66-17",  # epoch too long
        "K2J4H5G6-17",  # upper case
        "k2j4h5g6-017",  # leading zero
        "k2j4h5g6-00",
        "k2j4h5g6--1",
        "k2j4h5g6-1.5",
        "k2j4h5g6-1 ",
        " k2j4h5g6-1",
        "k2j4h5g6-1\n",
        "k2j4h5g6-\uff11",  # fullwidth digit
        "k2j4h5g6-" + "9" * 19,  # more than 18 digits
        "k2j4h5g6_17",
    ],
)
def test_malformed_positions_are_refused(text: str) -> None:
    with pytest.raises(InvalidCursor) as info:
        parse_position(text)
    assert info.value.code == "invalid_cursor"
    assert info.value.status == 400


def test_longest_seq_is_accepted() -> None:
    assert parse_position("k2j4h5g6-" + "9" * 18).seq == 10**18 - 1


def test_new_epochs_are_valid_and_differ() -> None:
    made = {new_epoch() for _ in range(50)}
    assert len(made) == 50
    for epoch in made:
        assert len(epoch) == EPOCH_LENGTH
        assert parse_position(f"{epoch}-3") == Position(epoch, 3)


def test_parse_start_zero_is_origin() -> None:
    assert parse_start("0") is ORIGIN
    assert parse_start("k2j4h5g6-0") == Position("k2j4h5g6", 0)


# since ----------------------------------------------------------------------


def test_since_absent_is_end_for_every_channel() -> None:
    assert parse_since(None, ["a", "b"]) == {"a": END, "b": END}


def test_since_zero_is_origin_for_every_channel() -> None:
    assert parse_since("0", ["a", "b"]) == {"a": ORIGIN, "b": ORIGIN}


def test_since_message_id_for_one_channel() -> None:
    assert parse_since("k2j4h5g6-4", ["a"]) == {"a": Position("k2j4h5g6", 4)}


def test_since_message_id_for_several_channels_is_refused() -> None:
    with pytest.raises(InvalidCursor):
        parse_since("k2j4h5g6-4", ["a", "b"])


def test_since_empty_is_refused() -> None:
    with pytest.raises(InvalidCursor, match="empty"):
        parse_since("", ["a"])


@pytest.mark.parametrize("text", ["garbage", "k2j4h5g6-x", "a=", "a=b=c", "=k2j4h5g6-1",
                                  "a=k2j4h5g6-1,", ",a=k2j4h5g6-1", "a=k2j4h5g6-1,,b=0",
                                  "a b=k2j4h5g6-1", "a=k2j4h5g6-1,b"])
def test_since_malformed_is_refused(text: str) -> None:
    with pytest.raises(InvalidCursor):
        parse_since(text, ["a", "b"])


def test_since_too_long_is_refused_before_parsing() -> None:
    text = ",".join(f"c{i}=k2j4h5g6-{i}" for i in range(1000))
    assert len(text) > MAX_CURSOR_LENGTH
    with pytest.raises(InvalidCursor, match="longer"):
        parse_since(text, ["c1"])


def test_since_at_the_length_limit_is_parsed() -> None:
    text = "a=k2j4h5g6-1," + "b" * (MAX_CURSOR_LENGTH - 15) + "=0"
    # Not a valid channel (too long), but the length check must not be what refuses it.
    assert len(text) == MAX_CURSOR_LENGTH
    with pytest.raises(InvalidCursor, match="invalid channel"):
        parse_since(text, ["a"])


def test_since_multi_cursor_maps_named_channels_and_ends_the_rest() -> None:
    starts = parse_since("a=k2j4h5g6-3,b=0,zzz=q9w8e7r6-1", ["a", "b", "c"])
    assert starts == {"a": Position("k2j4h5g6", 3), "b": ORIGIN, "c": END}


def test_since_multi_cursor_with_invalid_channel_is_an_invalid_cursor() -> None:
    with pytest.raises(InvalidCursor, match="invalid channel"):
        parse_since("a/b=k2j4h5g6-3", ["a"])


# Multi-channel cursors ------------------------------------------------------


@given(st.dictionaries(channel_names, positions, min_size=1, max_size=20))
def test_multi_cursor_round_trips(cursor: dict[str, Position]) -> None:
    text = format_multi(cursor)
    assert parse_multi(text) == cursor
    assert list(parse_multi(text)) == list(cursor)  # order kept
    if len(text) <= MAX_CURSOR_LENGTH:
        assert parse_since(text, list(cursor)) == cursor


def test_multi_cursor_format() -> None:
    cursor = {"prices": Position("k2j4h5g6", 17), "news": Position("q9w8e7r6", 3)}
    assert format_multi(cursor) == "prices=k2j4h5g6-17,news=q9w8e7r6-3"


def test_multi_cursor_origin_parts() -> None:
    assert parse_multi("a=0,b=k2j4h5g6-0") == {"a": ORIGIN, "b": Position("k2j4h5g6", 0)}


# Channel names --------------------------------------------------------------


@given(channel_names)
def test_allowed_channel_names_pass(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize("name", ["prices", "prices:AAPL", "a.b-c_d@e:f", "0", "@", "x" * 128])
def test_examples_of_allowed_names(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "a,b", "a=b", "a b", "a/b", "a\nb", "a\n", "é", "a+b", "a#b", "a?b", "a%20",
     "a\x00", "x" * 129, "\"", "a'b", "\uff41"],
)
def test_refused_channel_names(name: str) -> None:
    with pytest.raises(InvalidChannel) as info:
        check_channel(name)
    assert isinstance(info.value, BadRequest)
    assert info.value.code == "invalid_channel"


@given(st.text(min_size=1, max_size=140))
def test_channel_check_agrees_with_the_alphabet(name: str) -> None:
    valid = len(name) <= MAX_CHANNEL_LENGTH and all(c in CHANNEL_CHARS for c in name)
    if valid:
        assert check_channel(name) == name
    else:
        with pytest.raises(InvalidChannel):
            check_channel(name)


def test_channel_error_messages_explain() -> None:
    with pytest.raises(InvalidChannel, match="empty"):
        check_channel("")
    with pytest.raises(InvalidChannel, match="129 characters"):
        check_channel("x" * 129)
    with pytest.raises(InvalidChannel, match="outside"):
        check_channel("a,b")


def test_namespace_of() -> None:
    assert namespace_of("prices:AAPL") == "prices"
    assert namespace_of("prices:AAPL:x") == "prices"
    assert namespace_of("prices") == ""
    assert namespace_of(":x") == ""
