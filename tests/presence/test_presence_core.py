"""core/presence.py driven directly: no event loop, explicit clock values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.presence import (
    MAX_CLIENT_ID_LENGTH,
    Identity,
    InvalidClientId,
    Join,
    Leave,
    Member,
    Presence,
    check_client_id,
)

ALICE = Identity("a1", "alice", {"name": "Alice"})
BOB = Identity("b1", "bob")
ANON = Identity("x1")


def clients(presence: Presence, channel: str = "c") -> list[str]:
    return [member.client for member in presence.members(channel)]


@pytest.mark.parametrize("text", ["a", "A-z_09", "x" * MAX_CLIENT_ID_LENGTH])
def test_valid_client_ids(text: str) -> None:
    assert check_client_id(text) == text


@pytest.mark.parametrize("text", ["", "x" * (MAX_CLIENT_ID_LENGTH + 1), "a b", "a/b", "é",
                                  "a\n", "a=b", "a,b"])
def test_invalid_client_ids_are_400(text: str) -> None:
    with pytest.raises(InvalidClientId) as info:
        check_client_id(text)
    assert info.value.status == 400 and info.value.code == "invalid_client"


def test_a_hold_joins_and_its_release_leaves() -> None:
    presence = Presence()
    assert presence.hold("c", ALICE, "websocket", 1000) is True
    assert list(presence.members("c")) == [
        Member("a1", "alice", {"name": "Alice"}, "websocket", 1000)]
    assert presence.release("c", "a1", now=5.0) is True
    assert list(presence.members("c")) == [] and presence.channels() == 0


def test_one_client_holding_twice_leaves_with_its_last_hold() -> None:
    presence = Presence()
    presence.hold("c", ALICE, "websocket", 1000)
    assert presence.hold("c", ALICE, "sse", 2000) is False  # the same member
    assert presence.release("c", "a1", now=1.0) is False
    assert clients(presence) == ["a1"]
    assert presence.release("c", "a1", now=1.0) is True
    assert presence.release("c", "a1", now=1.0) is False  # one release too many: nothing


def test_a_poller_stays_until_its_lease_ends() -> None:
    presence = Presence()
    assert presence.touch("c", BOB, "poll", now=0.0, timeout=30.0, wall_ms=1) is True
    assert presence.expire(29.9) == 0 and clients(presence) == ["b1"]
    assert presence.touch("c", BOB, "poll", now=20.0, timeout=30.0, wall_ms=2) is False
    assert presence.expire(30.0) == 0 and clients(presence) == ["b1"]  # renewed at 20
    assert presence.expire(50.0) == 1 and clients(presence) == []


def test_a_hold_outlives_a_lease_and_a_lease_outlives_a_hold() -> None:
    presence = Presence()
    presence.touch("c", ALICE, "poll", now=0.0, timeout=10.0, wall_ms=1)
    presence.hold("c", ALICE, "longpoll", 1)
    assert presence.expire(20.0) == 0 and clients(presence) == ["a1"]  # held
    assert presence.release("c", "a1", now=21.0, linger=10.0) is False  # lingers
    assert presence.expire(30.0) == 0
    assert presence.expire(31.0) == 1 and clients(presence) == []


def test_counts_and_distinct_users() -> None:
    presence = Presence()
    presence.hold("c", ALICE, "websocket", 1)
    presence.hold("c", Identity("a2", "alice"), "sse", 1)  # alice's second tab
    presence.hold("c", BOB, "websocket", 1)
    presence.hold("c", ANON, "websocket", 1)
    assert presence.count("c") == (4, 2)
    presence.release("c", "a1", 1.0)
    assert presence.count("c") == (3, 2)
    presence.release("c", "a2", 1.0)
    assert presence.count("c") == (2, 1)
    assert presence.count("elsewhere") == (0, 0)


def test_nothing_is_recorded_for_channels_nobody_watches() -> None:
    presence = Presence()
    presence.hold("c", ALICE, "websocket", 1)
    presence.watch("d")
    assert presence.drain() == []


def test_joins_and_leaves_are_coalesced_between_drains() -> None:
    presence = Presence()
    presence.watch("c")
    presence.hold("c", ALICE, "websocket", 1)
    presence.hold("c", BOB, "websocket", 2)
    presence.release("c", "b1", 3.0)  # came and went: never reported
    (join,) = presence.drain()
    assert join == Join("c", Member("a1", "alice", {"name": "Alice"}, "websocket", 1))
    presence.release("c", "a1", 4.0)
    presence.hold("c", ALICE, "websocket", 5)  # left and came back as it was: nothing
    assert presence.drain() == []
    presence.release("c", "a1", 6.0)
    (leave,) = presence.drain()
    assert isinstance(leave, Leave) and leave.member.client == "a1"
    assert leave.to_json()["channel"] == "c"
    presence.unwatch("c")
    presence.hold("c", BOB, "sse", 7)
    presence.watch("c")
    assert presence.drain() == []


def test_a_member_that_comes_back_changed_is_a_leave_and_a_join() -> None:
    presence = Presence()
    presence.watch("c")
    presence.hold("c", ALICE, "websocket", 1)
    presence.drain()
    presence.release("c", "a1", 2.0)
    presence.hold("c", ALICE, "sse", 3)
    assert [type(change) for change in presence.drain()] == [Leave, Join]


# A model: random holds, releases, touches and expiries against a plain dictionary.

OPERATION = st.tuples(st.sampled_from(["hold", "release", "touch", "expire"]),
                      st.sampled_from(["c", "d"]), st.sampled_from(["p", "q", "r"]),
                      st.floats(0.0, 5.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(OPERATION, max_size=60))
def test_members_match_a_model(operations: list[tuple[str, str, str, float]]) -> None:
    presence = Presence()
    holds: dict[tuple[str, str], int] = {}
    leases: dict[tuple[str, str], float] = {}
    now = 0.0
    presence.watch("c")
    for action, channel, client, step in operations:
        now += step
        key = (channel, client)
        if action == "hold":
            presence.hold(channel, Identity(client), "websocket", 0)
            holds[key] = holds.get(key, 0) + 1
        elif action == "release":
            presence.release(channel, client, now)
            released = holds.get(key, 0) > 0
            if released:
                holds[key] -= 1
        elif action == "touch":
            presence.touch(channel, Identity(client), "poll", now, 3.0, 0)
            leases[key] = max(leases.get(key, 0.0), now + 3.0)
        else:
            presence.expire(now)
        # Who leaves: on expire, everyone no longer present; on a release, its member.
        candidates = (set(holds) | set(leases) if action == "expire"
                      else {key} if action == "release" and released else set())
        for gone in candidates:
            if holds.get(gone, 0) == 0 and leases.get(gone, 0.0) <= now:
                holds.pop(gone, None)
                leases.pop(gone, None)
        for ch in ("c", "d"):
            expected = {cl for (c, cl) in set(holds) | set(leases) if c == ch}
            assert set(clients(presence, ch)) == expected
    # What the drain reports for the watched channel is the difference from the start.
    changes = presence.drain()
    assert {change.member.client for change in changes} == set(clients(presence, "c"))
    assert all(isinstance(change, Join) for change in changes)
