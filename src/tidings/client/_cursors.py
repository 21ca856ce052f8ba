"""The client's resume rules, without I/O: one cursor book per subscription.

The book keeps, per channel, the id of the last message handed to the user.
Every technique feeds what it reads through the book, which

* drops duplicates (same epoch, ``seq`` not after the last one) — they come
  back when a connection is resumed or a technique is switched;
* refuses a message that does not follow the last one (a hole, or another
  epoch without a gap signal) with :class:`OutOfOrder`: the caller must
  reconnect from :meth:`CursorBook.since`, and the server fills the hole or
  says why it cannot (a gap);
* turns gap signals into :class:`~tidings.client.events.Gap` events and moves
  past them;
* answers the ``since`` to resume from, for one channel (a message id) or
  several (``a=ID,b=ID``), understood by every technique.

Until a channel's first message, its position is the one the server said the
read starts at (:meth:`CursorBook.learn`), so a subscription that started "at
the end" and lost its connection before any message resumes where it started,
not at the new end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tidings.client.events import Gap, Message
from tidings.core.cursor import ORIGIN, Position, Start, parse_multi, parse_position, parse_since
from tidings.core.names import check_channel
from tidings.errors import TidingsError, UsageError


class OutOfOrder(Exception):
    """A message does not follow the last one delivered: resume from :meth:`CursorBook.since`."""


class BrokenStream(Exception):
    """The server sent something the protocol does not allow; reconnect."""


class CursorBook:
    """Per-channel positions of one subscription.

    ``since`` is what the user asked for (``None``: from the end, ``"0"``: from
    the oldest retained message, a message id for one channel, or a
    multi-channel cursor); it is checked here and raises :class:`UsageError`.
    """

    def __init__(self, channels: Sequence[str], since: str | None = None) -> None:
        if not channels:
            raise UsageError("subscribe to at least one channel")
        if len(set(channels)) != len(channels):
            raise UsageError(f"a channel is named twice in {list(channels)}")
        try:
            for channel in channels:
                check_channel(channel)
            starts: dict[str, Start] = parse_since(since, list(channels))
        except TidingsError as exc:
            raise UsageError(str(exc)) from None
        self.channels: tuple[str, ...] = tuple(channels)
        self._positions: dict[str, Position | None] = {
            channel: start if isinstance(start, Position) else None
            for channel, start in starts.items()
        }
        self._from_origin = {channel for channel, start in starts.items() if start is ORIGIN}
        # Where each channel started, and the last position handed to the user:
        # the user's cursor must not run ahead of what the user has taken.
        self._starts: dict[str, Position | None] = dict(self._positions)
        self._handed: dict[str, Position] = {}

    # where to resume ---------------------------------------------------------

    def since_of(self, channel: str) -> str | None:
        """The ``since`` of one channel: its last id, ``"0"``, or ``None`` (the end)."""
        return self._since_of(channel, self._positions[channel])

    def _since_of(self, channel: str, position: Position | None) -> str | None:
        if position is not None:
            return str(position)
        return "0" if channel in self._from_origin else None

    def since(self) -> str | None:
        """The ``since`` of the whole subscription, for any technique.

        One channel: :meth:`since_of`. Several: a multi-channel cursor naming
        each channel with a known position (or ``0``); ``None`` if none has one.
        This is where reading resumes after a reconnect: past what was
        received, even if the user has not taken it yet.
        """
        return self._join({c: self._positions[c] for c in self.channels})

    def handed_since(self) -> str | None:
        """Like :meth:`since`, but only past what was :meth:`hand`-ed to the user."""
        return self._join({c: self._handed.get(c, self._starts[c]) for c in self.channels})

    def _join(self, positions: dict[str, Position | None]) -> str | None:
        if len(self.channels) == 1:
            (channel,) = self.channels
            return self._since_of(channel, positions[channel])
        parts = []
        for channel in self.channels:
            since = self._since_of(channel, positions[channel])
            if since is not None:
                parts.append(f"{channel}={since}")
        return ",".join(parts) or None

    def hand(self, item: Message | Gap) -> None:
        """``item`` reached the user: :meth:`handed_since` moves past it."""
        self._handed[item.channel] = _position(item.id if isinstance(item, Message) else item.to)

    @property
    def positions(self) -> dict[str, str]:
        """The last id (or starting position) of each channel that has one."""
        return {channel: str(p) for channel, p in self._positions.items() if p is not None}

    # what the server says ----------------------------------------------------

    def learn(self, channel: str, position: str) -> None:
        """The server says reading ``channel`` starts after ``position``.

        Kept only while the channel has no position of its own: a known
        position is never moved by a starting point, only by messages and gaps.
        """
        if channel in self._positions and self._positions[channel] is None:
            self._positions[channel] = self._starts[channel] = _position(position)
            self._from_origin.discard(channel)

    def learn_cursor(self, cursor: str) -> None:
        """Like :meth:`learn` for a ``next`` cursor or an SSE ``id:`` of this subscription."""
        if "=" not in cursor:
            if len(self.channels) == 1:
                self.learn(self.channels[0], cursor)
            return
        try:
            named = parse_multi(cursor)
        except TidingsError as exc:
            raise BrokenStream(f"malformed cursor from the server: {exc}") from None
        for channel, start in named.items():
            if isinstance(start, Position):
                self.learn(channel, str(start))

    def accept_message(self, value: Mapping[str, Any]) -> Message | None:
        """The :class:`Message` to deliver for a message object, or ``None`` for a duplicate.

        Raises :class:`OutOfOrder` if it does not follow the last one, and
        :class:`BrokenStream` if it is not a message object of this subscription.
        """
        try:
            channel, id, data, time = value["channel"], value["id"], value["data"], value["time"]
        except (KeyError, TypeError):
            raise BrokenStream(f"not a message object: {str(value)[:100]}") from None
        if channel not in self._positions or not isinstance(time, int):
            raise BrokenStream(f"unexpected message object: {str(value)[:100]}")
        position = _position(id)
        last = self._positions[channel]
        if last is not None:
            if position.epoch != last.epoch:
                raise OutOfOrder(f"{channel}: {id} is from another epoch than {last}, no gap")
            if position.seq <= last.seq:
                return None
            if position.seq != last.seq + 1:
                raise OutOfOrder(f"{channel}: {id} does not follow {last}")
        self._positions[channel] = position
        self._from_origin.discard(channel)
        return Message(channel, id, data, time)

    def accept_gap(self, value: Mapping[str, Any]) -> Gap | None:
        """The :class:`Gap` to deliver for a gap object; ``None`` if reading is already past it."""
        try:
            channel, start, to = value["channel"], value["from"], value["to"]
            reason, missed = value["reason"], value.get("missed")
        except (KeyError, TypeError):
            raise BrokenStream(f"not a gap object: {str(value)[:100]}") from None
        if channel not in self._positions or not isinstance(start, str):
            raise BrokenStream(f"unexpected gap object: {str(value)[:100]}")
        resume = _position(to)
        last = self._positions[channel]
        if last is not None and last.epoch == resume.epoch and resume.seq <= last.seq:
            return None
        self._positions[channel] = resume
        self._from_origin.discard(channel)
        return Gap(channel, start, to, str(reason), missed if isinstance(missed, int) else None)


def _position(text: object) -> Position:
    if not isinstance(text, str):
        raise BrokenStream(f"an id must be a string, not {text!r}")
    try:
        return parse_position(text)
    except TidingsError as exc:
        raise BrokenStream(f"malformed id from the server: {exc}") from None


class ServerSideBook(CursorBook):
    """The positions of a read of the user's channels: the server names the channels.

    It starts with the channels of ``since`` (a multi-channel cursor kept from
    before, or ``None``); :meth:`add` and :meth:`remove` follow what the server
    announces. Its cursors always name their channels (``a=ID``), even one.
    """

    def __init__(self, since: str | None = None) -> None:
        starts: dict[str, Start] = {}
        if since is not None:
            if "=" not in since:
                raise UsageError(f"since must be a multi-channel cursor a=ID,b=ID, not {since!r}")
            try:
                starts = parse_multi(since)
            except TidingsError as exc:
                raise UsageError(str(exc)) from None
        self.channels = tuple(starts)
        self._positions = {channel: start if isinstance(start, Position) else None
                           for channel, start in starts.items()}
        self._from_origin = {channel for channel, start in starts.items() if start is ORIGIN}
        self._starts = dict(self._positions)
        self._handed = {}
        #: The server named the set once: from then on an empty set is the cursor "".
        self.heard = since is not None

    def add(self, channel: str, position: str | None) -> bool:
        """The server reads ``channel`` after ``position`` (``None``: from its first message
        to come). True if it is new to the book; a known channel only learns ``position``."""
        self.heard = True
        if channel in self._positions:
            if position is not None:
                self.learn(channel, position)
            return False
        try:
            check_channel(channel)
        except TidingsError as exc:
            raise BrokenStream(f"the server announced a bad channel: {exc}") from None
        start = None if position is None else _position(position)
        self.channels = (*self.channels, channel)
        self._positions[channel] = self._starts[channel] = start
        return True

    def remove(self, channel: str) -> bool:
        """The server no longer reads ``channel``: forget it. True if it was in the book."""
        if channel not in self._positions:
            return False
        self.channels = tuple(c for c in self.channels if c != channel)
        for table in (self._positions, self._starts, self._handed):
            table.pop(channel, None)
        self._from_origin.discard(channel)
        return True

    def _join(self, positions: dict[str, Position | None]) -> str | None:
        parts = [f"{channel}={since}" for channel in self.channels
                 if (since := self._since_of(channel, positions.get(channel))) is not None]
        # "": a cursor naming no channel. The server then reads a channel added meanwhile
        # from where it was added, where no cursor at all would read it from its end.
        return ",".join(parts) or ("" if self.heard else None)

    def learn_cursor(self, cursor: str) -> None:
        if "=" in cursor:
            super().learn_cursor(cursor)
