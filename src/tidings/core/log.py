"""A channel log: ordered messages, retention by count and age, reads from a cursor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tidings.core.cursor import END, ORIGIN, Position, Start, new_epoch
from tidings.core.message import Message
from tidings.errors import InvalidCursor


@dataclass(frozen=True, slots=True)
class Retention:
    """How much history a channel keeps: at most ``size`` messages, ``ttl`` seconds.

    ``idempotency_window`` is how long, in seconds, a publish's idempotency key
    is remembered (core/idempotency.py).
    """

    size: int = 1000
    ttl: float = 3600.0
    idempotency_window: float = 300.0


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages a reader asked for that the log no longer has.

    ``start`` is the cursor the reader gave, ``resume`` the position the read
    continues from, ``reason`` is ``"expired"`` (dropped by retention) or
    ``"epoch"`` (the log the cursor belongs to was lost), and ``missed`` the
    number of messages lost, when the log knows it.
    """

    channel: str
    start: Position
    resume: Position
    reason: str
    missed: int | None

    def to_json(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "from": str(self.start),
            "to": str(self.resume),
            "reason": self.reason,
            "missed": self.missed,
        }


@dataclass(slots=True)
class Read:
    """The answer to :meth:`ChannelLog.read`.

    ``after`` is the position the messages follow (past the gap, if any),
    ``next`` the cursor to continue from; ``more`` says the read stopped at
    its limit with more messages retained after ``next``. A value, shared (the read at
    the end of a log is, until its next message): never change one. Not frozen: one is
    built per read, and a frozen dataclass costs three times as much to build.
    """

    messages: list[Message]
    after: Position
    next: Position
    gap: Gap | None = None
    more: bool = False


@dataclass(frozen=True, slots=True)
class BackRead:
    """The answer to :meth:`ChannelLog.read_back`: a page of history, newest first.

    ``top`` is the position after the newest message the page could hold
    (the ``since`` of a forward read of what follows it); ``more`` says older
    messages are retained below the page (ask again with ``before`` set to
    the oldest message's id). ``gap`` names messages of the range asked for
    that the log no longer has, once the page reaches the bottom of it.
    """

    messages: list[Message]
    top: Position
    more: bool = False
    gap: Gap | None = None


