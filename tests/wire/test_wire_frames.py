"""WebSocket frames: ours decode in a real client; our parser agrees with a real client's frames.

The real peer is the ``websockets`` package's sans-I/O ``ClientProtocol``.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tidings.core.cursor import Position
from tidings.core.message import Message
from tidings.wire import websocket as ws
from tidings.wire.websocket import (
    BinaryMessage,
    CloseReceived,
    Event,
    FrameError,
    FrameParser,
    Ping,
    Pong,
    TextMessage,
)


def client(max_size: int | None = None) -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://localhost/"), state=State.OPEN, max_size=max_size)


def decode_server_bytes(data: bytes) -> list[Frame]:
    """What a real client makes of bytes from our server; fails if they are invalid."""
    peer = client()
    peer.receive_data(data)
    assert peer.parser_exc is None, peer.parser_exc
    return peer.events_received()


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
                 masked: bool = True, length_override: int | None = None) -> bytes:
    """A client frame built by hand, so it can break the rules."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    length = len(payload) if length_override is None else length_override
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = struct.pack("!BB", b0, mask_bit | length)
    elif length < 65536:
        head = struct.pack("!BBH", b0, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", b0, mask_bit | 127, length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + ws.apply_mask(payload, mask)


# Frames we send -------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frames_of_every_length_class_decode_in_a_real_client(length: int) -> None:
    payload = bytes(i % 251 for i in range(length))
    for opcode, expected in ((ws.OP_BINARY, Opcode.BINARY), (ws.OP_TEXT, Opcode.TEXT)):
        data = payload if opcode == ws.OP_BINARY else b"a" * length
        frame = ws.frame(opcode, data)
        header = 2 if length < 126 else 4 if length < 65536 else 10
        assert len(frame) == header + length
        [event] = decode_server_bytes(frame)
        assert event.opcode is expected
        assert event.fin
        assert bytes(event.data) == data


def test_frames_decode_when_received_byte_by_byte() -> None:
    frames = ws.frame(ws.OP_TEXT, b"x" * 300) + ws.frame(ws.OP_BINARY, b"y") + ws.PING
    peer = client()
    for i in range(len(frames)):
        peer.receive_data(frames[i : i + 1])
    events = peer.events_received()
    assert [(e.opcode, bytes(e.data)) for e in events] == [
        (Opcode.TEXT, b"x" * 300), (Opcode.BINARY, b"y"), (Opcode.PING, b""),
    ]


def test_ping_frame() -> None:
    [event] = decode_server_bytes(ws.PING)
    assert event.opcode is Opcode.PING and bytes(event.data) == b""


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, ""), (1001, "server shutting down"), (4008, "slow_consumer: too far behind"),
     (1002, "x" * 200)],
)
def test_close_frame_decodes_in_a_real_client(code: int, reason: str) -> None:
    [event] = decode_server_bytes(ws.close_frame(code, reason))
    assert event.opcode is Opcode.CLOSE
    close = Close.parse(bytes(event.data))
    assert close.code == code
    assert close.reason == reason[:123]


@pytest.mark.parametrize("reason", ["é" * 100, "€" * 60, "x" + "😀" * 40, "é" * 61 + "x"])
def test_long_non_ascii_close_reason_is_cut_on_a_character_boundary(reason: str) -> None:
    frame = ws.close_frame(1008, reason)
    assert len(frame) <= 2 + 125
    [event] = decode_server_bytes(frame)
    close = Close.parse(bytes(event.data))  # raises on invalid UTF-8
    assert close.code == 1008
    assert reason.startswith(close.reason)
    assert len(close.reason.encode()) > 119  # cut at most one character short


def message(data: bytes = b'{"p":187.2,"s":"\xc3\xa9"}') -> Message:
    return Message("prices:AAPL", Position("k2j4h5g6", 17), data, 1_700_000_000_000)


def test_message_frame_is_encoded_once() -> None:
    m = message()
    first = ws.message_frame(m)
    assert ws.message_frame(m) is first
    assert list(m.encoded.values()) == [first]  # cached on the message


def test_message_frame_payload() -> None:
    m = message()
    [event] = decode_server_bytes(ws.message_frame(m))
    assert event.opcode is Opcode.TEXT
    assert json.loads(bytes(event.data)) == {"type": "message", **json.loads(m.json)}
    assert json.loads(bytes(event.data)) == {
        "type": "message", "channel": "prices:AAPL", "id": "k2j4h5g6-17",
        "data": {"p": 187.2, "s": "é"}, "time": 1_700_000_000_000,
    }


def test_large_message_frame() -> None:
    m = message(b'"' + b"z" * 70_000 + b'"')
    [event] = decode_server_bytes(ws.message_frame(m))
    assert json.loads(bytes(event.data))["data"] == "z" * 70_000


