"""Where a channel lives in Redis, and how its messages are written there.

Every name of a channel shares the hash tag ``{channel}``, so in a Redis
Cluster its stream, its metadata and its pub/sub channel sit on one slot, and
one Lua script can touch them all. Channel names never contain braces
(:mod:`tidings.core.names`), so the tag is always the whole name.

=======================  ====================================================
``tidings:{C}:log``      stream: one entry per retained message, id ``SEQ-0``,
                         fields ``t`` (Unix ms) and ``d`` (the JSON data)
``tidings:{C}:meta``     hash: ``epoch``, ``seq`` (last sequence number),
                         ``t`` (time of the last message), ``run`` (the
                         ``run_id`` of the Redis that last wrote it); in a
                         cluster also ``node`` and ``repl``, that Redis's
                         cluster id and replication id (scripts.py)
``tidings:{C}:once:K``  string: the idempotency record of key ``K``
                         (``EPOCH SEQ TIME FINGERPRINT``), expiring after
                         the channel's idempotency window
``tidings:{C}:DB``       sharded pub/sub channel (``SPUBLISH``) carrying each
                         new message to the nodes that follow ``C``; pub/sub
                         ignores databases, so the database number is in it
``tidings:{~users}:u:U`` hash: user ``U``'s server-side channels, channel ->
                         the position its reading starts at (``EPOCH-SEQ``)
``tidings:{~users}:DB``  sharded pub/sub channel telling every node of each
                         change of a user's channels (JSON: ``u``, ``c``, ``s``)
=======================  ====================================================

``~users`` is not a channel name (``~`` is not allowed in one), so its keys
and pub/sub channel never meet a channel's. All users' hashes share its slot
in a Redis Cluster, so that one script changes a hash and tells the nodes:
changes of subscriptions are rare next to messages, and a hash is small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidings.core.cursor import Position
from tidings.core.message import Message


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    log: str
    meta: str
    notify: str

    @classmethod
    def of(cls, channel: str, db: int = 0) -> ChannelKeys:
        tag = f"tidings:{{{channel}}}"
        return cls(f"{tag}:log", f"{tag}:meta", f"{tag}:{db}")


#: The pseudo-channel whose hash tag every user's channel set shares (not a channel name).
USERS = "~users"


def user_channels_key(user: str) -> str:
    """The Redis hash of ``user``'s server-side channels."""
    return f"tidings:{{{USERS}}}:u:{user}"


def idempotency_record(channel: str, key: str) -> str:
    """The Redis key holding ``key``'s record on ``channel`` (with the channel's hash tag)."""
    return f"tidings:{{{channel}}}:once:{key}"


def channel_of(notify: str) -> str:
    """The channel name inside a pub/sub channel name from :meth:`ChannelKeys.of`."""
    return notify[notify.index("{") + 1 : notify.index("}")]


def notice_position(payload: bytes) -> Position:
    """Where the message of a pub/sub payload (``EPOCH-SEQ TIME DATA``) goes."""
    epoch, _, seq = payload[: payload.index(b" ")].decode().rpartition("-")
    if not epoch:
        raise ValueError("no epoch")
    return Position(epoch, int(seq))


def stored_message(channel: str, position: Position, data: bytes, time: bytes | int) -> Message:
    """The message Redis holds at ``position``: the one place this broker makes one.

    ``time`` is Unix ms as a script returns it (an integer) or as a stream
    entry or a pub/sub payload carries it (its digits, as bytes).
    """
    return Message(channel, position, data, int(time))


def decode_notice(channel: str, position: Position, payload: bytes) -> Message:
    """The message of a pub/sub payload from scripts.PUBLISH, at ``position``."""
    _head, clock, data = payload.split(b" ", 2)
    return stored_message(channel, position, data, clock)


def decode_entry(channel: str, epoch: str, item: list[Any]) -> Message:
    """A stream entry ``[b"SEQ-0", [b"t", TIME, b"d", DATA]]`` as a message."""
    entry_id, fields = item
    seq = int(entry_id.split(b"-", 1)[0])
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return stored_message(channel, Position(epoch, seq), values[b"d"], values[b"t"])
