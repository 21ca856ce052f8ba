"""Fuzzing WebSocket frames and commands after a valid handshake.

Frames: random and mutated frames get replies (pongs, command answers), an
error frame, or a close frame with a valid code; the connection ends within a
bound once the client half-closes. Commands: any JSON text gets an ``ack`` or
an ``error`` reply and the connection stays open.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hostilekit import ServerThread, WsReader, check_close, parse_frames, read_all, ws_handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.testing import client_frame

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

REPLY_TYPES = {"ack", "error", "message", "gap", "subscribed"}


@pytest.fixture(scope="module")
def served() -> Iterator[ServerThread]:
    with ServerThread(max_message_size=1024, max_channels_per_subscription=4) as server:
        yield server


# Frames -----------------------------------------------------------------------------


@st.composite
def raw_frames(draw: st.DrawFn) -> bytes:
    """A frame header drawn bit by bit (any opcode, RSV bits, mask or not, any length form)."""
    fin, rsv, opcode = draw(st.booleans()), draw(st.integers(0, 7)), draw(st.integers(0, 15))
    payload = draw(st.binary(max_size=200))
    form = draw(st.sampled_from(["short", "16", "64", "lie"]))
    is_masked = draw(st.booleans())
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if is_masked else 0
    if form == "short" and len(payload) < 126:
        header = struct.pack("!BB", first, mask_bit | len(payload))
    elif form == "16":
        header = struct.pack("!BBH", first, mask_bit | 126, len(payload))
    elif form == "64":
        header = struct.pack("!BBQ", first, mask_bit | 127, len(payload))
    else:  # a length that does not match what follows, up to absurd
        header = struct.pack("!BBQ", first, mask_bit | 127, draw(st.integers(0, 2**64 - 1)))
    key = draw(st.binary(min_size=4, max_size=4)) if is_masked else b""
    if is_masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + payload


COMMAND_TEXTS = st.sampled_from([
    b'{"type":"ping","req":1}', b'{"type":"subscribe","req":2,"channel":"c"}',
    b'{"type":"publish","req":3,"channel":"c","data":1}', b"not json", b"\xff\xfe",
])


@st.composite
def well_formed(draw: st.DrawFn) -> bytes:
    """Masked frames of every kind, including fragments and close frames with any code."""
    opcode = draw(st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]))
    if opcode == 0x8:
        payload = struct.pack("!H", draw(st.integers(0, 65535))) + draw(st.binary(max_size=10))
    elif opcode == 0x1:
        payload = draw(COMMAND_TEXTS)
    else:
        payload = draw(st.binary(max_size=130))
    return client_frame(opcode, payload, fin=draw(st.booleans()))


def frames_exchange(served: ServerThread, data: bytes) -> None:
    with served.connect() as sock:
        rest = ws_handshake(sock)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = rest + read_all(sock)
    frames = list(parse_frames(received))
    closes = [frame for frame in frames if frame.opcode == 0x8]
    assert len(closes) <= 1
    if closes:
        check_close(closes[0])
        assert frames[-1] is closes[0], "nothing is sent after a close frame"
    for frame in frames:
        assert frame.opcode in (0x1, 0x8, 0x9, 0xA), frame
        if frame.opcode == 0x1:
            assert json.loads(frame.payload)["type"] in REPLY_TYPES


@FUZZ
@given(data=st.lists(raw_frames(), min_size=1, max_size=4).map(b"".join))
def test_random_frames(served: ServerThread, data: bytes) -> None:
    frames_exchange(served, data)
    served.check_healthy()


@FUZZ
@given(frames=st.lists(well_formed(), min_size=1, max_size=6),
       cut=st.integers(0, 10), junk=st.binary(max_size=8))
def test_mutated_frame_sequences(served: ServerThread, frames: list[bytes], cut: int,
                                 junk: bytes) -> None:
    data = b"".join(frames)
    data = data[:max(1, len(data) - cut)] + junk
    frames_exchange(served, data)
    served.check_healthy()


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1025 + 4096, 2**63 - 1))
def test_declared_oversized_messages_close_1009(served: ServerThread, size: int) -> None:
    with served.connect() as sock:
        rest = ws_handshake(sock)
        sock.sendall(struct.pack("!BBQ", 0x81, 0xFF, size) + b"\x00" * 4 + b"x" * 100)
        reader = WsReader(sock, rest)
        frame = reader.next()
        assert frame is not None and frame.opcode == 0x8
        assert check_close(frame) == 1009
        assert reader.next() is None


# Commands -----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
FIELDS = {
    "type": st.sampled_from(["subscribe", "unsubscribe", "publish", "ping", "pong", "auth", ""])
    | st.text(max_size=10),
    "req": st.integers() | st.text(max_size=10) | st.none() | st.floats() | st.lists(st.none()),
    "channel": st.sampled_from(["c", "a:b", "", "x" * 300, "bad name", "ü"]) | st.text(max_size=20),
    "since": st.sampled_from(["0", "1", "0-0", "abc", "", "99999999999-1", "-1"]) | JSON_VALUES,
    "data": JSON_VALUES,
}
COMMANDS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({}, optional=FIELDS),
)


@FUZZ
@given(command=COMMANDS)
def test_any_json_command_gets_an_ack_or_an_error(served: ServerThread, command: Any) -> None:
    with served.connect() as sock:
        reader = WsReader(sock, ws_handshake(sock))
        sock.sendall(client_frame(0x1, json.dumps(command).encode()))
        sock.sendall(client_frame(0x1, b'{"type":"ping","req":"fence"}'))
        replied = fenced = False
        while not (replied and fenced):
            frame = reader.next()
            assert frame is not None and frame.opcode == 0x1, frame
            reply = json.loads(frame.payload)
            assert reply["type"] in REPLY_TYPES, reply
            if reply.get("req") == "fence" and reply["type"] == "ack" and not fenced:
                fenced = True
            elif reply["type"] in ("ack", "error"):
                replied = True
                if reply["type"] == "error":
                    assert isinstance(reply["error"], str) and isinstance(reply["message"], str)
        sock.sendall(client_frame(0x8, struct.pack("!H", 1000)))
        while (frame := reader.next()) is not None and frame.opcode != 0x8:
            pass
        assert frame is not None and check_close(frame) == 1000
    served.check_healthy()


@FUZZ
@given(text=st.text(max_size=100))
def test_any_text_gets_a_reply(served: ServerThread, text: str) -> None:
    with served.connect() as sock:
        reader = WsReader(sock, ws_handshake(sock))
        sock.sendall(client_frame(0x1, text.encode()))
        sock.sendall(client_frame(0x1, b'{"type":"ping","req":"fence"}'))
        types: list[str] = []
        while True:
            frame = reader.next()
            assert frame is not None and frame.opcode == 0x1, frame
            reply = json.loads(frame.payload)
            if reply.get("req") == "fence" and reply["type"] == "ack" and types:
                break
            types.append(reply["type"])
        assert types[0] in ("ack", "error"), types
    served.check_healthy()
