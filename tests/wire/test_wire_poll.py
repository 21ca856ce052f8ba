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


def test_a_page_asked_again_is_the_same_bytes_and_another_page_is_its_own() -> None:
    """The last page of one channel is kept: the same page again is the same object; a page
    that differs in any way (its end, its start, the cursor, ``more``) is built anew."""
    log = [message("news", seq, b'{"n":%d}' % seq) for seq in range(1, 6)]

    def fresh(messages: list[Message], cursor: str, more: bool) -> bytes:
        return poll._body(messages, cursor, (), more, False)

    pages = [(log[0:3], f"{EPOCH}-3", False), (log[0:3], f"{EPOCH}-3", True),
             (log[0:4], f"{EPOCH}-4", False), (log[1:4], f"{EPOCH}-4", False),
             (log[1:4], f"{EPOCH}-5", False), (log[0:3], f"{EPOCH}-3", False)]
    for messages, cursor, more in pages:
        first = poll.body(list(messages), cursor, [], more)
        assert first == fresh(messages, cursor, more)
        assert poll.body(list(messages), cursor, [], more) is first


def test_one_message_at_the_end_is_the_waiters_body() -> None:
    last = message("news", 7, b'"x"')
    assert poll.body([last], f"{EPOCH}-7", [], False) is poll.tail_body(last)
    assert poll.body([last], f"{EPOCH}-7", [], True) == poll._body([last], f"{EPOCH}-7", (),
                                                                   True, False)


def test_pages_of_several_channels_are_not_kept() -> None:
    a, b = message("a", 1, b"1"), message("b", 1, b"2")
    cursor = f"a={EPOCH}-1,b={EPOCH}-1"
    assert poll.body([a, b], cursor, [], False) == poll._body([a, b], cursor, (), False, False)
    assert poll.body([a, b], cursor, [], False) is not poll.body([a, b], cursor, [], False)
