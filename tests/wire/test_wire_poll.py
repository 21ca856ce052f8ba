"""Poll and long-poll answer bodies."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.cursor import Position
from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.wire import jsonvalue, poll

EPOCH = "k2j4h5g6"


def message(channel: str, seq: int, data: bytes) -> Message:
    return Message(channel, Position(EPOCH, seq), data, 1_700_000_000_000 + seq)


def test_empty_body() -> None:
    assert poll.body([], f"{EPOCH}-4", [], False) == b'{"messages":[],"next":"k2j4h5g6-4"}'


def test_body_with_messages() -> None:
    messages = [message("news", 1, b'{"a":1}'), message("news", 2, b'"two"')]
    value = json.loads(poll.body(messages, f"{EPOCH}-2", [], False))
    assert value == {
        "messages": [
            {"channel": "news", "id": f"{EPOCH}-1", "data": {"a": 1}, "time": 1_700_000_000_001},
            {"channel": "news", "id": f"{EPOCH}-2", "data": "two", "time": 1_700_000_000_002},
        ],
        "next": f"{EPOCH}-2",
    }


def test_body_with_gaps_and_more() -> None:
    gaps = [
        Gap("a", Position(EPOCH, 1), Position(EPOCH, 5), "expired", 4),
        Gap("b", Position("q9w8e7r6", 3), Position(EPOCH, 0), "epoch", None),
    ]
    cursor = f"a={EPOCH}-6,b={EPOCH}-0"
    value = json.loads(poll.body([message("a", 6, b"6")], cursor, gaps, True))
    assert value["next"] == cursor
    assert value["gap"] is True
    assert value["gaps"] == [gap.to_json() for gap in gaps]
    assert value["more"] is True
    assert [m["id"] for m in value["messages"]] == [f"{EPOCH}-6"]


def test_no_gap_and_no_more_keys_when_absent() -> None:
    value = json.loads(poll.body([], f"{EPOCH}-0", [], False))
    assert set(value) == {"messages", "next"}


@given(
    st.lists(st.sampled_from([b"1", b"null", b'{"x":[1,2]}', '"é"'.encode(), b'"a\\"b"']),
             max_size=10),
    st.booleans(),
    st.booleans(),
)
def test_body_round_trips(datas: list[bytes], with_gap: bool, more: bool) -> None:
    messages = [message("c:1", i + 1, d) for i, d in enumerate(datas)]
    gaps = [Gap("c:1", Position(EPOCH, 0), Position(EPOCH, 0), "expired", 0)] if with_gap else []
    raw = poll.body(messages, f"{EPOCH}-{len(datas)}", gaps, more)
    value = jsonvalue.decode(raw)
    assert [jsonvalue.encode(m["data"]) for m in value["messages"]] == datas
    assert value.get("gap", False) is with_gap
    assert value.get("more", False) is more


def test_etag() -> None:
    assert poll.etag(f"{EPOCH}-3") == f'"{EPOCH}-3"'
