"""permessage-deflate without I/O: negotiation, frames compressed once, inflating client messages.

The real peer is the ``websockets`` package's sans-I/O ``ClientProtocol``
with its own ``PerMessageDeflate`` extension: it must read what we compress,
and we must read what it compresses.
"""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tidings.core.cursor import Position
from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.errors import CloseCode, FrameError
from tidings.wire import deflate
from tidings.wire.websocket import FrameParser, TextMessage, apply_mask, message_frame

HEADER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def peer(window_bits: int = 15) -> ClientProtocol:
    """A websockets client that negotiated what we answer."""
    client = ClientProtocol(parse_uri("ws://localhost/"), state=State.OPEN)
    client.extensions = [PerMessageDeflate(remote_no_context_takeover=True,
                                           local_no_context_takeover=True,
                                           remote_max_window_bits=window_bits,
                                           local_max_window_bits=15)]
    return client


def message(data: bytes, seq: int = 1) -> Message:
    return Message("prices", Position("k2j4h5g6", seq), data, 1_795_809_605_201)


PRICES = json.dumps({f"SYM{i}": {"bid": 187.21 + i, "ask": 187.25 + i, "last": 187.23}
                     for i in range(20)}, separators=(",", ":")).encode()


@pytest.mark.parametrize(("offer", "answer"), [
    (None, None),
    ("", None),
    ("x-webkit-deflate-frame", None),
    ("permessage-deflate", HEADER),
    ("permessage-deflate; client_max_window_bits", HEADER),  # Chromium, websockets
    ("permessage-deflate; client_max_window_bits=10; server_no_context_takeover", HEADER),
    ("permessage-deflate; client_no_context_takeover", HEADER),
    ("permessage-deflate; server_max_window_bits=12", HEADER + "; server_max_window_bits=12"),
    ('permessage-deflate; server_max_window_bits="10"', HEADER + "; server_max_window_bits=10"),
    ("permessage-deflate; server_max_window_bits=15", HEADER),
    ("permessage-deflate; server_max_window_bits=8", None),  # zlib cannot: declined
    ("permessage-deflate; server_max_window_bits=16", None),
    ("permessage-deflate; server_max_window_bits", None),
    ("permessage-deflate; client_max_window_bits=7", None),
    ("permessage-deflate; server_no_context_takeover=1", None),
    ("permessage-deflate; mystery", None),
    ("permessage-deflate; client_max_window_bits; client_max_window_bits", None),
    # the first offer it can honour wins
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate", HEADER),
    ("PerMessage-Deflate; Client_Max_Window_Bits", HEADER),
])
def test_negotiation(offer: str | None, answer: str | None) -> None:
    agreement = deflate.negotiate(offer)
    assert (agreement.header if agreement else None) == answer


def test_the_window_asked_for_is_the_window_used() -> None:
    agreement = deflate.negotiate("permessage-deflate; server_max_window_bits=10")
    assert agreement is not None and agreement.window_bits == 10


@pytest.mark.parametrize("window_bits", [9, 12, 15])
def test_a_compressed_frame_is_what_a_real_client_reads(window_bits: int) -> None:
    encoder = deflate.frames(window_bits, 256)
    original = message(PRICES)
    data = encoder.single(original)
    assert data[0] == 0xC1  # FIN, RSV1, text
    assert len(data) < len(message_frame(original)) / 3
    client = peer(window_bits)
    client.receive_data(data)
    assert client.parser_exc is None, client.parser_exc
    (frame,) = client.events_received()
    assert frame.opcode is Opcode.TEXT
    value = json.loads(frame.data)
    assert value["type"] == "message" and value["data"] == json.loads(PRICES)


def test_each_message_is_compressed_once_and_shared() -> None:
    encoder = deflate.frames(15, 256)
    original = message(PRICES)
    first = encoder.single(original)
    assert encoder.single(original) is first  # cached in Message.encoded
    assert original.encoded[encoder.key] is first
    assert deflate.frames(15, 256) is encoder  # one encoder, not one per connection
    # Without context takeover, a message's bytes do not depend on what came before.
    other = message(PRICES.replace(b"187", b"188"), 2)
    assert deflate.frames(15, 256).single(other) != first
    fresh = message(PRICES)
    assert encoder.single(fresh) == first


