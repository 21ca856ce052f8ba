"""The Redis broker's replica of one channel (brokers/redis/replica.py): no I/O, no Redis.

A replica is fed two ways: ``offer`` (a message pushed by pub/sub or by the
node's own publish) and ``synced`` (the answer of a sync with Redis). These
tests play both by hand and check what it tells the broker to deliver.
"""

from __future__ import annotations

import pytest

from tidings.brokers.redis import replica as replica_module
from tidings.brokers.redis.replica import Changes, Replica
from tidings.core.cursor import ORIGIN, Position
from tidings.core.log import Gap, Retention
from tidings.core.message import Message

CHANNEL = "news"
EPOCH = "aaaaaaaa"
OTHER = "bbbbbbbb"
THIRD = "cccccccc"


def message(seq: int, epoch: str = EPOCH) -> Message:
    return Message(CHANNEL, Position(epoch, seq), b'"m%d"' % seq, 1_000 + seq)


def messages(first: int, last: int, epoch: str = EPOCH) -> list[Message]:
    return [message(seq, epoch) for seq in range(first, last + 1)]


def ids(changes: Changes) -> list[str]:
    return [m.id for m in changes.messages]


def loaded(last_seq: int = 0, epoch: str = EPOCH, size: int = 1000) -> Replica:
    """A replica whose first sync found ``epoch`` ending at ``last_seq`` (entries up to size)."""
    replica = Replica(CHANNEL, Retention(size=size))
    first = max(1, last_seq - size + 1)
    changes = replica.synced(epoch, last_seq, messages(first, last_seq, epoch), replica.received)
    assert changes.gap is None and not changes.sync
    return replica


def retained(replica: Replica) -> list[str]:
    assert replica.log is not None
    return [m.id for m in replica.log.read(ORIGIN, 10_000).messages]


# offer -----------------------------------------------------------------------


def test_a_replica_not_loaded_yet_holds_what_it_is_offered_until_the_first_sync() -> None:
    replica = Replica(CHANNEL, Retention())
    assert replica.log is None
    started = replica.received
    assert replica.offer(message(3)) == Changes()  # no sync asked: the load runs one
    assert replica.received == started + 1
    changes = replica.synced(EPOCH, 2, messages(1, 2), started)
    assert changes.gap is None
    assert ids(changes) == [f"{EPOCH}-1", f"{EPOCH}-2", f"{EPOCH}-3"]
    assert not changes.sync
    assert retained(replica) == ids(changes)


def test_messages_offered_in_order_are_delivered_at_once() -> None:
    replica = loaded(0)
    for seq in (1, 2, 3):
        changes = replica.offer(message(seq))
        assert ids(changes) == [f"{EPOCH}-{seq}"]
        assert changes.gap is None and not changes.sync
    assert retained(replica) == [f"{EPOCH}-{seq}" for seq in (1, 2, 3)]
    assert replica.received == 3


def test_duplicates_are_ignored() -> None:
    replica = loaded(2)
    assert replica.offer(message(1)) == Changes()
    assert replica.offer(message(2)) == Changes()
    assert ids(replica.offer(message(3))) == [f"{EPOCH}-3"]
    assert replica.offer(message(3)) == Changes()  # our own publish, then pub/sub
    assert retained(replica) == [f"{EPOCH}-{seq}" for seq in (1, 2, 3)]


def test_a_message_past_a_hole_is_held_and_asks_for_a_sync() -> None:
    replica = loaded(1)
    changes = replica.offer(message(3))
    assert changes.messages == [] and changes.gap is None
    assert changes.sync
    assert retained(replica) == [f"{EPOCH}-1"]


def test_the_missing_message_offered_late_releases_the_held_ones_in_order() -> None:
    replica = loaded(1)
    assert replica.offer(message(4)).sync
    assert replica.offer(message(3)).sync
    changes = replica.offer(message(2))
    assert ids(changes) == [f"{EPOCH}-{seq}" for seq in (2, 3, 4)]
    assert not changes.sync  # nothing is held any more
    assert changes.gap is None


