"""Presence without I/O: who is reading each channel, whatever the technique.

A *member* is one client id on one channel. It is present while it
**holds** the channel (an open WebSocket or SSE stream, a parked long poll:
counted, since one client id may hold a channel more than once) or while its
**lease** runs (a poller between two requests: each request renews it for the
channel's ``presence_timeout``). When both are gone, it leaves.

:class:`Presence` is driven by method calls with explicit clock values
(``now``: a monotonic time in seconds, ``wall_ms``: Unix milliseconds for a
member's ``since``); the server's drivers call :meth:`Presence.hold`,
:meth:`Presence.release` and :meth:`Presence.touch`, and its sweep calls
:meth:`Presence.expire` about once a second. Leases wait in one heap with at
most one entry per member, so expiry costs nothing per idle member and
``O(log n)`` per member that leaves.

Joins and leaves are recorded only for channels someone *watches*
(:meth:`Presence.watch`), and coalesced until :meth:`Presence.drain`: a
member that joins and leaves between two drains is never reported, one that
leaves and comes back unchanged neither. So a storm costs one event per
member whose state really changed, and nothing at all on channels nobody
watches. Nothing here is touched when a message is delivered.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from tidings.core.cursor import Position, new_epoch
from tidings.errors import BadRequest

#: The longest client id a client may choose (``?client=``), in characters.
MAX_CLIENT_ID_LENGTH = 64
#: The characters of a client id: URL-safe, so that it needs no escaping anywhere.
CLIENT_ID_ALPHABET = "A-Z a-z 0-9 _ -"
_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_CLIENT_ID_LENGTH)

#: The default of the ``presence_timeout`` setting, in seconds.
DEFAULT_PRESENCE_TIMEOUT = 30.0
#: The longest ``presence_timeout`` accepted, in seconds (a day).
MAX_PRESENCE_TIMEOUT = 86400.0
#: Joins and leaves a channel's :class:`PresenceLog` keeps for pollers (besides keeping
#: them at most ``presence_timeout`` seconds); one who missed more gets the member list.
PRESENCE_EVENTS_KEPT = 1000

Technique = Literal["websocket", "sse", "longpoll", "poll"]


class InvalidClientId(BadRequest):
    code = "invalid_client"


def check_client_id(text: str) -> str:
    """Return ``text`` if it is a valid client id, else raise :class:`InvalidClientId` (400)."""
    if _CLIENT_ID_RE.fullmatch(text) is None:
        raise InvalidClientId(
            f"client must be 1 to {MAX_CLIENT_ID_LENGTH} characters of {CLIENT_ID_ALPHABET}")
    return text


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """Whether a channel has presence, and how long a poller stays after its last request
    (and, across nodes, how long a dead node's members outlive it)."""

    enabled: bool = False
    timeout: float = DEFAULT_PRESENCE_TIMEOUT


@dataclass(slots=True)
class Identity:
    """Who a reader is: its ``client`` id, and the ``user`` and ``info`` of its token
    (``None`` for an anonymous reader). A value: never change one.

    Not a frozen dataclass, unlike the other values here: a read that does not name its
    client gets a new one, and a frozen dataclass costs three times as much to build
    (``object.__setattr__`` per field, about 5,000 instructions: 8 % of a poll's).
    """

    client: str
    user: str | None = None
    info: object = None


@dataclass(frozen=True, slots=True)
class Member:
    """One client on one channel, as ``GET /channels/{channel}/presence`` lists it."""

    client: str
    user: str | None
    info: object
    technique: str
    since: int  #: Unix milliseconds when it joined

    def to_json(self) -> dict[str, object]:
        return {"client": self.client, "user": self.user, "info": self.info,
                "technique": self.technique, "since": self.since}


@dataclass(frozen=True, slots=True)
class Join:
    channel: str
    member: Member
    kind = "join"

    def to_json(self) -> dict[str, object]:
        return {"type": "join", "channel": self.channel, **self.member.to_json()}


@dataclass(frozen=True, slots=True)
class Leave:
    channel: str
    member: Member
    kind = "leave"

    def to_json(self) -> dict[str, object]:
        return {"type": "leave", "channel": self.channel, **self.member.to_json()}


Change = Join | Leave


class _Entry:
    __slots__ = ("holds", "lease", "member", "scheduled")

    def __init__(self, member: Member) -> None:
        self.member = member
        self.holds = 0
        self.lease = 0.0  #: monotonic time until which it stays without a hold
        self.scheduled = False  #: whether the lease heap has an entry for it


class _Channel:
    __slots__ = ("entries", "users")

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.users: Counter[str] = Counter()  #: members per non-null user


class Presence:
    """The members of every channel on this node; see the module docstring."""

    __slots__ = ("_channels", "_leases", "_pending", "_record_all", "_watched", "changes")

    def __init__(self, *, record_all: bool = False) -> None:
        self._channels: dict[str, _Channel] = {}
        #: Record the joins and leaves of every channel, watched or not (a node that
        #: shares its members with other nodes sends them all).
        self._record_all = record_all
        self._leases: list[tuple[float, str, str]] = []
        self._watched: Counter[str] = Counter()
        #: channel -> client -> (member before the first change since the last drain, now)
        self._pending: dict[str, dict[str, tuple[Member | None, Member | None]]] = {}
        #: Joins and leaves applied since the start (both kinds, uncoalesced).
        self.changes = 0

    # what the drivers tell it -----------------------------------------------

    def hold(self, channel: str, identity: Identity, technique: str, wall_ms: int) -> bool:
        """A reader holds ``channel`` (a stream, a parked long poll); say whether it joined.

        Call :meth:`release` exactly once for each hold.
        """
        entry, joined = self._entry(channel, identity, technique, wall_ms)
        entry.holds += 1
        return joined

    def release(self, channel: str, client: str, now: float, linger: float = 0.0) -> bool:
        """A hold ended; the member stays ``linger`` more seconds (a long poller between
        requests). Say whether it left."""
        members = self._channels.get(channel)
        entry = members.entries.get(client) if members is not None else None
        if entry is None or entry.holds <= 0:
            return False
        entry.holds -= 1
        if linger > 0:
            self._lease(channel, client, entry, now + linger)
        if entry.holds == 0 and entry.lease <= now:
            self._remove(channel, client)
            return True
        return False

    def touch(self, channel: str, identity: Identity, technique: str, now: float,
              timeout: float, wall_ms: int) -> bool:
        """A poller read ``channel``: it stays ``timeout`` seconds more. Say whether it joined."""
        entry, joined = self._entry(channel, identity, technique, wall_ms)
        self._lease(channel, identity.client, entry, now + timeout)
        return joined

    def expire(self, now: float) -> int:
        """Remove the members whose lease ran out with no hold; return how many left."""
        leases, left = self._leases, 0
        while leases and leases[0][0] <= now:
            _due, channel, client = heapq.heappop(leases)
            members = self._channels.get(channel)
            entry = members.entries.get(client) if members is not None else None
            if entry is None:
                continue
            entry.scheduled = False
            if entry.lease > now:  # renewed meanwhile: wait for the new end
                entry.scheduled = True
                heapq.heappush(leases, (entry.lease, channel, client))
            elif entry.holds == 0:
                self._remove(channel, client)
                left += 1
        return left

    def put(self, channel: str, member: Member) -> bool:
        """A member known from elsewhere (another node's, in a shared store): present until
        :meth:`drop`, with no hold or lease. Say whether anything changed."""
        members = self._channels.get(channel)
        entry = members.entries.get(member.client) if members is not None else None
        if entry is not None:
            if entry.member == member:
                return False
            self._remove(channel, member.client)
        identity = Identity(member.client, member.user, member.info)
        self._entry(channel, identity, member.technique, member.since)
        return True

    def drop(self, channel: str, client: str) -> bool:
        """A member :meth:`put` here left; say whether it was here."""
        members = self._channels.get(channel)
        if members is None or client not in members.entries:
            return False
        self._remove(channel, client)
        return True

    def forget(self, channel: str) -> None:
        """Drop every member of ``channel`` without recording leaves (a copy given up)."""
        self._channels.pop(channel, None)
        pending = self._pending.get(channel)
        if pending is not None:
            pending.clear()

    # who is here --------------------------------------------------------------

    def members(self, channel: str) -> Iterator[Member]:
        """The members of ``channel``, oldest first."""
        members = self._channels.get(channel)
        if members is not None:
            for entry in members.entries.values():
                yield entry.member

    def count(self, channel: str) -> tuple[int, int]:
        """How many members ``channel`` has, and how many distinct non-null users."""
        members = self._channels.get(channel)
        if members is None:
            return 0, 0
        return len(members.entries), len(members.users)

    def has(self, channel: str, client: str) -> bool:
        members = self._channels.get(channel)
        return members is not None and client in members.entries

    def channels(self) -> int:
        """How many channels have at least one member."""
        return len(self._channels)

    def sizes(self) -> Iterator[tuple[str, int]]:
        """Each channel that has members, and how many (metrics read them at scrape time)."""
        for channel, members in self._channels.items():
            yield channel, len(members.entries)
    def names(self) -> list[str]:
        """The channels that have at least one member."""
        return list(self._channels)

    # joins and leaves -----------------------------------------------------------

    def watch(self, channel: str) -> None:
        """Someone wants the joins and leaves of ``channel``: record them until drained.

        Call :meth:`unwatch` once for each call.
        """
        self._watched[channel] += 1

    def unwatch(self, channel: str) -> None:
        self._watched[channel] -= 1
        if self._watched[channel] <= 0:
            del self._watched[channel]
            if not self._record_all:
                self._pending.pop(channel, None)

    def drain(self) -> list[Change]:
        """The joins and leaves of watched channels since the last drain, coalesced.

        Per member, only the difference between then and now: a join and a
        leave in between cancel out; a member that changed (another
        technique) is a leave and a join.
        """
        changes: list[Change] = []
        for channel, pending in self._pending.items():
            for before, after in pending.values():
                if before is not None and after is not None and _same_person(before, after):
                    continue  # left and came back as it was (or nothing changed)
                if before is not None:
                    changes.append(Leave(channel, before))
                if after is not None:
                    changes.append(Join(channel, after))
        self._pending.clear()
        return changes

    # inside ---------------------------------------------------------------------

    def _entry(self, channel: str, identity: Identity, technique: str,
               wall_ms: int) -> tuple[_Entry, bool]:
        members = self._channels.get(channel)
        if members is None:
            members = self._channels[channel] = _Channel()
        entry = members.entries.get(identity.client)
        if entry is not None:
            return entry, False
        member = Member(identity.client, identity.user, identity.info, technique, wall_ms)
        entry = members.entries[identity.client] = _Entry(member)
        if identity.user is not None:
            members.users[identity.user] += 1
        self.changes += 1
        if self._record_all or channel in self._watched:
            self._note(channel, identity.client, None, member)
        return entry, True

    def _lease(self, channel: str, client: str, entry: _Entry, until: float) -> None:
        if until > entry.lease:
            entry.lease = until
        if not entry.scheduled:
            entry.scheduled = True
            heapq.heappush(self._leases, (entry.lease, channel, client))

    def _remove(self, channel: str, client: str) -> None:
        members = self._channels[channel]
        entry = members.entries.pop(client)
        user = entry.member.user
        if user is not None:
            members.users[user] -= 1
            if members.users[user] <= 0:
                del members.users[user]
        if not members.entries:
            del self._channels[channel]
        self.changes += 1
        if self._record_all or channel in self._watched:
            self._note(channel, client, entry.member, None)

    def _note(self, channel: str, client: str, old: Member | None, new: Member | None) -> None:
        pending = self._pending.setdefault(channel, {})
        first = pending.get(client)
        pending[client] = (old if first is None else first[0], new)


def _same_person(before: Member, after: Member) -> bool:
    """Whether a member that left and came back between two drains looks the same."""
    return (before.user, before.info, before.technique) == (after.user, after.info,
                                                            after.technique)


@dataclass(frozen=True, slots=True)
class Logged:
    """A join or leave in a :class:`PresenceLog`: its number, and the channel's last message
    when it happened (``after``: ``None`` if the channel had none), which orders it among
    the messages of a poll answer."""

    seq: int
    change: Change
    after: Position | None
    time: float


class PresenceLog:
    """The joins and leaves of one channel, numbered ``EPOCH-SEQ`` like a message log, so
    that a poller reads them from a cursor of its own (``presence_since``).

    The epoch is drawn when the log is made (a server's restart makes a new
    one): a cursor of another epoch, or older than what is kept, cannot say
    what was missed, and :meth:`read` says so (``None``): the reader gets the
    member list instead. Call :meth:`trim` about once a second.
    """

    __slots__ = ("_entries", "epoch", "seq")

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self.seq = 0
        self._entries: deque[Logged] = deque(maxlen=PRESENCE_EVENTS_KEPT)

    def __len__(self) -> int:
        return len(self._entries)

    def cursor(self, seq: int | None = None) -> Position:
        return Position(self.epoch, self.seq if seq is None else seq)

    def append(self, change: Change, after: Position | None, now: float) -> Logged:
        self.seq += 1
        logged = Logged(self.seq, change, after, now)
        self._entries.append(logged)
        return logged

    def trim(self, before: float) -> None:
        """Forget what was logged before ``before`` (monotonic seconds)."""
        entries = self._entries
        while entries and entries[0].time < before:
            entries.popleft()

    def read(self, since: Position | None,
             upto: Position | None = None) -> tuple[list[Logged], Position] | None:
        """What was logged after ``since``, up to the ones that followed message ``upto``
        (held back for the next read: they come after messages not read yet); and the cursor
        after them. ``None`` if ``since`` cannot say what was missed."""
        if since is None or since.epoch != self.epoch or since.seq > self.seq:
            return None
        entries = self._entries
        oldest = entries[0].seq if entries else self.seq + 1
        if since.seq < oldest - 1:
            return None  # some were dropped: the difference would be silent
        events: list[Logged] = []
        last = since.seq
        for logged in entries:
            if logged.seq <= since.seq:
                continue
            if upto is not None and _follows(logged.after, upto):
                break
            events.append(logged)
            last = logged.seq
        return events, Position(self.epoch, last)


def _follows(after: Position | None, upto: Position) -> bool:
    """Whether an event logged after message ``after`` comes after message ``upto``."""
    return after is not None and after.epoch == upto.epoch and after.seq > upto.seq