def test_short_messages_go_as_they_are() -> None:
    encoder = deflate.frames(15, 256)
    short = message(b'{"p":1}')
    assert encoder.single(short) is message_frame(short)  # under the threshold
    assert deflate.frames(15, 0).single(message(b'{"p":1}', 2))[0] == 0xC1


def test_a_message_that_would_grow_goes_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deflate, "compress", lambda payload, window_bits: payload + b"more")
    original = message(PRICES)
    assert deflate.frames(15, 0).single(original) is message_frame(original)


def test_gaps_are_plain_frames() -> None:
    gap = Gap("prices", Position("k2j4h5g6", 1), Position("k2j4h5g6", 4), "latest", 3)
    data = deflate.frames(15, 0).gap(gap, "k2j4h5g6-4")
    assert data[0] == 0x81 and json.loads(data[2:])["reason"] == "latest"


def test_the_parser_inflates_what_a_real_client_compresses() -> None:
    client = peer()
    command = json.dumps({"type": "subscribe", "req": 1, "channel": "prices",
                          "since": "k2j4h5g6-1"})
    client.send_text(command.encode())
    client.send_text(("x" * 5000).encode(), fin=False)
    client.send_continuation(("y" * 5000).encode(), fin=True)
    data = b"".join(client.data_to_send())
    assert data[0] & 0x40  # websockets compressed it
    parser = FrameParser(64 * 1024)
    parser.inflate = deflate.inflate
    assert parser.feed(data) == [TextMessage(command), TextMessage("x" * 5000 + "y" * 5000)]


def test_without_the_extension_rsv1_is_a_protocol_error() -> None:
    client = peer()
    client.send_text(b"{}")
    with pytest.raises(FrameError) as error:
        FrameParser(1024).feed(b"".join(client.data_to_send()))
    assert error.value.close_code == CloseCode.PROTOCOL_ERROR


def client_frame(first: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    return bytes([first, 0x80 | len(payload)]) + mask + apply_mask(payload, mask)


@pytest.mark.parametrize(("frames", "code"), [
    ([client_frame(0xC9, b"")], CloseCode.PROTOCOL_ERROR),  # RSV1 on a ping
    ([client_frame(0x41, b"a"), client_frame(0xC0, b"b")], CloseCode.PROTOCOL_ERROR),
    ([client_frame(0xA1, b"a")], CloseCode.PROTOCOL_ERROR),  # RSV2
    ([client_frame(0xC1, b"not deflate at all")], CloseCode.INVALID_DATA),
])
def test_bad_compressed_frames(frames: list[bytes], code: int) -> None:
    parser = FrameParser(1024)
    parser.inflate = deflate.inflate
    with pytest.raises(FrameError) as error:
        parser.feed(b"".join(frames))
    assert error.value.close_code == code


def test_a_small_frame_that_inflates_past_the_limit_is_too_big() -> None:
    bomb = deflate.compress(b"[" + b"0," * 500_000 + b"0]")
    assert len(bomb) < 2000
    parser = FrameParser(64 * 1024)
    parser.inflate = deflate.inflate
    mask = b"\x00\x00\x00\x00"
    frame = bytes([0xC1, 0x80 | 126]) + len(bomb).to_bytes(2, "big") + mask + bomb
    with pytest.raises(FrameError) as error:
        parser.feed(frame)
    assert error.value.close_code == CloseCode.TOO_BIG


@given(st.binary(max_size=3000), st.sampled_from([9, 12, 15]))
def test_compress_round_trips_through_zlib(payload: bytes, window_bits: int) -> None:
    compressed = deflate.compress(payload, window_bits)
    assert zlib.decompressobj(-window_bits).decompress(compressed + b"\x00\x00\xff\xff") == payload
    assert deflate.inflate(compressed, len(payload)) == payload
