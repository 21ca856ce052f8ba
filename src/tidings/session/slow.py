"""What a reader does when it falls behind a channel: the ``slow_reader`` policies.

No I/O. A reader whose socket passes its output limit has fallen behind. Per
channel (``[namespaces.X] slow_reader``, default ``[server] slow_reader``):

* ``disconnect``: it is cut off, as always; the client resumes from its cursor;
* ``skip``: it stops writing that channel's messages, and when the socket has
  drained it writes one gap (``"reason": "skipped"``) up to the end of the log,
  and goes on live from there;
* ``latest``: the same, but it writes the channel's newest message after the
  gap (``"reason": "latest"``, counting the messages in between): prices,
  positions, anything whose last value is all that matters (conflation).

A reader that asks (``?latest=1``) reads every channel ``latest`` from the
start too: its backlog is the newest message of each channel after its
cursor, the others counted in a gap. Nothing is skipped silently: every
message skipped is counted in a gap the client receives, whose ``to`` is the
position it continues from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from tidings.core.cursor import END, ORIGIN, Position, Start
from tidings.core.log import BackRead, Gap, Read
from tidings.core.message import Message, publication_order
from tidings.session.batch import Batch

DISCONNECT: Final = "disconnect"
SKIP: Final = "skip"
LATEST: Final = "latest"
#: The values of the ``slow_reader`` setting.
SLOW_READER_POLICIES: Final = (DISCONNECT, SKIP, LATEST)
#: The ``reason`` of the gap each policy writes.
GAP_REASONS: Final = {SKIP: "skipped", LATEST: "latest"}


class Log(Protocol):
    """What the policies read (a broker)."""

    def read(self, channel: str, start: Start, limit: int) -> Read: ...

    def read_back(self, channel: str, before: Start, since: Start, limit: int) -> BackRead: ...


def catch_up(log: Log, channel: str, start: Start, mode: str
             ) -> tuple[Gap | None, Message | None, Position]:
    """What a reader at ``start`` writes to skip ahead in ``channel`` (``mode`` skip or latest).

    Returns the gap to write (or ``None``), the message to write after it
    (``latest`` only; ``None`` if nothing follows ``start``) and the position
    the reader stands on afterwards. Raises ``InvalidCursor`` for a cursor
    ahead of the log, as a read does.
    """
    if start is END:
        return None, None, log.read(channel, END, 0).next
    if mode == LATEST:
        newest = log.read_back(channel, END, start, 1)
        if not newest.messages:
            # Nothing after start: only what a read from it says (an expired or epoch gap).
            return newest.gap, None, newest.top
        message = newest.messages[0]
        before = Position(message.position.epoch, message.seq - 1)
        return _skipped(channel, start, before, GAP_REASONS[LATEST]), message, message.position
    end = log.read(channel, END, 0).next
    return _skipped(channel, start, end, GAP_REASONS[SKIP]), None, end


def _skipped(channel: str, start: Start, to: Position, reason: str) -> Gap | None:
    """The gap from ``start`` up to ``to`` (``None`` if there is nothing in between).

    From :data:`ORIGIN` or :data:`END` there is no gap, as for any read from
    them; from a position of another epoch the gap's reason is ``epoch``.
    """
    if start is ORIGIN or start is END or not isinstance(start, Position):
        return None
    if start.epoch != to.epoch:
        return Gap(channel, start, to, "epoch", None)
    if to.seq <= start.seq:
        return None
    return Gap(channel, start, to, reason, to.seq - start.seq)


def latest_batch(log: Log, starts: Mapping[str, Start]) -> Batch:
    """A poll's page with ``?latest=1``: the newest message of each channel after its start.

    The messages skipped on the way are counted in a ``latest`` gap per
    channel; the page never has ``more``.
    """
    begins: dict[str, Position] = {}
    positions: dict[str, Position] = {}
    gaps: list[Gap] = []
    messages: list[Message] = []
    for channel, start in starts.items():
        gap, message, position = catch_up(log, channel, start, LATEST)
        if gap is not None:
            gaps.append(gap)
        if message is not None:
            messages.append(message)
            begins[channel] = Position(position.epoch, position.seq - 1)
        else:
            begins[channel] = position
        positions[channel] = position
    messages.sort(key=publication_order)
    return Batch(messages, begins, positions, gaps, False)
