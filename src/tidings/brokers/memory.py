"""The default broker: channel logs in this process's memory.

A restart loses every log; the new logs get new epochs, so cursors from
before the restart get a gap signal instead of a silent skip.

Only publishing creates a log. Reading a channel that has no log keeps
nothing: the read is answered from the position the channel's first log
*would* start at, ``EPOCH-0``, where the epoch is a keyed hash of the
channel name under a secret this broker drew at start (mapped onto the
alphabet of :func:`tidings.core.cursor.new_epoch`). Every read of that empty
channel gives the same cursor however much time passes, the first publish
creates the log with that very epoch, so the cursor resumes with no gap; a
new broker has a new secret, so cursors from before a restart get an
``epoch`` gap as before. Someone reading millions of names leaves nothing
behind.

A log whose messages have all expired and that nobody reads is forgotten
after ``idle_log_seconds``, keeping only its epoch and last sequence number
(a tombstone, a few dozen bytes). If the channel is used again, its log goes
on from there, so a client that had seen everything resumes with no gap, and
one that had not gets an exact ``expired`` gap. A tombstone is read like the
log it stands for, and takes precedence over the hashed epoch. Only past
:data:`MAX_TOMBSTONES` forgotten channels are the least recently used
tombstones dropped; their cursors then get an ``epoch`` gap. For that, a
dropped tombstone moves its channel on to a new hashed epoch: the hash also
covers how many tombstones were dropped in the channel's bucket (one of
:data:`LOST_BUCKETS`), so the next log cannot reuse an epoch whose sequence
numbers were handed out already. Other channels of the bucket that have no
log move on too; a reader holding their ``EPOCH-0`` gets an ``epoch`` gap
for nothing, the price of keeping no state per name.

Upkeep costs nothing per idle channel. Two heaps of ``(due, channel)`` say
when :meth:`MemoryBroker.maintain` must look at a log: when its oldest
message expires (:meth:`ChannelLog.expires_at`), and, once it is empty, when
it may be forgotten. ``maintain`` pops only what is due and schedules the
log again if it must. A log has at most one entry in each heap, which may be
early (a read trimmed the log, a later read touched it: the log is looked at
and scheduled again) but never late, so publishes and reads need not move
it; only a wall clock going back leaves a stale entry, skipped when popped.
Reads still trim by age on the spot, so no read returns an expired message,
whenever ``maintain`` runs. A log that has hub subscribers when it is due to
be forgotten is looked at again ``idle_log_seconds`` later. Publishes and
reads stamp a log with the clock; the same read again (``same_read``, a poll
repeated with nothing new, the most frequent request of all) stamps it with the
clock's last reading instead of reading it, which in a server is at most a
second old (``maintain`` runs every second).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import secrets
import time
from array import array
from collections.abc import Callable
from itertools import islice

from tidings.brokers.base import Added, Broker, Replayed, UserChannelChange
from tidings.core.cursor import EPOCH_LENGTH, Position, Start
from tidings.core.fanout import Hub
from tidings.core.idempotency import Record, fingerprint
from tidings.core.log import BackRead, ChannelLog, Read, Retention
from tidings.core.message import Message
from tidings.errors import IdempotencyConflict

logger = logging.getLogger("tidings.memory")

#: Forgotten channels whose epoch and position are still remembered.
MAX_TOMBSTONES = 100_000
#: Idempotency records held at most, over all channels (about 250 bytes each). Past
#: it, the records closest to the end of their window are dropped first: a retry
#: under a dropped key stores its message again (logged once per broker).
MAX_IDEMPOTENCY_KEYS = 1_000_000
#: Stand-in empty logs of channels without a log kept for reads (a bounded cache).
STAND_INS = 64
#: Buckets counting dropped tombstones, which move channels on to new epochs
#: (8 bytes each, allocated when the first tombstone is dropped).
LOST_BUCKETS = 1 << 16

# The alphabet of tidings.core.cursor.new_epoch.
_EPOCH_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# The retention of a stand-in log, which is only read, never appended to or trimmed.
_READ_ONLY = Retention()


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


def keyed_epoch(secret: bytes, channel: str, life: int) -> str:
    """The epoch of ``channel`` under ``secret`` after ``life`` dropped tombstones."""
    digest = hashlib.blake2b(life.to_bytes(8, "big") + channel.encode(), key=secret,
                             digest_size=8).digest()
    number = int.from_bytes(digest, "big")
    letters = []
    for _ in range(EPOCH_LENGTH):
        number, digit = divmod(number, 36)
        letters.append(_EPOCH_ALPHABET[digit])
    return "".join(letters)


class _HeldLog(ChannelLog):
    """A log the broker holds, with what its upkeep needs."""

    __slots__ = ("expiry_due", "forget_due", "touched")

    def __init__(self, channel: str, retention: Retention, epoch: str, last_seq: int,
                 now: int) -> None:
        super().__init__(channel, retention, epoch, last_seq)
        #: Clock time of the last publish or read.
        self.touched = now
        # The due times of this log's one live entry in each schedule, or -1 if
        # it has none there. An entry may be early (it is checked when popped),
        # never late: a non-empty log always has an expiry entry.
        self.expiry_due = -1
        self.forget_due = -1


class MemoryBroker(Broker):
    """Channel logs in a dict, retention by count on append and by age on a schedule."""

    def __init__(
        self,
        retention: Callable[[str], Retention] = lambda channel: Retention(),
        *,
        clock: Callable[[], int] = wall_clock_ms,
        idle_log_seconds: float = 3600.0,
        max_idempotency_keys: int = MAX_IDEMPOTENCY_KEYS,
    ) -> None:
        self.hub = Hub()
        self._retention = retention
        self._clock = clock
        #: The clock's last reading (every one is kept): what :meth:`same_read` stamps a
        #: log with, reading no clock.
        self._clock_seen = 0
        self._logs: dict[str, _HeldLog] = {}
        self._idle_ms = int(idle_log_seconds * 1000)
        # Heaps of (due, channel): when the oldest message of a log expires, and
        # when an empty log may be forgotten.
        self._expiries: list[tuple[int, str]] = []
        self._forgets: list[tuple[int, str]] = []
        # Forgotten logs: channel -> (epoch, last sequence number), least recently used first.
        self._tombstones: dict[str, tuple[str, int]] = {}
        self._secret = secrets.token_bytes(16)
        self._lost: array[int] | None = None
        #: Users' server-side channels: user -> channel -> where reading starts.
        self._user_channels: dict[str, dict[str, Position]] = {}
        # Stand-ins of the channels without a log read most recently, so that idle
        # readers of one such channel share its end; a bounded cache, never more
        # than STAND_INS entries, dropped whenever a log or tombstone changes.
        self._stand_ins: dict[str, ChannelLog] = {}
        # Idempotency keys: (channel, key) -> (record, expiry), and a heap of
        # (expiry, channel, key) that maintain() pops.
        self._keys: dict[tuple[str, str], tuple[Record, int]] = {}
        self._key_expiries: list[tuple[int, str, str]] = []
        self._max_keys = max_idempotency_keys
        #: Records dropped before their window ended because there were too many.
        self.idempotency_keys_dropped = 0

    def log(self, channel: str) -> ChannelLog:
        """The log of ``channel``, created empty if needed (for tests and tools).

        Reads never create a log; this does, as the first publish would: going
        on from the channel's tombstone, or starting at its hashed epoch. The
        empty log is forgotten after ``idle_log_seconds`` like any other.
        """
        log = self._logs.get(channel)
        if log is None:
            now = self._clock_seen = self._clock()
            log = self._create(channel, now)
            self._forget_after(channel, log, log.touched + self._idle_ms + 1)
        return log

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> Message:
        return self.publish_nowait(channel, data, idempotency_key=idempotency_key)

    def publish_nowait(self, channel: str, data: bytes, *,
                       idempotency_key: str | None = None) -> Message:
        """Like :meth:`publish`, for callers without an event loop."""
        now = self._clock_seen = self._clock()
        log = self._logs.get(channel)
        if idempotency_key is not None:
            replayed = self._replay(channel, log, idempotency_key, data, now)
            if replayed is not None:
                return replayed  # before creating a log: a replay keeps nothing new
        if log is None:
            log = self._create(channel, now)
        was_empty = not len(log)
        message = log.append(data, now)
        if idempotency_key is not None:
            key_due = now + int(log.retention.idempotency_window * 1000)
            self._keys[channel, idempotency_key] = (
                Record(message.position, now, fingerprint(data)), key_due)
            heapq.heappush(self._key_expiries, (key_due, channel, idempotency_key))
            if len(self._keys) > self._max_keys:
                self._drop_keys()
        log.touched = now
        if was_empty:
            expires = log.expires_at()
            if expires is not None:
                self._expire_at(channel, log, expires)
            else:  # a retention size of 0 keeps nothing
                self._forget_after(channel, log, now + self._idle_ms + 1)
        self.hub.publish(message)
        return message

    def _drop_keys(self) -> None:
        """Drop the records nearest to the end of their window until under the limit."""
        keys, key_expiries = self._keys, self._key_expiries
        while len(keys) > self._max_keys and key_expiries:
            due, channel, key = heapq.heappop(key_expiries)
            held = keys.get((channel, key))
            if held is not None and held[1] == due:
                del keys[channel, key]
                if not self.idempotency_keys_dropped:
                    logger.warning(
                        "more than %d idempotency keys within their windows: dropping the "
                        "oldest (a retry under a dropped key stores its message again); "
                        "shorten idempotency_window or use the Redis broker", self._max_keys)
                self.idempotency_keys_dropped += 1

    def _replay(self, channel: str, log: ChannelLog | None, key: str, data: bytes,
                now: int) -> Replayed | None:
        """The first message under ``key`` if it is still remembered, else ``None``.

        A record of another epoch than the one the channel's log is (or would
        be) in is ignored: its message went with that log.
        """
        held = self._keys.get((channel, key))
        if held is None:
            return None
        record, expires = held
        if log is not None:
            epoch = log.epoch
        else:
            tombstone = self._tombstones.get(channel)
            epoch = tombstone[0] if tombstone is not None else self._first_epoch(channel)
        if expires <= now or record.position.epoch != epoch:
            return None
        if record.fingerprint != fingerprint(data):
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used on {channel!r} for another body "
                f"(message {record.position})")
        return Replayed(channel, record.position, data, record.time)

    def read(self, channel: str, start: Start, limit: int) -> Read:
        log = self._logs.get(channel)
        if log is None:
            return self._stand_in(channel).read(start, limit)
        now = log.touched = self._clock_seen = self._clock()
        if len(log):
            log.trim(now)
        return log.read(start, limit)

    def same_read(self, channel: str, start: Start, limit: int, found: Read) -> bool:
        log = self._logs.get(channel)
        if log is None:
            return self._stand_in(channel).still_at_end(found)
        if not log.still_at_end(found):
            return False
        # A read, as far as forgetting idle logs goes, stamped with the clock's last
        # reading: no earlier than the read it repeats, and at most a second old in a
        # server, whose maintain() reads it every second.
        log.touched = self._clock_seen
        return True

    def read_back(self, channel: str, before: Start, since: Start, limit: int) -> BackRead:
        log = self._logs.get(channel)
        if log is None:
            return self._stand_in(channel).read_back(before, since, limit)
        now = log.touched = self._clock_seen = self._clock()
        if len(log):
            log.trim(now)
        return log.read_back(before, since, limit)

    def maintain(self) -> None:
        now = self._clock_seen = self._clock()
        logs, idle_ms = self._logs, self._idle_ms
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            due, channel = heapq.heappop(expiries)
            log = logs.get(channel)
            if log is None or log.expiry_due != due:
                continue  # stale: the log was forgotten, or the entry replaced
            log.expiry_due = -1
            log.trim(now)
            expires = log.expires_at()
            if expires is not None:
                self._expire_at(channel, log, expires)
            else:
                self._forget_after(channel, log, log.touched + idle_ms + 1)
        forgets = self._forgets
        while forgets and forgets[0][0] <= now:
            due, channel = heapq.heappop(forgets)
            log = logs.get(channel)
            if log is None or log.forget_due != due:
                continue
            log.forget_due = -1
            if len(log):
                continue  # its expiry entry plans this again once it is empty
            if now - log.touched <= idle_ms:
                self._forget_after(channel, log, log.touched + idle_ms + 1)
            elif self.hub.subscribers(channel):
                self._forget_after(channel, log, now + max(idle_ms, 1))  # look again then
            else:
                del logs[channel]
                if log.end.seq:
                    self._tombstones[channel] = (log.epoch, log.end.seq)
                    self._stand_ins.pop(channel, None)
        if len(self._tombstones) > MAX_TOMBSTONES:
            self._drop_tombstones()
        keys, key_expiries = self._keys, self._key_expiries
        while key_expiries and key_expiries[0][0] <= now:
            due, channel, key = heapq.heappop(key_expiries)
            held = keys.get((channel, key))
            if held is not None and held[1] == due:
                del keys[channel, key]

    def health(self) -> dict[str, object]:
        return {"kind": "memory", "status": "ok", "channels": len(self._logs)}

    # users' server-side channels --------------------------------------------------

    async def user_channels(self, user: str) -> dict[str, Position]:
        return dict(self._user_channels.get(user, {}))

    async def add_user_channel(self, user: str, channel: str, start: Position,
                               limit: int) -> Added:
        held = self._user_channels.setdefault(user, {})
        if channel in held:
            return "present"
        if len(held) >= limit:
            if not held:
                del self._user_channels[user]
            return "full"
        held[channel] = start
        self._tell(UserChannelChange(user, channel, start))
        return "added"

    async def remove_user_channel(self, user: str, channel: str) -> bool:
        held = self._user_channels.get(user)
        if held is None or held.pop(channel, None) is None:
            return False
        if not held:
            del self._user_channels[user]
        self._tell(UserChannelChange(user, channel, None))
        return True

    def _tell(self, change: UserChannelChange) -> None:
        if self.on_user_channel is not None:
            self.on_user_channel(change)

    def channels(self) -> int:
        """How many channel logs are held."""
        return len(self._logs)

    # logs and their schedules -------------------------------------------------

    def _create(self, channel: str, now: int) -> _HeldLog:
        """Hold a new empty log for ``channel``; the caller must then schedule it."""
        self._stand_ins.pop(channel, None)
        tombstone = self._tombstones.pop(channel, None)
        epoch, last_seq = tombstone or (self._first_epoch(channel), 0)
        log = self._logs[channel] = _HeldLog(channel, self._retention(channel), epoch, last_seq,
                                             now)
        return log

    def _expire_at(self, channel: str, log: _HeldLog, due: int) -> None:
        """Make maintain() trim ``log`` at ``due`` at the latest."""
        if log.expiry_due < 0 or due < log.expiry_due:
            log.expiry_due = due
            heapq.heappush(self._expiries, (due, channel))

    def _forget_after(self, channel: str, log: _HeldLog, due: int) -> None:
        """Make maintain() see at ``due`` at the latest whether ``log`` may be forgotten."""
        if log.forget_due < 0 or due < log.forget_due:
            log.forget_due = due
            heapq.heappush(self._forgets, (due, channel))

    # channels without a log ---------------------------------------------------

    def _stand_in(self, channel: str) -> ChannelLog:
        """An empty log where the next log of ``channel`` would start (not held)."""
        tombstone = self._tombstones.pop(channel, None)
        if tombstone is not None:
            self._tombstones[channel] = tombstone  # read: the last to be dropped now
        stand_ins = self._stand_ins
        log = stand_ins.pop(channel, None)
        if log is None:
            log = (ChannelLog(channel, _READ_ONLY, self._first_epoch(channel))
                   if tombstone is None else ChannelLog(channel, _READ_ONLY, *tombstone))
            if len(stand_ins) >= STAND_INS:
                del stand_ins[next(iter(stand_ins))]
        stand_ins[channel] = log  # the most recently read last
        return log

    def _first_epoch(self, channel: str) -> str:
        """The epoch of the next log of ``channel``, if it has no tombstone."""
        lost = self._lost
        life = 0 if lost is None else lost[hash(channel) % LOST_BUCKETS]
        return keyed_epoch(self._secret, channel, life)

    def _drop_tombstones(self) -> None:
        """Drop the least recently used tombstones past :data:`MAX_TOMBSTONES`."""
        if self._lost is None:
            self._lost = array("Q", bytes(8 * LOST_BUCKETS))
        lost, tombstones = self._lost, self._tombstones
        self._stand_ins.clear()  # some channels' next epoch moves on
        # One pass over the dict's head: next(iter()) per tombstone would scan
        # the slots of the ones just deleted again each time.
        for channel in list(islice(tombstones, len(tombstones) - MAX_TOMBSTONES)):
            del tombstones[channel]
            lost[hash(channel) % LOST_BUCKETS] += 1
