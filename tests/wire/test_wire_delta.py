"""wire/delta.py without a server: the patch format, and the encoder of a reader that asked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.cursor import Position
from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.errors import BadRequest
from tidings.wire import commands, delta, sse
from tidings.wire.jsonvalue import encode

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=6),
    max_leaves=30)


def as_json(value: Any) -> str:
    """Equal values, as JSON says: ``1``, ``1.0`` and ``true`` differ."""
    return json.dumps(value, sort_keys=True)


@given(values, values)
@settings(max_examples=400, deadline=None)
def test_applying_the_diff_of_two_values_gives_the_second(old: Any, new: Any) -> None:
    patch = delta.diff(old, new)
    wired = json.loads(encode(patch))  # what a client receives
    assert as_json(delta.apply(old, wired)) == as_json(new)
    assert as_json(delta.apply(old, delta.diff(old, old))) == as_json(old)


@given(st.lists(values, min_size=2, max_size=5))
@settings(max_examples=100, deadline=None)
def test_a_chain_of_deltas_rebuilds_every_value(chain: list[Any]) -> None:
    current = chain[0]
    for new in chain[1:]:
        current = delta.apply(current, json.loads(encode(delta.diff(current, new))))
        assert as_json(current) == as_json(new)


def test_the_format() -> None:
    assert delta.diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": None}) == {"b": 3, "c": None}
    assert delta.diff({"a": 1, "b": 2}, {"a": 1}) == {"b": []}
    assert delta.diff({"a": 1}, {"a": []}) == {"a": [[]]}
    assert delta.diff([1, 2, 3], [1, 5]) == {"len": 2, "1": 5}
    assert delta.diff([1], [1, {"x": 1}]) == {"len": 2, "1": [{"x": 1}]}
    assert delta.diff(1, 1.0) == 1.0 and delta.diff(1, True) is True
    assert delta.diff({"q": [{"p": 1}, {"p": 2}]}, {"q": [{"p": 1}, {"p": 3}]}) == {
        "q": {"1": {"p": 3}}}
    assert delta.diff({"a": 1}, {"a": {"b": 1}}) == {"a": [{"b": 1}]}
    assert delta.apply({"a": [1, 2]}, {"a": {"len": 1}}) == {"a": [1]}


@pytest.mark.parametrize(("base", "patch"), [
    (1, {"a": [1]}), ({}, {"a": {"b": [1]}}), ({}, {"a": []}), ([1], {"1": {"x": [1]}}),
    ([1], {"len": 3, "1": [2]}), ([1], {"len": -1}), ([1], {"len": "2"}), ([1], {"x": [1]}),
    ({}, [1, 2]), ([1], {"5": [1]}), ({}, {"a": [1, 2]}), ([1], {"len": 2, "1": [1, 2]}),
    ([1], {"len": 10**12}), ([1], {"len": 2, "\u00b9": 1}), ([1], {"len": True}),
])
def test_a_patch_that_does_not_fit_is_refused(base: Any, patch: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        delta.apply(base, patch)
    assert caught.value.code == "invalid_delta"


def message(seq: int, data: Any, channel: str = "c", epoch: str = "aaaaaaaa") -> Message:
    return Message(channel, Position(epoch, seq), encode(data), 1000 + seq)


def big(n: int) -> dict[str, Any]:
    return {"n": n, "rows": [{"k": i, "v": i * 10} for i in range(20)]}


def test_the_delta_of_a_message_is_computed_once_and_names_its_base() -> None:
    first, second = message(1, big(1)), message(2, big(2))
    data = delta.delta_json(second, first)
    assert json.loads(data) == {"channel": "c", "id": second.id, "base": first.id,
                                "delta": {"n": 2}, "time": 1002}
    assert delta.delta_json(second, first) is data
    assert second.encoded[delta.DELTA_KEY] is data


def test_the_encoder_sends_whole_first_and_after_a_gap_or_a_new_subscription() -> None:
    encoder = delta.Deltas(commands.FRAMES, delta.frame_form(0, 0))
    one, two, three, four, five = (message(n, big(n)) for n in range(1, 6))
    assert encoder.single(one) == commands.FRAMES.single(one)
    assert b'"base"' in encoder.single(two)
    encoder.gap(Gap("c", two.position, three.position, "expired", 1), three.id)
    assert encoder.single(four) == commands.FRAMES.single(four)  # after a gap: whole
    encoder.want("c")
    assert encoder.message(five, None) == commands.FRAMES.single(five)  # resubscribed
    other = message(2, big(2), epoch="bbbbbbbb")
    assert encoder.single(other) == commands.FRAMES.single(other)  # another epoch


def test_the_encoder_diffs_only_the_channels_that_asked() -> None:
    encoder = delta.Deltas(sse.EVENTS, delta.SSE, channels=())
    a1, a2 = message(1, big(1), "a"), message(2, big(2), "a")
    assert encoder.single(a1) == sse.EVENTS.single(a1)
    assert encoder.single(a2) == sse.EVENTS.single(a2)
    encoder.want("b")
    b1, b2 = message(1, big(1), "b"), message(2, big(2), "b")
    encoder.single(b1)
    event = encoder.message(b2, "a=x,b=y")
    assert event.startswith(b"id: a=x,b=y\ndata: ") and b'"base"' in event
    encoder.want("b", delta=False)
    b3 = message(3, big(3), "b")
    assert encoder.single(b3) == sse.EVENTS.single(b3)


def test_a_compressed_delta_frame_is_made_once_per_window() -> None:
    form = delta.frame_form(15, 10)
    assert delta.frame_form(15, 10) is form
    first, second = message(1, big(1)), message(2, {**big(1), "n": "x" * 100})
    frame = form.single(second, delta.delta_json(second, first))
    assert frame[0] == 0xC1  # FIN, RSV1, text
    assert form.single(second, b"ignored") is frame


def test_a_value_nested_too_deeply_to_diff_goes_whole() -> None:
    first = Message("c", Position("aaaaaaaa", 1), b"[" * 3000 + b"1" + b"]" * 3000, 1)
    second = Message("c", Position("aaaaaaaa", 2), b"[" * 3000 + b"2" + b"]" * 3000, 2)
    assert delta.delta_json(second, first) == b""
    encoder = delta.Deltas(commands.FRAMES, delta.frame_form(0, 0))
    encoder.single(first)
    assert encoder.single(second) == commands.FRAMES.single(second)


@given(values, st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["a", "b", "0", "1", "len", "\u00b2"]), inner, max_size=3), max_leaves=12))
@settings(max_examples=300, deadline=None)
def test_any_patch_applies_or_is_refused_as_invalid_delta(base: Any, patch: Any) -> None:
    try:
        delta.apply(base, patch)
    except BadRequest as exc:
        assert exc.code == "invalid_delta"
