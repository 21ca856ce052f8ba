"""The reader at a cursor: one subscription reading channel logs, without I/O.

Every technique reads the log the same way, and this object is that way. A
:class:`Reader` holds, for one subscription (one channel or many):

* the position of each channel the client has been *told* of: the cursor an
  SSE ``id:`` or a poll's ``next`` may claim, never past a gap or a message
  it has not been sent;
* which channels are *behind*: they still owe the client retained messages
  (a backlog), which are pulled from the log as the socket drains
  (:meth:`pull`), never copied into the connection's buffer all at once;
* what it owes the socket: each call returns or writes pre-encoded bytes.

Events come in as method calls: :meth:`deliver` and :meth:`skip` from the
fan-out (the reader is what the hub holds), :meth:`pull` when the socket has
room, :meth:`page` for a poll. Output goes to ``output.write``: the driver
gives itself (a stream, which holds the bytes until the end of the loop's
step and writes them to its socket joined; a parked long poll, whose first
output is its answer); a failure goes to the driver too (:meth:`fail`). The drivers in
``tidings.server`` own sockets, timers and tasks; this module imports none.

Race-free resume: a channel goes from behind to live inside :meth:`pull`,
in the same step as the read that found nothing more, and the reader is
subscribed to the hub before it is behind. A message published meanwhile is
in the log before the hub hands it over, so while behind the reader ignores
the hub and finds the message on its next pull; once live, it takes the
hub's. Each message is written once, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from tidings.core.cursor import Position, Start, format_multi
from tidings.core.log import BackRead, Gap, Read
from tidings.core.message import Message
from tidings.errors import UsageError
from tidings.session import slow
from tidings.session.batch import Batch, read_batch

#: Messages read from each log per step of a pull (bounds the work of one step).
PULL_PAGE = 100


class Log(Protocol):
    """Where a reader reads (a broker)."""

    def read(self, channel: str, start: Start, limit: int) -> Read:
        """Up to ``limit`` messages of ``channel`` after ``start`` (see ``ChannelLog.read``)."""
        ...

    def read_back(self, channel: str, before: Start, since: Start, limit: int) -> BackRead:
        """Newest first (see ``ChannelLog.read_back``); for the ``latest`` policy."""
        ...


class Encoder(Protocol):
    """The bytes of a technique (``tidings.wire``): one per message or gap."""

    @property
    def single(self) -> Callable[[Message], bytes]:
        """The bytes of a message whose id is the cursor: encoded once per message and
        cached in ``message.encoded[key]``, shared by every reader."""
        ...

    @property
    def key(self) -> str:
        """Where :attr:`single` caches its bytes in ``Message.encoded``."""
        ...

    def message(self, message: Message, cursor: str | None) -> bytes:
        """``cursor`` is the multi-channel cursor after ``message``, or ``None`` with one."""
        ...

    def gap(self, gap: Gap, cursor: str) -> bytes:
        """``cursor`` is where the reader stands after the gap."""
        ...


class Output(Protocol):
    """Where a reader's bytes go (a stream, or a parked request)."""

    def write(self, data: bytes) -> None:
        """Take ``data``; must not block (the hub's loop calls it)."""
        ...


class Owner(Protocol):
    """The driver of a reader, told when delivering to it failed, and of the gaps it wrote."""

    def fail(self, error: Exception) -> None:
        """End this reader's connection (the hub has already unsubscribed the reader)."""
        ...

    def sent_gap(self, gap: Gap) -> None:
        """The reader wrote ``gap`` to its output (for the server's metrics); must not raise."""
        ...