class ChannelLog:
    """The ordered, bounded message log of one channel.

    Sequence numbers are contiguous within an epoch, so a cursor's distance to
    the oldest retained message is the exact number of messages missed.
    """

    __slots__ = ("_at_end", "_end", "_head", "_items", "_last_seq", "channel", "epoch",
                 "retention")

    def __init__(self, channel: str, retention: Retention, epoch: str | None = None,
                 last_seq: int = 0) -> None:
        """An empty log; ``epoch`` and ``last_seq`` continue a log whose messages all expired."""
        self.channel = channel
        self.retention = retention
        self.epoch = epoch or new_epoch()
        # Retained messages are _items[_head:]; trimming moves _head and
        # compacts now and then, so reads index in O(1).
        self._items: list[Message] = []
        self._head = 0
        self._last_seq = last_seq
        # The end as one shared object: every reader at the end holds this one.
        self._end = Position(self.epoch, last_seq)
        # The read at the end, shared by every reader that finds nothing new (until the
        # next message): the most frequent read, a poll's 304 and a long poll that parks.
        self._at_end: Read | None = None

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def end(self) -> Position:
        """The position after the newest message."""
        return self._end

    @property
    def first_seq(self) -> int:
        """The sequence number of the oldest retained message (``last + 1`` if none)."""
        return self._last_seq - len(self) + 1

    def still_at_end(self, read: Read) -> bool:
        """Whether ``read`` is the read this log shares at its end (:meth:`read`) and
        nothing was added since it was made: reading from where it was read would give
        ``read`` itself again."""
        return read is self._at_end

    def append(self, data: bytes, now_ms: int) -> Message:
        """Add a message (``data`` is compact JSON) and return it."""
        message = Message(self.channel, Position(self.epoch, self._last_seq + 1), data, now_ms)
        self.add(message)
        return message

    def add(self, message: Message) -> None:
        """Add a message numbered elsewhere (a replica of another log); it must come next."""
        if message.position != Position(self.epoch, self._last_seq + 1):
            raise ValueError(f"{message!r} does not follow {self.end} in {self.channel!r}")
        self._last_seq += 1
        self._end = message.position
        self._at_end = None
        self._items.append(message)
        if len(self) > self.retention.size:
            self._drop(len(self) - self.retention.size)

    def expires_at(self) -> int | None:
        """When :meth:`trim` will drop the oldest message (clock ms); ``None`` if empty.

        Nothing in the log expires before then, so a caller keeping many logs
        need not trim this one earlier; after appending to an empty log, or
        after a trim, ask again.
        """
        if self._head == len(self._items):
            return None
        return self._items[self._head].time + int(self.retention.ttl * 1000)

    def trim(self, now_ms: int) -> int:
        """Drop messages older than the TTL; return how many were dropped."""
        cutoff = now_ms - int(self.retention.ttl * 1000)
        items, head, count = self._items, self._head, 0
        while head + count < len(items) and items[head + count].time <= cutoff:
            count += 1
        if count:
            self._drop(count)
        return count

    def _drop(self, count: int) -> None:
        self._head += count
        if self._head > 64 and self._head * 2 > len(self._items):
            del self._items[: self._head]
            self._head = 0

    def read(self, start: Start, limit: int) -> Read:
        """Read up to ``limit`` messages after ``start``.

        Raises :class:`InvalidCursor` for a position ahead of this epoch's end.
        """
        if start is END or (isinstance(start, Position) and start.seq == self._last_seq
                            and start.epoch == self.epoch):
            at_end = self._at_end
            if at_end is None:
                at_end = self._at_end = Read([], self._end, self._end)
            return at_end
        first = self.first_seq
        gap: Gap | None = None
        if start is ORIGIN:
            after = first - 1
        else:
            assert isinstance(start, Position)
            if start.epoch != self.epoch:
                after = first - 1
                gap = Gap(self.channel, start, Position(self.epoch, after), "epoch", None)
            elif start.seq > self._last_seq:
                raise InvalidCursor(
                    f"cursor {start} is ahead of the end of channel {self.channel!r} "
                    f"({self.end}); it does not belong to this log"
                )
            elif start.seq < first - 1:
                after = first - 1
                missed = after - start.seq
                gap = Gap(self.channel, start, Position(self.epoch, after), "expired", missed)
            else:
                after = start.seq
        index = self._head + (after - first + 1)
        messages = self._items[index : index + limit]
        more = index + limit < len(self._items)
        begin = self._end if after == self._last_seq else Position(self.epoch, after)
        return Read(messages, begin, messages[-1].position if messages else begin, gap, more)

    def read_back(self, before: Start, since: Start, limit: int) -> BackRead:
        """Read up to ``limit`` messages older than ``before``, newest first.

        ``before`` is a message id (exclusive) or :data:`END` (from the newest
        message); ``since`` is the exclusive lower bound: :data:`ORIGIN` (the
        oldest retained message, no gap) or a position, as a forward read's
        cursor (with the same gap if it is older than what is retained, or of
        another epoch). A ``before`` of another epoch belongs to a lost log:
        the answer is empty with an ``epoch`` gap up to this log's end. Raises
        :class:`InvalidCursor` for a position ahead of this epoch's end.
        """
        last, first = self._last_seq, self.first_seq
        if before is END or before is ORIGIN:
            top_seq = last
        else:
            assert isinstance(before, Position)
            if before.epoch != self.epoch:
                return BackRead([], self._end, False,
                                Gap(self.channel, before, self._end, "epoch", None))
            self._check_not_ahead(before)
            top_seq = before.seq - 1
        top = self._end if top_seq == last else Position(self.epoch, top_seq)
        low = first - 1  # the page holds sequence numbers low + 1 .. top_seq
        gap: Gap | None = None
        if isinstance(since, Position):
            if since.epoch != self.epoch:
                gap = Gap(self.channel, since, Position(self.epoch, low), "epoch", None)
            else:
                self._check_not_ahead(since)
                if since.seq >= top_seq:
                    return BackRead([], top)
                if since.seq < low:
                    gap = Gap(self.channel, since, Position(self.epoch, low), "expired",
                              low - since.seq)
                else:
                    low = since.seq
        if top_seq <= low:
            return BackRead([], top, False, gap)
        bottom = max(low + 1, top_seq - limit + 1)
        base = self._head - first
        messages = self._items[base + bottom : base + top_seq + 1]
        messages.reverse()
        more = bottom > low + 1
        return BackRead(messages, top, more, None if more else gap)

    def _check_not_ahead(self, position: Position) -> None:
        if position.seq > self._last_seq:
            raise InvalidCursor(
                f"cursor {position} is ahead of the end of channel {self.channel!r} "
                f"({self.end}); it does not belong to this log"
            )

    def select(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """Retained messages matching ``predicate`` (for tests and tools)."""
        return [m for m in self._items[self._head :] if predicate(m)]
