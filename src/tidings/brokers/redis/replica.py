"""A node's copy of one channel's log, kept in step with Redis; no I/O here.

Messages reach a replica two ways: pushed by pub/sub (or by this node's own
publish) one at a time, and pulled by a *sync*, which asks Redis for its
epoch, its last sequence number and the entries after what the replica has.
Sequence numbers are contiguous, so the replica always knows whether it is
complete: a message that does not follow its end is held, and a sync fills
the hole (or finds the messages gone from Redis, which becomes a gap for the
replica's live subscribers). The broker (broker.py) does the I/O the replica
asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidings.core.cursor import Position
from tidings.core.log import ChannelLog, Gap, Retention
from tidings.core.message import Message

#: Messages a replica holds while it waits for a sync; past this it drops them
#: (the sync fetches them again from Redis).
MAX_HELD = 10_000


@dataclass(slots=True)
class Changes:
    """What the broker must do after a replica took something in."""

    #: Deliver these to the channel's live subscribers, in this order (a gap first).
    gap: Gap | None = None
    messages: list[Message] = field(default_factory=list)
    #: The replica is missing messages, or saw another epoch: run a sync.
    sync: bool = False


class Replica:
    """The local log of one channel, fed in order from Redis."""

    __slots__ = ("_held", "_received", "channel", "log", "retention", "used")

    def __init__(self, channel: str, retention: Retention) -> None:
        self.channel = channel
        self.retention = retention
        #: ``None`` until the first sync has loaded it.
        self.log: ChannelLog | None = None
        #: Messages that could not be added yet, with the order they arrived in.
        self._held: list[tuple[int, Message]] = []
        self._received = 0
        #: Monotonic time of the last read, for forgetting idle replicas.
        self.used = 0.0

    @property
    def received(self) -> int:
        """How many messages were offered so far (a sync notes it when it starts)."""
        return self._received

    def offer(self, message: Message) -> Changes:
        """Take a message pushed by pub/sub or by this node's own publish."""
        self._received += 1
        log = self.log
        if log is None:
            self._hold(message)
            return Changes()
        if message.position.epoch != log.epoch:
            self._hold(message)
            return Changes(sync=True)
        seq, last = message.seq, log.end.seq
        if seq <= last:
            return Changes()  # already here (our own publish, or a sync brought it)
        if seq > last + 1:
            self._hold(message)
            return Changes(sync=True)
        log.add(message)
        changes = Changes(messages=[message])
        self._release(changes, None)
        return changes

    def synced(self, epoch: str, last_seq: int, entries: list[Message], started: int) -> Changes:
        """Take the answer of a sync that began when :attr:`received` was ``started``.

        ``entries`` are the newest retained messages of ``epoch`` after the
        replica's end (all of them, up to the retention size), oldest first.
        """
        log = self.log
        changes = Changes()
        first_seq = entries[0].seq if entries else last_seq + 1
        if log is None or log.epoch != epoch:
            if log is not None:
                changes.gap = Gap(self.channel, log.end, Position(epoch, first_seq - 1),
                                  "epoch", None)
            log = self.log = ChannelLog(self.channel, self.retention, epoch, first_seq - 1)
        elif last_seq > log.end.seq and first_seq > log.end.seq + 1:
            # Redis no longer has what follows the replica: it was trimmed meanwhile.
            missed = first_seq - 1 - log.end.seq
            changes.gap = Gap(self.channel, log.end, Position(epoch, first_seq - 1),
                              "expired", missed)
            log = self.log = ChannelLog(self.channel, self.retention, epoch, first_seq - 1)
        for message in entries:
            if message.seq == log.end.seq + 1:
                log.add(message)
                changes.messages.append(message)
        self._release(changes, started)
        return changes

    def _hold(self, message: Message) -> None:
        if len(self._held) >= MAX_HELD:
            self._held.clear()
        self._held.append((self._received, message))

    def _release(self, changes: Changes, started: int | None) -> None:
        """Add held messages that now follow the end; ask for a sync if some cannot be.

        After a sync that began at ``started``, a held message of another epoch
        that arrived before it is stale (the sync saw what came after it).
        """
        log = self.log
        if not self._held or log is None:
            return
        keep: list[tuple[int, Message]] = []
        for order, message in sorted(self._held, key=lambda item: item[1].seq):
            if message.position.epoch != log.epoch:
                if started is None or order > started:
                    keep.append((order, message))  # newer than what the sync saw
                continue  # an older epoch than the sync's answer: stale
            if message.seq <= log.end.seq:
                continue
            if message.seq == log.end.seq + 1:
                log.add(message)
                changes.messages.append(message)
            else:
                keep.append((order, message))
        self._held = keep
        if keep:
            changes.sync = True