def test_a_release_that_leaves_a_hole_asks_for_another_sync() -> None:
    replica = loaded(1)
    replica.offer(message(3))
    replica.offer(message(5))
    changes = replica.offer(message(2))
    assert ids(changes) == [f"{EPOCH}-2", f"{EPOCH}-3"]
    assert changes.sync  # 5 is still held behind the missing 4


def test_a_sync_backfills_the_hole_and_releases_the_held_messages() -> None:
    replica = loaded(1)
    started = replica.received
    assert replica.offer(message(4)).sync
    # The sync saw up to 3 (it began before 4 was published); 4 comes from the hold.
    changes = replica.synced(EPOCH, 3, messages(2, 3), started)
    assert changes.gap is None
    assert ids(changes) == [f"{EPOCH}-{seq}" for seq in (2, 3, 4)]
    assert not changes.sync
    assert retained(replica) == [f"{EPOCH}-{seq}" for seq in (1, 2, 3, 4)]


def test_a_sync_that_brings_what_pubsub_already_delivered_repeats_nothing() -> None:
    replica = loaded(1)
    started = replica.received
    assert ids(replica.offer(message(2))) == [f"{EPOCH}-2"]
    changes = replica.synced(EPOCH, 3, messages(2, 3), started)
    assert ids(changes) == [f"{EPOCH}-3"]
    assert changes.gap is None and not changes.sync


def test_a_sync_with_nothing_new_changes_nothing() -> None:
    replica = loaded(3)
    assert replica.synced(EPOCH, 3, [], replica.received) == Changes()
    assert retained(replica) == [f"{EPOCH}-{seq}" for seq in (1, 2, 3)]


# gaps ------------------------------------------------------------------------


def test_a_sync_finding_the_following_entries_trimmed_gives_an_expired_gap() -> None:
    replica = loaded(2)
    # Redis went on to 9 and now keeps only 6..9: 3, 4 and 5 are gone.
    changes = replica.synced(EPOCH, 9, messages(6, 9), replica.received)
    assert changes.gap == Gap(CHANNEL, Position(EPOCH, 2), Position(EPOCH, 5), "expired", 3)
    assert ids(changes) == [f"{EPOCH}-{seq}" for seq in (6, 7, 8, 9)]
    assert not changes.sync
    assert retained(replica) == ids(changes)
    assert replica.log is not None and replica.log.end == Position(EPOCH, 9)


def test_a_sync_finding_every_following_entry_expired_counts_them_all() -> None:
    replica = loaded(2)
    changes = replica.synced(EPOCH, 7, [], replica.received)  # all of 3..7 expired by age
    assert changes.gap == Gap(CHANNEL, Position(EPOCH, 2), Position(EPOCH, 7), "expired", 5)
    assert changes.messages == []
    assert replica.log is not None and replica.log.end == Position(EPOCH, 7)
    assert ids(replica.offer(message(8))) == [f"{EPOCH}-8"]


def test_a_sync_finding_another_epoch_gives_an_epoch_gap_and_starts_over() -> None:
    replica = loaded(4)
    changes = replica.synced(OTHER, 2, messages(1, 2, OTHER), replica.received)
    assert changes.gap == Gap(CHANNEL, Position(EPOCH, 4), Position(OTHER, 0), "epoch", None)
    assert ids(changes) == [f"{OTHER}-1", f"{OTHER}-2"]
    assert retained(replica) == ids(changes)
    assert replica.log is not None and replica.log.epoch == OTHER
    # The new log goes on as usual; the old epoch's messages are no longer taken.
    assert ids(replica.offer(message(3, OTHER))) == [f"{OTHER}-3"]
    assert replica.offer(message(5)).sync


def test_a_new_epoch_whose_oldest_entries_are_trimmed_resumes_before_the_first_kept() -> None:
    replica = loaded(4)
    changes = replica.synced(OTHER, 9, messages(7, 9, OTHER), replica.received)
    assert changes.gap == Gap(CHANNEL, Position(EPOCH, 4), Position(OTHER, 6), "epoch", None)
    assert ids(changes) == [f"{OTHER}-{seq}" for seq in (7, 8, 9)]