def test_apply_mask_matches_websockets() -> None:
    from websockets.utils import apply_mask as reference

    for length in (0, 1, 3, 4, 5, 17, 1000):
        data, mask = os.urandom(length), os.urandom(4)
        assert ws.apply_mask(data, mask) == reference(data, mask)


# Our parser against a real client -------------------------------------------


@dataclass
class Step:
    """One thing the client sends, and the event our parser must produce for it."""

    kind: str
    payload: bytes
    pieces: int = 1
    interleave: bytes | None = None  # a ping payload sent between fragments


texts = st.text(max_size=300).map(lambda s: s.encode())
binaries = st.binary(max_size=300)
control_payloads = st.binary(max_size=125)

steps = st.one_of(
    st.builds(Step, st.just("text"), texts, st.integers(1, 4),
              st.none() | control_payloads),
    st.builds(Step, st.just("binary"), binaries, st.integers(1, 4),
              st.none() | control_payloads),
    st.builds(Step, st.just("ping"), control_payloads),
    st.builds(Step, st.just("pong"), control_payloads),
)
close_codes = st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000,
                               3999, 4000, 4008, 4999])
close_reasons = st.text(max_size=40)


def split(payload: bytes, pieces: int) -> list[bytes]:
    """``pieces`` parts (some possibly empty; UTF-8 may be cut mid-character)."""
    size = -(-len(payload) // pieces) if payload else 0
    parts = [payload[i * size : (i + 1) * size] for i in range(pieces)]
    assert b"".join(parts) == payload
    return parts


def send(peer: ClientProtocol, step: Step) -> list[Event]:
    if step.kind == "ping":
        peer.send_ping(step.payload)
        return [Ping(step.payload)]
    if step.kind == "pong":
        peer.send_pong(step.payload)
        return [Pong(step.payload)]
    parts = split(step.payload, step.pieces)
    first = peer.send_text if step.kind == "text" else peer.send_binary
    expected: list[Event] = []
    for i, part in enumerate(parts):
        fin = i == len(parts) - 1
        if i == 0:
            first(part, fin=fin)
        else:
            peer.send_continuation(part, fin=fin)
        if not fin and step.interleave is not None and i == 0:
            peer.send_ping(step.interleave)
            expected.append(Ping(step.interleave))
    if step.kind == "text":
        expected.append(TextMessage(step.payload.decode()))
    else:
        expected.append(BinaryMessage(step.payload))
    return expected


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(steps, max_size=8),
    st.none() | st.tuples(close_codes, close_reasons),
    st.lists(st.integers(min_value=0), max_size=30),
)
def test_parser_agrees_with_a_real_client(
    script: list[Step], close: tuple[int, str] | None, cuts: list[int]
) -> None:
    peer = client()
    expected: list[Event] = []
    for step in script:
        expected += send(peer, step)
    if close is not None:
        peer.send_close(*close)
        expected.append(CloseReceived(*close))
    data = b"".join(peer.data_to_send())
    parser = FrameParser(max_size=1 << 20)
    events: list[Event] = []
    for chunk in chunked(data, cuts):
        events += parser.feed(chunk)
    assert events == expected


def test_close_without_code() -> None:
    peer = client()
    peer.send_close()
    assert FrameParser(1000).feed(b"".join(peer.data_to_send())) == [CloseReceived(None, "")]


def test_bytes_after_a_close_frame_are_ignored() -> None:
    parser = FrameParser(1000)
    data = client_frame(ws.OP_CLOSE, struct.pack("!H", 1000)) + client_frame(ws.OP_TEXT, b"late")
    assert parser.feed(data) == [CloseReceived(1000, "")]


def test_parser_keeps_nothing_between_whole_frames() -> None:
    parser = FrameParser(1000)
    frame = client_frame(ws.OP_TEXT, b"hello")
    assert parser.feed(frame[:3]) == []
    assert parser.feed(frame[3:]) == [TextMessage("hello")]
    assert parser._buffer == b""


def test_parser_limit_applies_to_the_whole_message() -> None:
    parser = FrameParser(max_size=10)
    assert parser.feed(client_frame(ws.OP_TEXT, b"x" * 10)) == [TextMessage("x" * 10)]
    data = client_frame(ws.OP_TEXT, b"x" * 5, fin=False) + client_frame(ws.OP_CONT, b"y" * 5)
    assert parser.feed(data) == [TextMessage("x" * 5 + "y" * 5)]


def test_control_frames_do_not_count_against_the_message_limit() -> None:
    parser = FrameParser(max_size=4)
    data = (client_frame(ws.OP_BINARY, b"ab", fin=False) + client_frame(ws.OP_PING, b"z" * 125)
            + client_frame(ws.OP_CONT, b"cd"))
    assert parser.feed(data) == [Ping(b"z" * 125), BinaryMessage(b"abcd")]


