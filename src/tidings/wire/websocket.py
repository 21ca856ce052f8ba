"""WebSocket frames (RFC 6455) without I/O: frames we send, and a lean parser for frames we receive.

The opening handshake is validated by the ``websockets`` package; after it,
each connection keeps only a :class:`FrameParser` (a few slots, plus a buffer
while a frame is incomplete), which keeps idle connections small. The parser
is tested against frames made by ``websockets``' own client protocol.

A message frame is the same bytes for every connection and is encoded once
(:func:`message_frame`); compressed frames too, with the only extension
negotiated, permessage-deflate without context takeover (wire/deflate.py),
whose compressed messages from a client the parser inflates. Close codes are
the one table of :class:`tidings.errors.CloseCode`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tidings.core.message import Message
from tidings.errors import CloseCode, FrameError

_PROTOCOL_ERROR: Final = CloseCode.PROTOCOL_ERROR

__all__ = ["FrameError"]  # re-exported: the parser raises it

_apply_mask_c: Callable[[bytes, bytes], bytes] | None
try:  # the C helper shipped with the websockets package
    from websockets.speedups import apply_mask as _apply_mask_c
except ImportError:  # pragma: no cover - pure-Python fallback
    _apply_mask_c = None

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

_VALID_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                       1013, 1014})


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final frame, as a server sends it."""
    return raw_frame(opcode, payload)


def raw_frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """An unmasked, final frame; ``rsv1`` marks a compressed message (wire/deflate.py)."""
    first = 0xC0 | opcode if rsv1 else 0x80 | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 126, length)
    else:
        head = struct.pack("!BBQ", first, 127, length)
    return head + payload


def text_frame(payload: bytes) -> bytes:
    return frame(OP_TEXT, payload)


#: The key of a message's frame in :attr:`Message.encoded`.
MESSAGE_FRAME_KEY: Final = "websocket"


def message_frame(message: Message) -> bytes:
    """The ``{"type": "message", ...}`` text frame of ``message``. Encoded once."""
    data = message.encoded.get(MESSAGE_FRAME_KEY)
    if data is None:
        data = message.encoded[MESSAGE_FRAME_KEY] = frame(
            OP_TEXT, b'{"type":"message",' + message.json[1:])
    return data


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; ``reason`` is cut to fit (123 bytes of UTF-8)."""
    # At most 123 bytes, cut on a character boundary: the reason must stay valid UTF-8.
    encoded = reason.encode()[:123].decode("utf-8", "ignore").encode()
    return frame(OP_CLOSE, struct.pack("!H", code) + encoded)


PING: Final = frame(OP_PING, b"")


def apply_mask(data: bytes, mask: bytes) -> bytes:
    if _apply_mask_c is not None:
        result: bytes = _apply_mask_c(data, mask)
        return result
    length = len(data)  # pragma: no cover
    key = int.from_bytes(mask * (length // 4 + 1), "big") >> (8 * (4 - length % 4)) if length else 0
    return (int.from_bytes(data, "big") ^ key).to_bytes(length, "big")  # pragma: no cover


# Events the parser produces -------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextMessage:
    text: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int | None
    reason: str


Event = TextMessage | BinaryMessage | Ping | Pong | CloseReceived


class FrameParser:
    """Turns bytes from a client into :data:`Event` objects.

    Call :meth:`feed` with each chunk received; it returns the complete events
    and keeps partial frames. It raises :class:`FrameError` on the first
    violation; the caller must then close with ``error.code`` and stop feeding.
    Set :attr:`inflate` to a function (``wire.deflate.inflate``) once
    permessage-deflate is negotiated: messages with RSV1 set are inflated with it.
    """

    __slots__ = ("_buffer", "_compressed", "_fragments", "_fragments_opcode", "_fragments_size",
                 "inflate", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        #: ``inflate(payload, max_size)`` for compressed messages; ``None``: no extension.
        self.inflate: Callable[[bytes, int], bytes] | None = None
        self._compressed = False
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._fragments_opcode = 0
        self._fragments_size = 0

    def feed(self, data: bytes) -> list[Event]:
        buffer = self._buffer + data if self._buffer else data
        events: list[Event] = []
        offset = 0
        end = len(buffer)
        while True:
            if end - offset < 2:
                break
            b0, b1 = buffer[offset], buffer[offset + 1]
            if b0 & 0x70 and (b0 & 0x30 or self.inflate is None or b0 & 0x0F not in (
                    OP_TEXT, OP_BINARY)):
                raise FrameError(_PROTOCOL_ERROR, "reserved bits set (no extension uses them)")
            if not b1 & 0x80:
                raise FrameError(_PROTOCOL_ERROR, "client frame is not masked")
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            header = 6
            if length == 126:
                header = 8
                if end - offset < header:
                    break
                (length,) = struct.unpack_from("!H", buffer, offset + 2)
            elif length == 127:
                header = 14
                if end - offset < header:
                    break
                (length,) = struct.unpack_from("!Q", buffer, offset + 2)
            if opcode >= 0x8:
                if not fin:
                    raise FrameError(_PROTOCOL_ERROR, "fragmented control frame")
                if length > 125:
                    raise FrameError(_PROTOCOL_ERROR, "control frame longer than 125 bytes")
            elif length + self._fragments_size > self.max_size:
                raise FrameError(
                    CloseCode.TOO_BIG, f"message longer than {self.max_size} bytes"
                )
            if end - offset < header + length:
                break
            mask = buffer[offset + header - 4 : offset + header]
            payload = apply_mask(buffer[offset + header : offset + header + length], mask)
            offset += header + length
            if b0 & 0x40:
                self._compressed = True  # RSV1: the first frame of a compressed message
            event = self._frame(fin != 0, opcode, payload)
            if event is not None:
                events.append(event)
                if isinstance(event, CloseReceived):
                    offset = end  # nothing after a close frame counts
                    break
        self._buffer = buffer[offset:] if offset < end else b""
        return events

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> Event | None:
        if opcode in (OP_TEXT, OP_BINARY):
            if self._fragments is not None:
                raise FrameError(_PROTOCOL_ERROR, "new message before the last one ended")
            if not fin:
                self._fragments, self._fragments_opcode = [payload], opcode
                self._fragments_size = len(payload)
                return None
            return self._message(opcode, payload)
        if opcode == OP_CONT:
            if self._fragments is None:
                raise FrameError(_PROTOCOL_ERROR, "continuation frame without a message")
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if not fin:
                return None
            whole = b"".join(self._fragments)
            opcode = self._fragments_opcode
            self._fragments, self._fragments_size = None, 0
            return self._message(opcode, whole)
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            return _close(payload)
        raise FrameError(_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    def _message(self, opcode: int, payload: bytes) -> Event:
        if self._compressed:
            self._compressed = False
            assert self.inflate is not None  # RSV1 is refused without it
            payload = self.inflate(payload, self.max_size)
        if opcode == OP_BINARY:
            return BinaryMessage(payload)
        try:
            return TextMessage(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise FrameError(CloseCode.INVALID_DATA, "text message is not UTF-8") from None


def _close(payload: bytes) -> CloseReceived:
    if not payload:
        return CloseReceived(None, "")
    if len(payload) == 1:
        raise FrameError(_PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
        raise FrameError(_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
    return CloseReceived(code, reason)
