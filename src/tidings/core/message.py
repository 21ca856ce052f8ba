"""A published message, as the core keeps it."""

from __future__ import annotations

from itertools import count

from tidings.core.cursor import Position

#: This process's arrival counter: each message made here takes the next number.
_arrivals = count()


class Message:
    """One message of a channel log.

    ``data`` is the published JSON value, already validated and compactly
    encoded; ``json`` is the message object every technique sends
    (``{"channel", "id", "data", "time"}``), built once here.

    :attr:`encoded` is a cache owned by :mod:`tidings.wire`, which names its
    keys: each wire format is encoded at most once per message, then shared by
    every connection that wants it.
    """

    __slots__ = ("arrival", "channel", "data", "encoded", "id", "json", "position", "time")

    def __init__(self, channel: str, position: Position, data: bytes, time: int) -> None:
        self.channel = channel
        self.position = position
        self.id = str(position)
        self.data = data
        #: Unix time of publication in milliseconds.
        self.time = time
        #: When this process got it, against every other message: orders messages of
        #: several channels published within one millisecond (:func:`publication_order`).
        self.arrival = next(_arrivals)
        # Channel names and ids never need JSON escaping (see core.names, core.cursor).
        self.json = b'{"channel":"%s","id":"%s","data":%s,"time":%d}' % (
            channel.encode(),
            self.id.encode(),
            data,
            time,
        )
        self.encoded: dict[str, bytes] = {}

    @property
    def seq(self) -> int:
        return self.position.seq

    def __repr__(self) -> str:
        return f"<Message {self.channel} {self.id}>"


def publication_order(message: Message) -> tuple[int, int]:
    """The sort key of messages of several channels: oldest first, and within one
    millisecond in the order this process got them (the order live readers are sent them)."""
    return message.time, message.arrival
