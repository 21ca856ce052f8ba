"""WebSocket compression (RFC 7692, permessage-deflate), compressed once per message.

No I/O. Compression usually makes every connection's bytes different: each
keeps a compression context across messages. tidings negotiates
``server_no_context_takeover`` with every client, so each message is
compressed on its own, and the compressed frame of a message is the same for
every connection that negotiated the same window: it is made once, cached in
:attr:`Message.encoded` (key :func:`frame_key`), and written to all of them.

Negotiation (:func:`negotiate`) takes the first offer it can honour:

* it always answers ``server_no_context_takeover`` (the client need not ask);
* it always answers ``client_no_context_takeover`` (RFC 7692 section
  7.1.1.2 lets a server ask it), so the few messages a client compresses
  (commands) are inflated one by one, with no inflater kept per connection;
* ``server_max_window_bits=N`` in an offer is honoured with a window of N
  bits (a cache key of its own); ``N = 8`` is declined (zlib cannot make it);
* ``client_max_window_bits`` is accepted and left unanswered;
* an offer with another parameter, a repeated one, or a bad value is declined.

Messages shorter than the threshold go uncompressed (RSV1 clear), which
permessage-deflate allows message by message. Gaps, acks and other control
frames are never compressed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Final

from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.errors import CloseCode, FrameError
from tidings.wire.commands import gap_frame
from tidings.wire.websocket import OP_TEXT, message_frame, raw_frame

#: The extension's name in ``Sec-WebSocket-Extensions``.
EXTENSION: Final = "permessage-deflate"
#: The window the server compresses with unless an offer asks for less.
MAX_WINDOW_BITS: Final = 15
#: The smallest window zlib can make a raw deflate stream with.
MIN_WINDOW_BITS: Final = 9
#: zlib's compression level: 6 is its default (1 is faster, 9 smaller).
LEVEL: Final = 6
#: What each compressed message ends with before it is cut off (RFC 7692 section 7.2.1).
_TAIL: Final = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class Agreement:
    """A negotiated permessage-deflate: the server's window, and the header that says so."""

    window_bits: int
    header: str


def negotiate(offers: str | None) -> Agreement | None:
    """The agreement for a ``Sec-WebSocket-Extensions`` request header, or ``None``."""
    if not offers:
        return None
    for offer in _split(offers):
        name, params = offer[0], offer[1:]
        if name.lower() != EXTENSION:
            continue
        window = _acceptable(params)
        if window is None:
            continue
        header = f"{EXTENSION}; server_no_context_takeover; client_no_context_takeover"
        if window < MAX_WINDOW_BITS:
            header += f"; server_max_window_bits={window}"
        return Agreement(window, header)
    return None


def _split(header: str) -> list[list[str]]:
    """``a; x=1, b`` → ``[["a", "x=1"], ["b"]]`` (quoted values keep no quotes)."""
    return [[part.strip().replace('"', "") for part in offer.split(";")]
            for offer in header.split(",") if offer.strip()]


def _acceptable(params: list[str]) -> int | None:
    """The window to compress with if the offer's parameters can be honoured, else ``None``."""
    seen: set[str] = set()
    window = MAX_WINDOW_BITS
    for param in params:
        name, _, value = param.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name in seen:
            return None
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value:
                return None
        elif name == "server_max_window_bits":
            if not (value.isdigit() and len(value) <= 2 and 8 <= int(value) <= 15):
                return None
            window = int(value)
            if window < MIN_WINDOW_BITS:
                return None
        elif name == "client_max_window_bits":
            if value and not (value.isdigit() and len(value) <= 2 and 8 <= int(value) <= 15):
                return None
        else:
            return None
    return window


def compress(payload: bytes, window_bits: int = MAX_WINDOW_BITS) -> bytes:
    """``payload`` as one permessage-deflate message, with no context before or after it."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


def inflate(payload: bytes, max_size: int) -> bytes:
    """A client's compressed message, at most ``max_size`` bytes once inflated.

    Each message stands alone (``client_no_context_takeover``). Raises
    :class:`FrameError` (``1009``) past ``max_size``, ``1007`` if it is not deflate.
    """
    inflater = zlib.decompressobj(-MAX_WINDOW_BITS)
    try:
        data = inflater.decompress(payload + _TAIL, max_size + 1)
    except zlib.error:
        raise FrameError(CloseCode.INVALID_DATA, "a compressed message is not deflate") from None
    if len(data) > max_size or inflater.unconsumed_tail:
        raise FrameError(CloseCode.TOO_BIG, f"message longer than {max_size} bytes")
    return data


def frame_key(window_bits: int) -> str:
    """The key of a message's compressed frame in :attr:`Message.encoded`."""
    return f"websocket-deflate-{window_bits}"


class DeflateFrames:
    """How a reader writes on a WebSocket that negotiated compression (``Encoder``).

    A message at least ``threshold`` bytes long is compressed once per window
    size and cached; a shorter one is the plain frame (cached under this key
    too, so that delivery finds it with one lookup).
    """

    __slots__ = ("key", "threshold", "window_bits")

    def __init__(self, window_bits: int, threshold: int) -> None:
        self.window_bits = window_bits
        self.threshold = threshold
        self.key = frame_key(window_bits) + f"-{threshold}"

    def single(self, message: Message) -> bytes:
        data = message.encoded.get(self.key)
        if data is None:
            plain = message_frame(message)
            payload = b'{"type":"message",' + message.json[1:]
            if len(payload) < self.threshold:
                data = plain
            else:
                compressed = compress(payload, self.window_bits)
                # Incompressible data is sent as it is: permessage-deflate allows it.
                data = raw_frame(OP_TEXT, compressed, rsv1=True) if len(
                    compressed) < len(payload) else plain
            message.encoded[self.key] = data
        return data

    def message(self, message: Message, cursor: str | None) -> bytes:
        return self.single(message)

    def gap(self, gap: Gap, cursor: str) -> bytes:
        return gap_frame(gap.to_json())


_ENCODERS: dict[tuple[int, int], DeflateFrames] = {}


def frames(window_bits: int, threshold: int) -> DeflateFrames:
    """The shared encoder for a window and threshold (one object, not one per connection)."""
    encoder = _ENCODERS.get((window_bits, threshold))
    if encoder is None:
        encoder = _ENCODERS[window_bits, threshold] = DeflateFrames(window_bits, threshold)
    return encoder
