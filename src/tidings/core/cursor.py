"""Cursors: positions in a channel log, and one cursor for several channels.

A message id is ``"{epoch}-{seq}"``: the epoch names one life of a channel log
(a new epoch means the old log was lost), ``seq`` counts messages in it from 1.
The position *before* the first message of an epoch is ``"{epoch}-0"``.

A multi-channel cursor joins per-channel positions:
``"prices=k2j4h5g6-17,news=q9w8e7r6-3"``. Channel names never contain ``,``
or ``=`` (see :mod:`tidings.core.names`), so the format needs no escaping and
fits an SSE ``id:`` field as it is.

``since`` values on the wire, parsed by :func:`parse_since`:

* absent: start at the current end of the log (:data:`END`);
* ``0``: start at the oldest retained message (:data:`ORIGIN`), no gap;
* a message id, or a multi-channel cursor.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tidings.core.names import check_channel
from tidings.errors import InvalidCursor

EPOCH_LENGTH: Final = 8
_EPOCH_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
_POSITION_RE: Final = re.compile(r"([a-z0-9]{%d})-(0|[1-9][0-9]{0,17})" % EPOCH_LENGTH)
#: The longest cursor text accepted (a bound for parsers).
MAX_CURSOR_LENGTH: Final = 8192


def new_epoch() -> str:
    """A fresh random epoch name (from the OS's CSPRNG; 36^8 names)."""
    number = int.from_bytes(secrets.token_bytes(8), "big")
    letters = []
    for _ in range(EPOCH_LENGTH):
        number, digit = divmod(number, 36)
        letters.append(_EPOCH_ALPHABET[digit])
    return "".join(letters)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in a channel log: after message ``seq`` of ``epoch``."""

    epoch: str
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.seq}"


class _Special:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Start at the current end of the log: only messages published from now on.
END: Final = _Special("END")
#: Start at the oldest retained message, without a gap signal.
ORIGIN: Final = _Special("ORIGIN")

#: Where a read starts: a position, the oldest retained message, or the end.
Start = Position | _Special


@functools.lru_cache(maxsize=4096)
def parse_position(text: str) -> Position:
    """Parse one message id; raise :class:`InvalidCursor` if it is malformed.

    Cached: the clients of a channel mostly send the same few cursors (the
    last id they were given), and a :class:`Position` is immutable.
    """
    match = _POSITION_RE.fullmatch(text)
    if match is None:
        raise InvalidCursor(f"malformed cursor {text[:60]!r}; expected EPOCH-SEQ")
    return Position(match[1], int(match[2]))


def parse_start(text: str) -> Start:
    """Parse the position of one channel: ``0`` or a message id."""
    if text == "0":
        return ORIGIN
    return parse_position(text)


def parse_since(text: str | None, channels: Sequence[str]) -> dict[str, Start]:
    """Parse a ``since`` value for a subscription to ``channels``.

    Accepts ``0`` (every channel from its oldest message), a message id (only
    for one channel) or a multi-channel cursor; channels the cursor does not
    name start at the end.
    """
    if text is None:
        return dict.fromkeys(channels, END)
    if not text:
        raise InvalidCursor("since is empty; omit it to start at the end, or use 0")
    if len(text) > MAX_CURSOR_LENGTH:
        raise InvalidCursor(f"cursor is longer than {MAX_CURSOR_LENGTH} characters")
    if "=" not in text:
        start = parse_start(text)
        if start is not ORIGIN and len(channels) > 1:
            raise InvalidCursor(
                "a message id names a position in one channel; "
                "use a multi-channel cursor (a=ID,b=ID) or 0"
            )
        return dict.fromkeys(channels, start)
    named = parse_multi(text)
    return {channel: named.get(channel, END) for channel in channels}


def parse_multi(text: str) -> dict[str, Start]:
    """Parse ``"a=ID,b=ID"``; raise :class:`InvalidCursor` if it is malformed."""
    result: dict[str, Start] = {}
    for part in text.split(","):
        channel, sep, value = part.partition("=")
        if not sep:
            raise InvalidCursor(f"malformed cursor part {part[:60]!r}; expected CHANNEL=ID")
        try:
            check_channel(channel)
        except Exception as exc:
            raise InvalidCursor(f"cursor names an invalid channel: {exc}") from None
        result[channel] = parse_start(value)
    return result


def format_multi(positions: dict[str, Position]) -> str:
    """The multi-channel cursor for ``positions`` (in the dict's order)."""
    return ",".join(f"{channel}={position}" for channel, position in positions.items())