def test_an_empty_new_epoch_gives_a_gap_resuming_at_its_start() -> None:
    replica = loaded(4)
    changes = replica.synced(OTHER, 0, [], replica.received)  # a fresh, empty Redis
    assert changes.gap == Gap(CHANNEL, Position(EPOCH, 4), Position(OTHER, 0), "epoch", None)
    assert changes.messages == [] and not changes.sync
    assert replica.log is not None and len(replica.log) == 0


def test_a_message_of_another_epoch_is_held_and_asks_for_a_sync() -> None:
    replica = loaded(4)
    started = replica.received
    changes = replica.offer(message(1, OTHER))
    assert changes == Changes(sync=True)
    resynced = replica.synced(OTHER, 1, messages(1, 1, OTHER), started)
    assert resynced.gap is not None and resynced.gap.reason == "epoch"
    assert ids(resynced) == [f"{OTHER}-1"]  # once, though it was both held and synced
    assert not resynced.sync


def test_held_messages_of_another_epoch_from_before_the_sync_started_are_stale() -> None:
    replica = loaded(4)
    # Pub/sub brought a message of OTHER; then that log was lost too, and the
    # sync that began after it found THIRD: the OTHER message is stale.
    assert replica.offer(message(1, OTHER)).sync
    started = replica.received
    changes = replica.synced(THIRD, 2, messages(1, 2, THIRD), started)
    assert changes.gap == Gap(CHANNEL, Position(EPOCH, 4), Position(THIRD, 0), "epoch", None)
    assert ids(changes) == [f"{THIRD}-1", f"{THIRD}-2"]
    assert not changes.sync  # the stale message was dropped, not kept for another sync
    assert ids(replica.offer(message(3, THIRD))) == [f"{THIRD}-3"]


def test_held_messages_of_another_epoch_from_after_the_sync_started_ask_for_another() -> None:
    replica = loaded(4)
    started = replica.received
    # While the sync is on its way, pub/sub brings a message of an epoch newer
    # than the one the sync will answer with: it is kept, and another sync runs.
    assert replica.offer(message(1, THIRD)).sync
    changes = replica.synced(OTHER, 1, messages(1, 1, OTHER), started)
    assert changes.gap is not None and changes.gap.resume == Position(OTHER, 0)
    assert ids(changes) == [f"{OTHER}-1"]
    assert changes.sync
    again = replica.synced(THIRD, 1, messages(1, 1, THIRD), replica.received)
    assert again.gap == Gap(CHANNEL, Position(OTHER, 1), Position(THIRD, 0), "epoch", None)
    assert ids(again) == [f"{THIRD}-1"]
    assert not again.sync


# limits ----------------------------------------------------------------------


def test_held_messages_past_max_held_are_dropped_and_a_sync_fetches_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replica_module, "MAX_HELD", 3)
    replica = loaded(1)
    started = replica.received
    for seq in (3, 4, 5):
        assert replica.offer(message(seq)).sync
    assert replica.offer(message(6)).sync  # over the limit: 3, 4, 5 are let go
    changes = replica.offer(message(2))
    assert ids(changes) == [f"{EPOCH}-2"]
    assert changes.sync  # 6 is still held, behind the ones let go
    synced = replica.synced(EPOCH, 6, messages(2, 6), started)
    assert ids(synced) == [f"{EPOCH}-{seq}" for seq in (3, 4, 5, 6)]
    assert synced.gap is None and not synced.sync


def test_the_first_sync_keeps_at_most_the_retention_size() -> None:
    replica = loaded(10, size=4)
    assert retained(replica) == [f"{EPOCH}-{seq}" for seq in (7, 8, 9, 10)]
    assert replica.log is not None
    read = replica.log.read(Position(EPOCH, 2), 10)
    assert read.gap is not None
    assert (read.gap.reason, read.gap.missed) == ("expired", 4)