class Reader:
    """One subscription's place in its channels' logs; see the module docstring.

    ``multi`` readers claim a multi-channel cursor (``a=ID,b=ID``) in what
    they write; others let each message speak for itself (its id). Call
    :meth:`open` to add channels, then :meth:`pull` while :attr:`behind`,
    or :meth:`page` for a poll. Register the reader on the hub for the
    channels it reads (the driver does) so that :meth:`deliver` is called.
    """

    __slots__ = (
        "_at",
        "_behind",
        "_encoder",
        "_key",
        "_log",
        "_one",
        "_output",
        "_owner",
        "_positions",
        "_single",
        "multi",
        "sent",
    )

    def __init__(self, log: Log, encoder: Encoder,
                 output: Output | None = None, *, multi: bool = False,
                 owner: Owner | None = None) -> None:
        self._log = log
        self._encoder = encoder
        self._single = encoder.single
        self._key = encoder.key
        # The output, not its bound ``write``: one object less per idle connection.
        self._output = output or _NO_OUTPUT
        self._owner = owner
        self.multi = multi
        # Where the client stands in each channel (what it has been told of), in the
        # order the channels were opened. Most readers read one channel: that one is
        # kept in two slots (``_one`` at ``_at``), and a dict only for several, so an
        # idle connection holds no dict. A reader that is not ``multi`` records no
        # live message here: each carries its own id to the client, and a store per
        # reader per message would cost the fan-out (measured: about 7 %). Its
        # positions are where its backlog (or its last gap) left it.
        self._one: str | None = None
        self._at: Position | None = None
        self._positions: dict[str, Position] | None = None
        #: Channels that owe a backlog, pulled from the log, each with how: ``None``
        #: (every message) or a slow-reader mode (``skip``, ``latest``: session/slow.py);
        #: ``None`` rather than empty, to keep an idle connection small.
        self._behind: dict[str, str | None] | None = None
        #: Messages written to the output so far, for the server's metrics (read at scrape
        #: time, so a delivery costs one addition).
        self.sent = 0

    # positions -----------------------------------------------------------------

    def _table(self) -> dict[str, Position]:
        """The positions as a dict (a new one for a reader of one channel)."""
        if self._positions is not None:
            return self._positions
        if self._one is None or self._at is None:
            return {}
        return {self._one: self._at}

    def _keep(self, table: dict[str, Position]) -> None:
        """Make ``table`` the positions, in slots if it holds one channel."""
        if len(table) == 1:
            ((self._one, self._at),) = table.items()
            self._positions = None
        else:
            self._one = self._at = None
            self._positions = table or None

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    def encode_with(self, encoder: Encoder) -> None:
        """Write with ``encoder`` from now on (a WebSocket's first subscription with deltas)."""
        self._encoder = encoder
        self._single = encoder.single
        self._key = encoder.key

    # opening -----------------------------------------------------------------

    def open(self, starts: Mapping[str, Start], limit: int = 0, *,
             latest: bool = False) -> Batch:
        """Start reading ``starts``; return the first ``limit`` messages (for a poll).

        With ``limit=0`` (a stream) nothing is read yet: every channel is
        behind, and the backlog, gaps first, comes from :meth:`pull`; with
        ``latest`` (a WebSocket ``subscribe`` with ``"latest": true``) the
        backlog is only the newest message, after a ``latest`` gap. With a
        limit, the page returned counts as told: the caller must send it.
        Raises :class:`~tidings.errors.InvalidCursor` (and changes nothing) for
        a cursor ahead of its log.
        """
        batch = read_batch(self._log, starts, limit)
        if limit:
            self.opened(batch)
            return batch
        table = self._table()
        table.update(batch.begins)
        for gap in batch.gaps:
            table[gap.channel] = gap.start  # not told of the gap yet: claim no more
        self._keep(table)
        if self._behind is None:
            self._behind = {}
        self._behind.update(dict.fromkeys(starts, slow.LATEST if latest else None))
        return batch

    def opened(self, batch: Batch) -> None:
        """Go on after ``batch``, a page the caller read with :func:`read_batch` and sent:
        what :meth:`open` with a limit does, without reading the logs again (a long poll
        reads first and makes a reader only if it must wait)."""
        table = self._table()
        table.update(batch.positions)
        self._keep(table)

    def close(self, channel: str) -> None:
        """Stop reading ``channel``; the caller must unsubscribe it from the hub too."""
        table = self._table()
        table.pop(channel, None)
        self._keep(table)
        if self._behind is not None:
            self._behind.pop(channel, None)

    @property
    def channels(self) -> list[str]:
        """The channels read, in the order they were opened."""
        return list(self._table())

    def reads(self, channel: str) -> bool:
        positions = self._positions
        return channel == self._one or (positions is not None and channel in positions)

    def position(self, channel: str) -> Position:
        """The position of ``channel`` the client has been told of (for a reader that is
        not ``multi``: before its live messages, which carry their own ids)."""
        return self._table()[channel]

    # what the client may claim -----------------------------------------------

    def cursor(self) -> str:
        """Where the client stands: a message id (one channel) or a multi-channel cursor.

        Ask it before live messages are written (an opening, a poll's page, a
        long poll that expired): a reader that is not ``multi`` does not track
        those (see :meth:`position`).
        """
        if self.multi:
            return format_multi(self._table())
        (position,) = self._table().values()
        return str(position)

    def _after_gap(self, gap: Gap) -> str:
        """The cursor a gap's event claims: the whole cursor, or the gap's own end."""
        return format_multi(self._table()) if self.multi else str(gap.resume)

    @property
    def behind(self) -> bool:
        """Whether a backlog is owed: call :meth:`pull` when the socket has room."""
        return bool(self._behind)

    @property
    def all_behind(self) -> bool:
        """Whether every channel owes a backlog: nothing is written live (a lagging reader)."""
        behind = self._behind
        if not behind:
            return False
        return all(channel in behind for channel in self._table())

    # events ------------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        """A live message from the fan-out; written now, or later by :meth:`pull`.

        The hub calls it for every reader of the channel: keep it this short.
        """
        channel = message.channel
        behind = self._behind
        if behind is not None and channel in behind:
            return  # the next pull reads it from the log
        if not self.multi:  # the shared bytes, encoded by the first reader that needed them
            self.sent += 1  # before the write: a long poll's output answers at once
            self._output.write(message.encoded.get(self._key) or self._single(message))
            return
        if self._one is not None:  # one channel, in slots
            self._at = message.position
        else:
            self._table()[channel] = message.position
        self.sent += 1
        self._output.write(self._encoder.message(message, format_multi(self._table())))

    def skip(self, gap: Gap) -> None:
        """The log lost messages under live readers (a replica reset)."""
        channel = gap.channel
        if (self._behind and channel in self._behind) or not self.reads(channel):
            return  # the next pull finds the gap in the log itself
        table = self._table()
        table[channel] = gap.resume
        self._keep(table)
        if self._owner is not None:
            self._owner.sent_gap(gap)
        self._output.write(self._encoder.gap(gap, self._after_gap(gap)))

    def pull(self, budget: int) -> None:
        """Write retained messages owed, about ``budget`` bytes at most (at least one step).

        Channels whose backlog is done go live in the same step. The caller
        calls again when the socket has taken what was written, while
        :attr:`behind`.
        """
        encoder, behind, multi = self._encoder, self._behind, self.multi
        if behind is None:
            return
        positions = self._table()
        out: list[bytes] = []
        size = 0
        count = 0
        for channel, mode in list(behind.items()):
            if mode is not None:  # skip ahead, and go live in this same step
                size += self._skip_ahead(channel, mode, positions, out)
                del behind[channel]
        done = not behind
        while behind and size < budget and not done:
            batch = read_batch(self._log, {channel: positions[channel] for channel in behind},
                               PULL_PAGE)
            for gap in batch.gaps:
                positions[gap.channel] = gap.resume
                data = encoder.gap(gap, format_multi(positions) if multi else str(gap.resume))
                out.append(data)
                size += len(data)
                if self._owner is not None:
                    self._owner.sent_gap(gap)
            for message in batch.messages:
                if size >= budget:
                    break  # the rest is read again next time, from the positions written
                positions[message.channel] = message.position
                data = encoder.message(message, format_multi(positions) if multi else None)
                out.append(data)
                size += len(data)
                count += 1
            else:
                done = not batch.more
        self._keep(positions)
        if out:
            self.sent += count
            self._output.write(b"".join(out))
        if done:  # after the write: a driver asked to wait for the socket still sees a backlog
            self._behind = None

    def _skip_ahead(self, channel: str, mode: str, positions: dict[str, Position],
                    out: list[bytes]) -> int:
        """Write what ``mode`` (skip, latest) owes for ``channel``; return the bytes added."""
        gap, message, position = slow.catch_up(self._log, channel, positions[channel], mode)
        size = 0
        if gap is not None:
            positions[channel] = gap.resume
            data = self._encoder.gap(gap, format_multi(positions) if self.multi
                                     else str(gap.resume))
            out.append(data)
            size += len(data)
            if self._owner is not None:
                self._owner.sent_gap(gap)
        positions[channel] = position
        if message is not None:
            data = self._encoder.message(message, format_multi(positions) if self.multi else None)
            out.append(data)
            size += len(data)
            self.sent += 1
        return size

    def lag(self) -> bool:
        """The socket passed its output limit while live: skip ahead, or be cut off?

        ``False`` (always, for this class): the driver cuts the connection off,
        the ``disconnect`` policy. See :class:`TrackingReader`.
        """
        return False

    def fail(self, error: Exception) -> None:
        """The hub caught ``error`` from :meth:`deliver` or :meth:`skip`: tell the driver."""
        if self._owner is None:
            raise error
        self._owner.fail(error)

    def page(self, limit: int) -> Batch:
        """The next ``limit`` messages of a poll that follows on, counted as told."""
        table = self._table()
        batch = read_batch(self._log, table, limit)
        table.update(batch.positions)
        self._keep(table)
        return batch


class TrackingReader(Reader):
    """A reader with a slow-reader policy other than ``disconnect`` (session/slow.py).

    It records the position of every message it writes (a plain reader that
    is not ``multi`` does not, to keep the fan-out lean), so that when its
    socket passes the output limit it knows where the client stands: then
    :meth:`lag` stops writing live messages, and the next :meth:`pull` (when
    the socket has drained) writes per channel what its policy says: a
    ``skipped`` gap to the end of the log, or a ``latest`` gap and the newest
    message; channels whose policy is ``disconnect`` catch up on their whole
    backlog instead. ``policy(channel)`` names each channel's policy; with
    ``latest`` (``?latest=1``) every channel is ``latest``, its backlog and
    its poll pages too.
    """

    __slots__ = ("_latest", "_latest_for", "_policy")

    def __init__(self, log: Log, encoder: Encoder, output: Output | None = None, *,
                 multi: bool = False, owner: Owner | None = None,
                 policy: Callable[[str], str] | None = None, latest: bool = False) -> None:
        super().__init__(log, encoder, output, multi=multi, owner=owner)
        self._policy = policy
        self._latest = latest
        #: Channels opened with ``latest`` (a WebSocket ``subscribe`` that asked for it).
        self._latest_for: set[str] | None = None

    def mode(self, channel: str) -> str:
        """The slow-reader policy of ``channel`` for this reader."""
        if self._latest or (self._latest_for is not None and channel in self._latest_for):
            return slow.LATEST
        return self._policy(channel) if self._policy is not None else slow.DISCONNECT

    def close(self, channel: str) -> None:
        super().close(channel)
        if self._latest_for is not None:
            self._latest_for.discard(channel)

    def open(self, starts: Mapping[str, Start], limit: int = 0, *,
             latest: bool = False) -> Batch:
        if not self._latest:
            if latest:
                self._latest_for = (self._latest_for or set()) | set(starts)
            return super().open(starts, limit, latest=latest)
        if limit:  # a poll: the newest message of each channel
            batch = slow.latest_batch(self._log, starts)
            table = self._table()
            table.update(batch.positions)
            self._keep(table)
            return batch
        batch = super().open(starts)
        assert self._behind is not None
        for channel in starts:
            self._behind[channel] = slow.LATEST
        return batch

    def page(self, limit: int) -> Batch:
        if not self._latest:
            return super().page(limit)
        table = self._table()
        batch = slow.latest_batch(self._log, table)
        table.update(batch.positions)
        self._keep(table)
        return batch

    def deliver(self, message: Message) -> None:
        channel = message.channel
        behind = self._behind
        if behind is not None and channel in behind:
            return  # lagging or catching up: the next pull reads the log
        if self._one is not None:  # the position first: a write may make the reader lag
            self._at = message.position
        elif self._positions is not None:
            self._positions[channel] = message.position
        self.sent += 1
        if self.multi:
            self._output.write(self._encoder.message(message, format_multi(self._table())))
        else:
            self._output.write(message.encoded.get(self._key) or self._single(message))

    def lag(self) -> bool:
        """The socket passed its output limit while live: stop writing, skip ahead later.

        Returns ``False`` if every channel's policy is ``disconnect`` (the
        driver then cuts the connection off); else the reader is behind from
        now on, and the driver calls :meth:`pull` once the socket has drained.
        """
        modes = {channel: self.mode(channel) for channel in self._table()}
        if all(mode == slow.DISCONNECT for mode in modes.values()):
            return False
        self._behind = {channel: None if mode == slow.DISCONNECT else mode
                        for channel, mode in modes.items()}
        return True


def make_reader(log: Log, encoder: Encoder, output: Output | None = None, *,
                multi: bool = False, owner: Owner | None = None,
                policy: Callable[[str], str] | None = None, latest: bool = False) -> Reader:
    """A :class:`Reader`, or a :class:`TrackingReader` if a slow-reader policy applies.

    ``policy`` is ``None`` when every channel's policy is ``disconnect``.
    """
    if policy is None and not latest:
        return Reader(log, encoder, output, multi=multi, owner=owner)
    return TrackingReader(log, encoder, output, multi=multi, owner=owner, policy=policy,
                          latest=latest)


class _NoOutput:
    """The output of a poll's reader, which answers with :meth:`Reader.open` alone."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        raise UsageError("this reader has no output: a poll's reader answers with open() "
                         "and must not be registered on the hub")


_NO_OUTPUT = _NoOutput()
