"""Channel names: what is allowed, checked in one place."""

from __future__ import annotations

import re

from tidings.errors import InvalidChannel

#: The longest channel name accepted, in characters.
MAX_CHANNEL_LENGTH = 128

#: Letters, digits and ``_ - . : @``. ``:`` separates a namespace from the rest
#: (``prices:AAPL``). ``,`` and ``=`` are left out on purpose: the multi-channel
#: cursor uses them as separators.
CHANNEL_ALPHABET = "A-Z a-z 0-9 _ - . : @"

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,%d}" % MAX_CHANNEL_LENGTH)


def check_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannel`."""
    if _CHANNEL_RE.fullmatch(name) is None:
        if not name:
            raise InvalidChannel("channel name is empty")
        if len(name) > MAX_CHANNEL_LENGTH:
            raise InvalidChannel(
                f"channel name is {len(name)} characters long; at most {MAX_CHANNEL_LENGTH}"
            )
        raise InvalidChannel(
            f"channel name {name[:40]!r} has characters outside {CHANNEL_ALPHABET}"
        )
    return name


def namespace_of(name: str) -> str:
    """The namespace of a channel: the part before the first ``:``, or ``""``."""
    head, sep, _ = name.partition(":")
    return head if sep else ""
