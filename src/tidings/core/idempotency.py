"""Idempotency keys: what a key may be, and what a publish under one remembers.

A publish may carry a key (``Idempotency-Key`` over HTTP, ``idempotency_key``
in a WebSocket ``publish``). Within the channel's ``idempotency_window``, a
second publish with the same key on the same channel stores nothing: the
broker answers the first one's message (a replay) if the body is the same,
and refuses with :class:`~tidings.errors.IdempotencyConflict` (``422``) if
it is not. A record names the epoch its message was stored in; a record of
another epoch than the log's current one is ignored, so a replay never
answers an id that now means another message.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from tidings.core.cursor import Position
from tidings.errors import BadRequest

#: The longest idempotency key accepted, in characters.
MAX_IDEMPOTENCY_KEY_LENGTH = 128
#: The characters a key may use: letters, digits and ``- _ . : ~ + / =``
#: (a UUID, a base64 or base64url token, a ULID all fit).
IDEMPOTENCY_KEY_CHARSET = r"A-Za-z0-9\-_.:~+/="
_KEY = re.compile(f"[{IDEMPOTENCY_KEY_CHARSET}]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}")


def check_idempotency_key(key: str) -> str:
    """Return ``key`` if it is a valid idempotency key; raise :class:`BadRequest` if not.

    A key quoted as a structured-field string (``"abc"``, the IETF draft's
    form) is accepted and unquoted.
    """
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not _KEY.fullmatch(key):
        raise BadRequest(
            f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters among "
            "letters, digits and - _ . : ~ + / =", code="invalid_idempotency_key")
    return key


def fingerprint(data: bytes) -> str:
    """What a record keeps of a body to tell a replay from a conflict."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """The message a key was first used for, and the body it carried."""

    position: Position
    time: int
    fingerprint: str
