"""Joins, leaves and member lists of one subscription, without I/O.

The server may tell the same thing twice (a member list and the first batch
of changes overlap; a reconnect or a technique switch sends the list again;
a poller that missed too much gets the list instead of the changes). The book
keeps the members of each channel, keyed by client id, and turns what comes
into the items to yield: a join of a member already there, or a leave of one
who is not, is dropped; a list after the first is told as the joins and
leaves it differs by, then as the list. docs/protocol.md, "Joins and leaves".
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from tidings.client._cursors import BrokenStream
from tidings.client.events import Join, Leave, Member, Presence
from tidings.core.presence import check_client_id
from tidings.errors import BadRequest, UsageError

PresenceItem = Join | Leave | Presence

#: Random bytes of a client id the client draws itself (16 characters, as the server's).
CLIENT_ID_BYTES = 12


def new_client_id() -> str:
    """A fresh client id: a poller asking for joins and leaves must name itself."""
    return secrets.token_urlsafe(CLIENT_ID_BYTES)


def checked_client_id(client_id: str | None) -> str | None:
    """``client_id`` if valid (or ``None``), else :class:`UsageError`."""
    if client_id is None:
        return None
    try:
        return check_client_id(client_id)
    except (BadRequest, TypeError):
        raise UsageError("client_id must be 1 to 64 of A-Z a-z 0-9 _ -") from None


def member_of(channel: str, value: Mapping[str, Any]) -> Member:
    client, since = value.get("client"), value.get("since")
    if not isinstance(client, str) or not isinstance(since, int):
        raise BrokenStream(f"not a member object: {str(value)[:100]}")
    user = value.get("user")
    return Member(channel, client, user if isinstance(user, str) else None, value.get("info"),
                  str(value.get("technique")), since)


def presence_of(channel: str, value: Mapping[str, Any]) -> Presence:
    """A :class:`Presence` from an answer of ``GET .../presence`` (or a ``presence`` frame)."""
    listed = value.get("members") or []
    count = value.get("count")
    if not isinstance(listed, list) or not isinstance(count, int):
        raise BrokenStream(f"not a presence answer: {str(value)[:100]}")
    members = tuple(member_of(channel, m) for m in listed)
    users = value.get("users")
    return Presence(channel, count,
                    users if isinstance(users, int) else _users(members),
                    members, value.get("more") is True or count > len(members))


def _users(members: Sequence[Member]) -> int:
    return len({m.user for m in members if m.user is not None})


class _Channel:
    __slots__ = ("complete", "members", "since")

    def __init__(self) -> None:
        self.members: dict[str, Member] | None = None
        self.complete = False
        #: Where a poller's joins and leaves resume (``presence_since``).
        self.since: str | None = None


class PresenceBook:
    """The members of a subscription's channels, as told so far."""

    def __init__(self, channels: Sequence[str]) -> None:
        self._channels = {channel: _Channel() for channel in channels}

    def members(self, channel: str) -> tuple[Member, ...] | None:
        """The members of ``channel`` as known, or ``None`` before the first list."""
        known = self._channels[channel].members
        return None if known is None else tuple(known.values())

    def listed(self, value: Mapping[str, Any]) -> list[PresenceItem]:
        """A member list (``{channel, count, users, members, more}``)."""
        state = self._state(value)
        if state is None:
            return []
        channel, entry = state
        presence = presence_of(channel, value)
        new = {member.client: member for member in presence.members}
        items: list[PresenceItem] = []
        if entry.members is not None:
            if not presence.more:
                items += [Leave(channel, m) for c, m in entry.members.items() if c not in new]
            items += [Join(channel, m) for c, m in new.items() if c not in entry.members]
        entry.members, entry.complete = new, not presence.more
        items.append(presence)
        return items

    def changed(self, kind: str, value: Mapping[str, Any]) -> list[PresenceItem]:
        """A ``join`` or ``leave`` (a member object with its ``channel``)."""
        state = self._state(value)
        if state is None:
            return []
        channel, entry = state
        member = member_of(channel, value)
        if entry.members is None:
            entry.members = {}
        known = entry.members.get(member.client)
        if kind == "join":
            if known is not None:
                return []
            entry.members[member.client] = member
            return [Join(channel, member)]
        if kind == "leave" and (known is not None or not entry.complete):
            entry.members.pop(member.client, None)
            return [Leave(channel, known or member)]
        return []

    def answer(self, body: Mapping[str, Any],
               messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, list[PresenceItem]]]:
        """The presence of a poll answer: ``(place, items)`` pairs, each to be handed after
        the answer's first ``place`` messages (its ``after``), in order; then the lists.
        Moves the poll cursor (``presence_next``)."""
        places = {(m.get("channel"), m.get("id")): i + 1 for i, m in enumerate(messages)
                  if isinstance(m, Mapping)}
        placed: list[tuple[int, list[PresenceItem]]] = []
        for event in body.get("presence") or ():
            if not isinstance(event, Mapping):
                raise BrokenStream(f"not a presence event: {str(event)[:100]}")
            place = places.get((event.get("channel"), event.get("after")), 0)
            placed.append((place, self.changed(str(event.get("type")), event)))
        lists = body.get("members") or {}
        if not isinstance(lists, Mapping):
            raise BrokenStream(f"not a member map: {str(lists)[:100]}")
        for channel, listed in lists.items():
            placed.append((len(messages), self.listed(
                {"channel": channel, "members": listed,
                 "count": len(listed) if isinstance(listed, list) else None, "more": False})))
        self._learn_since(body.get("presence_next"))
        return placed

    def since(self) -> str | None:
        """The ``presence_since`` of the next poll (``a=EPOCH-N,...``), or ``None``."""
        parts = [f"{c}={e.since}" for c, e in self._channels.items() if e.since is not None]
        return ",".join(parts) or None

    def _learn_since(self, cursor: object) -> None:
        if not isinstance(cursor, str) or not cursor:
            return
        if "=" not in cursor:
            if len(self._channels) == 1:
                (only,) = self._channels.values()
                only.since = cursor
            return
        for part in cursor.split(","):
            channel, _, since = part.partition("=")
            entry = self._channels.get(channel)
            if entry is not None and since:
                entry.since = since

    def _state(self, value: Mapping[str, Any]) -> tuple[str, _Channel] | None:
        channel = value.get("channel")
        if not isinstance(channel, str):
            raise BrokenStream(f"a presence event without a channel: {str(value)[:100]}")
        entry = self._channels.get(channel)
        return None if entry is None else (channel, entry)
