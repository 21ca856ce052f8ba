"""One read of several channel logs from one cursor, merged in publication order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidings.core.cursor import Position, Start, format_multi
from tidings.core.log import Gap, Read
from tidings.core.message import Message, publication_order

if TYPE_CHECKING:
    from tidings.session.reader import Log


@dataclass(slots=True)
class Batch:
    """Messages of one or more channels after a cursor, merged in publication order."""

    messages: list[Message]
    begins: dict[str, Position]  #: where each channel's messages start (past any gap)
    positions: dict[str, Position]  #: where each channel continues after this batch
    gaps: list[Gap]
    more: bool

    def cursor(self, multi: bool) -> str:
        """The ``next`` cursor: a message id for one channel, else the multi-channel form."""
        if multi:
            return format_multi(self.positions)
        (position,) = self.positions.values()
        return str(position)


def read_batch(log: Log, starts: Mapping[str, Start], limit: int,
               found: Read | None = None) -> Batch:
    """Read up to ``limit`` messages in all, oldest first across channels; ``found``: the
    read of the one channel of ``starts``, made already by the caller."""
    if len(starts) == 1:  # most reads: nothing to merge
        ((channel, start),) = starts.items()
        return batch_of(channel, found or log.read(channel, start, limit))
    begins: dict[str, Position] = {}
    positions: dict[str, Position] = {}
    gaps: list[Gap] = []
    messages: list[Message] = []
    more = False
    for channel, start in starts.items():
        read = log.read(channel, start, limit)
        begins[channel] = read.after
        positions[channel] = read.next
        if read.gap is not None:
            gaps.append(read.gap)
        messages.extend(read.messages)
        more = more or read.more
    if len(starts) > 1 and messages:
        messages.sort(key=publication_order)
        if len(messages) > limit:
            more = True
            for dropped in messages[limit:]:
                current = positions[dropped.channel]
                if dropped.seq <= current.seq:
                    positions[dropped.channel] = Position(current.epoch, dropped.seq - 1)
            del messages[limit:]
    return Batch(messages, begins, positions, gaps, more)



def batch_of(channel: str, read: Read) -> Batch:
    """The batch of one channel's ``read``."""
    return Batch(read.messages, {channel: read.after}, {channel: read.next},
                 [] if read.gap is None else [read.gap], read.more)
