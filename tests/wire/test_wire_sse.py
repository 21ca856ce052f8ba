"""Server-Sent Events bytes: messages, gaps, the opening and closing events."""

from __future__ import annotations

import json

from tidings.core.cursor import Position
from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.wire import sse

EPOCH = "k2j4h5g6"


def message(seq: int = 17, data: bytes = b'{"p":187.2,"note":"a\\nb"}') -> Message:
    return Message("prices:AAPL", Position(EPOCH, seq), data, 1_700_000_000_000)


def parse_events(stream: bytes) -> list[dict[str, str]]:
    """A small SSE parser after the WHATWG algorithm (enough for these bytes)."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in stream.decode("utf-8").split("\n"):
        if line == "":
            if current:
                events.append(current)
            current = {}
            continue
        if line.startswith(":"):
            current.setdefault("comment", "")
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        current[field] = current[field] + "\n" + value if field in current else value
    assert current == {}, "stream must end at an event boundary"
    return events


def test_message_event_exact_bytes() -> None:
    m = message()
    assert sse.message_event(m) == (
        b'id: k2j4h5g6-17\ndata: {"channel":"prices:AAPL","id":"k2j4h5g6-17",'
        b'"data":{"p":187.2,"note":"a\\nb"},"time":1700000000000}\n\n'
    )


def test_message_event_is_encoded_once() -> None:
    m = message()
    first = sse.message_event(m)
    assert sse.message_event(m) is first
    assert list(m.encoded.values()) == [first]  # cached on the message


def test_message_event_data_is_the_message_json() -> None:
    m = message(data='{"s":"é\\u2028"}'.encode())
    [event] = parse_events(sse.message_event(m))
    assert event["id"] == m.id
    assert json.loads(event["data"]) == json.loads(m.json)


def test_message_event_with_cursor() -> None:
    m = message()
    cursor = f"prices:AAPL={EPOCH}-17,news=q9w8e7r6-3"
    assert sse.message_event_with_cursor(m, cursor) == (
        b"id: " + cursor.encode() + b"\ndata: " + m.json + b"\n\n")
    assert not m.encoded  # per-connection bytes are not cached on the message


def test_opening() -> None:
    assert sse.opening(2000, f"{EPOCH}-0") == b"retry: 2000\nid: k2j4h5g6-0\n\n"
    [event] = parse_events(sse.opening(1500, "a=k2j4h5g6-1,b=q9w8e7r6-2"))
    assert event == {"retry": "1500", "id": "a=k2j4h5g6-1,b=q9w8e7r6-2"}


def test_gap_event() -> None:
    gap = Gap("news", Position(EPOCH, 2), Position(EPOCH, 6), "expired", 4)
    data = sse.gap_event(gap, f"{EPOCH}-6")
    assert data == (
        b'event: gap\nid: k2j4h5g6-6\ndata: {"channel":"news","from":"k2j4h5g6-2",'
        b'"to":"k2j4h5g6-6","reason":"expired","missed":4}\n\n'
    )
    [event] = parse_events(data)
    assert event["event"] == "gap"
    assert json.loads(event["data"]) == gap.to_json()


def test_epoch_gap_event() -> None:
    gap = Gap("news", Position("q9w8e7r6", 9), Position(EPOCH, 0), "epoch", None)
    [event] = parse_events(sse.gap_event(gap, f"{EPOCH}-0"))
    assert json.loads(event["data"])["missed"] is None
    assert event["id"] == f"{EPOCH}-0"


def test_closing() -> None:
    data = sse.closing("slow_consumer", "you fell\nbehind")
    assert data.startswith(b"event: close\ndata: ")
    [event] = parse_events(data)
    assert event["event"] == "close"
    assert json.loads(event["data"]) == {"error": "slow_consumer", "message": "you fell\nbehind"}


def test_heartbeat_is_a_comment() -> None:
    assert sse.HEARTBEAT == b":\n\n"
    assert parse_events(sse.HEARTBEAT) == [{"comment": ""}]


def test_a_whole_stream_parses() -> None:
    messages = [message(seq) for seq in range(1, 4)]
    stream = sse.opening(2000, f"{EPOCH}-0") + b"".join(map(sse.message_event, messages))
    stream += sse.HEARTBEAT + sse.closing("shutdown", "bye")
    events = parse_events(stream)
    assert [e.get("id") for e in events] == [f"{EPOCH}-0", f"{EPOCH}-1", f"{EPOCH}-2",
                                            f"{EPOCH}-3", None, None]