# Frames our parser must refuse ------------------------------------------------


def refusal(data: bytes, max_size: int = 1000, *, prefix: bytes = b"") -> FrameError:
    parser = FrameParser(max_size)
    if prefix:
        parser.feed(prefix)
    with pytest.raises(FrameError) as info:
        parser.feed(data)
    return info.value


def test_unmasked_frame() -> None:
    assert refusal(client_frame(ws.OP_TEXT, b"hi", masked=False)).close_code == 1002


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
def test_reserved_bits(rsv: int) -> None:
    assert refusal(client_frame(ws.OP_TEXT, b"hi", rsv=rsv)).close_code == 1002


@pytest.mark.parametrize("opcode", [ws.OP_PING, ws.OP_PONG, ws.OP_CLOSE])
def test_control_frame_longer_than_125(opcode: int) -> None:
    payload = struct.pack("!H", 1000) + b"x" * 124 if opcode == ws.OP_CLOSE else b"x" * 126
    assert refusal(client_frame(opcode, payload)).close_code == 1002


def test_control_frame_length_is_refused_from_the_header() -> None:
    header = client_frame(ws.OP_PING, b"x" * 126)[:8]
    assert refusal(header).close_code == 1002


@pytest.mark.parametrize("opcode", [ws.OP_PING, ws.OP_PONG, ws.OP_CLOSE])
def test_fragmented_control_frame(opcode: int) -> None:
    assert refusal(client_frame(opcode, b"", fin=False)).close_code == 1002


@pytest.mark.parametrize("fin", [True, False])
def test_continuation_without_a_message(fin: bool) -> None:
    assert refusal(client_frame(ws.OP_CONT, b"x", fin=fin)).close_code == 1002


def test_continuation_after_a_finished_message() -> None:
    data = client_frame(ws.OP_TEXT, b"a") + client_frame(ws.OP_CONT, b"b")
    assert refusal(data).close_code == 1002


def test_new_message_before_the_last_one_ended() -> None:
    data = client_frame(ws.OP_TEXT, b"a", fin=False) + client_frame(ws.OP_BINARY, b"b")
    assert refusal(data).close_code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
def test_unknown_opcode(opcode: int) -> None:
    assert refusal(client_frame(opcode, b"")).close_code == 1002


def test_message_over_max_size() -> None:
    assert refusal(client_frame(ws.OP_TEXT, b"x" * 11), max_size=10).close_code == 1009


def test_message_over_max_size_is_refused_from_the_header() -> None:
    header = client_frame(ws.OP_BINARY, b"", length_override=1 << 40)[:14]
    assert refusal(header, max_size=1 << 20).close_code == 1009


def test_message_over_max_size_across_fragments() -> None:
    first = client_frame(ws.OP_TEXT, b"x" * 6, fin=False)
    second = client_frame(ws.OP_CONT, b"y" * 5, fin=False)
    error = refusal(client_frame(ws.OP_CONT, b"z"), max_size=11, prefix=first + second)
    assert error.close_code == 1009


def test_invalid_utf8_text() -> None:
    error = refusal(client_frame(ws.OP_TEXT, b"\xff\xfe"))
    assert error.close_code == 1007


def test_invalid_utf8_across_fragments() -> None:
    data = client_frame(ws.OP_TEXT, b"\xc3", fin=False) + client_frame(ws.OP_CONT, b"(")
    assert refusal(data).close_code == 1007


def test_utf8_character_split_across_fragments_is_fine() -> None:
    data = client_frame(ws.OP_TEXT, b"\xc3", fin=False) + client_frame(ws.OP_CONT, b"\xa9")
    assert FrameParser(100).feed(data) == [TextMessage("é")]


def test_invalid_utf8_binary_is_fine() -> None:
    assert FrameParser(100).feed(client_frame(ws.OP_BINARY, b"\xff")) == [BinaryMessage(b"\xff")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_bad_close_code(code: int) -> None:
    assert refusal(client_frame(ws.OP_CLOSE, struct.pack("!H", code))).close_code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                  1013, 1014, 3000, 4999])
def test_good_close_codes(code: int) -> None:
    frame = client_frame(ws.OP_CLOSE, struct.pack("!H", code) + b"bye")
    assert FrameParser(100).feed(frame) == [CloseReceived(code, "bye")]


def test_one_byte_close_payload() -> None:
    assert refusal(client_frame(ws.OP_CLOSE, b"\x03")).close_code == 1002


def test_close_reason_not_utf8() -> None:
    assert refusal(client_frame(ws.OP_CLOSE, struct.pack("!H", 1000) + b"\xff")).close_code == 1007


def test_frame_error_carries_a_reason() -> None:
    error = refusal(client_frame(ws.OP_TEXT, b"hi", masked=False))
    assert "mask" in error.reason
    assert str(error) == error.reason
