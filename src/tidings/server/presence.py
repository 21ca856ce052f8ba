"""Presence on this server: who each reader is, and the driver around ``core.presence``.

Every read gets a client id (:func:`identify`): the one the client chose
with ``?client=`` (checked by ``core.presence.check_client_id``), or a fresh
one, told to the client in the ``Tidings-Client`` response header of polls
and SSE streams, the first event of an SSE stream and the ``subscribed``
frames and subscribe acks of a WebSocket. The drivers tell
:class:`PresenceTracker` when a reader holds or leaves a channel, or polls
it; the server's sweep expires pollers; ``GET /channels/{channel}/presence``
and the WebSocket ``presence`` command read it. docs/topics/presence.md
explains the model.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

from tidings.brokers.base import Broker
from tidings.core.cursor import END, Position, Start, format_multi
from tidings.core.names import namespace_of
from tidings.core.presence import (
    Change,
    Identity,
    Presence,
    PresenceLog,
    PresencePolicy,
    check_client_id,
)
from tidings.errors import BadRequest, NotFound
from tidings.server.auth import Credentials
from tidings.server.request import Request
from tidings.settings import Settings
from tidings.wire import presence as wire

logger = logging.getLogger("tidings.server")

#: The response header that tells a poller (or an SSE client) its client id.
CLIENT_HEADER = "Tidings-Client"
#: The most members one presence answer lists; ``count`` and ``users`` are always whole.
MAX_LISTED_MEMBERS = 1000
#: Random bytes in a client id the server assigns (16 characters of base64url).
CLIENT_ID_BYTES = 12
#: Joins and leaves of one channel in one sweep beyond which streams are told the member
#: list instead (one frame, at most MAX_LISTED_MEMBERS members): a storm must not fill
#: every watcher's output buffer (``output_buffer_limit``) with one frame per member.
MAX_BATCH_EVENTS = 100


class Watcher(Protocol):
    """A reader that asked for joins and leaves (a stream, a parked long poll)."""

    def presence_changed(self, channel: str, encoded: wire.Encoded) -> None:
        """A join or leave on ``channel``; must not block."""
        ...

    def fail(self, error: Exception) -> None:
        """Handling it raised: end this reader's connection."""
        ...


#: Client ids drawn at once: every read that names no id needs a fresh one, and one
#: ``urandom`` and base64 pass for many costs a fraction of one per request.
CLIENT_IDS_PER_DRAW = 256
#: A draw's base64url text cut into its ids (whole groups of three bytes: no padding).
_DRAW = struct.Struct(f"{CLIENT_ID_BYTES * 4 // 3}s" * CLIENT_IDS_PER_DRAW)
_drawn: list[str] = []
_drawn_ascii: list[bytes] = []


def draw_client_ids() -> tuple[bytes, ...]:
    """:data:`CLIENT_IDS_PER_DRAW` fresh, unguessable client ids in ASCII
    (``CLIENT_ID_BYTES`` random bytes each, in base64url), cut from one draw in C."""
    return _DRAW.unpack(base64.urlsafe_b64encode(
        secrets.token_bytes(CLIENT_ID_BYTES * CLIENT_IDS_PER_DRAW)))


def new_client_id() -> str:
    """A fresh, unguessable client id (:func:`draw_client_ids`)."""
    if not _drawn:
        _drawn.extend(map(bytes.decode, draw_client_ids()))
    return _drawn.pop()


def new_client_id_ascii() -> bytes:
    """:func:`new_client_id` in ASCII, for an answer joined around it (the kept answer of
    a poll, a gathering's): its own pool, so that it is never decoded or encoded."""
    if not _drawn_ascii:
        _drawn_ascii.extend(draw_client_ids())
    return _drawn_ascii.pop()


def ascii_client_ids() -> list[bytes]:
    """The pool :func:`new_client_id_ascii` pops from, for server/speedups.c, which pops
    from it too (and leaves it to this module to fill)."""
    return _drawn_ascii


def _forget_draws() -> None:
    _drawn.clear()
    _drawn_ascii.clear()


# A forked worker must not hand out the ids its parent had drawn.
os.register_at_fork(after_in_child=_forget_draws)


def identify(client: str | None, credentials: Credentials) -> tuple[Identity, bool]:
    """Who a reader is; and whether it chose its id (``?client=``), which a poller must do to
    stay present between requests. Raises ``InvalidClientId`` (400) for a bad id."""
    named = client is not None
    client = check_client_id(client) if client is not None else new_client_id()
    claims = credentials.claims
    if claims is None:
        return Identity(client), named
    return Identity(client, claims.sub, claims.info), named


def identify_request(request: Request, credentials: Credentials) -> tuple[Identity, bool]:
    return identify(request.arg("client"), credentials)


def wants_events(request: Request) -> bool:
    """Whether a read asked for joins and leaves (``?presence=1``); 400 for another value."""
    text = request.arg("presence")
    if text is None or text in ("0", "false"):
        return False
    if text in ("1", "true"):
        return True
    raise BadRequest("presence must be 1 (or true) to receive joins and leaves, or 0",
                     code="invalid_presence")


class PresenceTracker:
    """The members of this node's channels (``core.presence.Presence``), kept by the drivers.

    Channels whose namespace has no presence are left out at no cost. Each
    ``hold`` returns the channels it held: the caller releases exactly those.
    """

    __slots__ = ("_broker", "_loop", "_policies", "_read", "_settings", "enabled", "logs",
                 "table", "watchers")

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop,
                 broker: Broker | None = None) -> None:
        self._settings = settings
        self._loop = loop
        self._broker = broker
        self._policies: dict[str, PresencePolicy] = {}
        #: Whether any channel has presence (else every call returns at once).
        self.enabled = settings.presence_anywhere
        #: This node's readers, and who is on each channel: on a broker shared by several
        #: nodes, on all of them (``Broker.presence``).
        self.table = broker.presence(self.policy) if broker is not None else Presence()
        #: The joins and leaves of the channels someone asked for them (numbered, for pollers).
        self.logs: dict[str, PresenceLog] = {}
        #: When a poller last read each log (loop time): kept ``presence_timeout`` after.
        self._read: dict[str, float] = {}
        #: The streams and parked long polls told of each join and leave, per channel.
        self.watchers: dict[str, set[Watcher]] = {}

    def policy(self, channel: str) -> PresencePolicy:
        namespace = namespace_of(channel)
        policy = self._policies.get(namespace)
        if policy is None:
            policy = self._policies[namespace] = self._settings.presence_of(channel)
        return policy

    def require(self, channel: str) -> PresencePolicy:
        """The policy of ``channel``; raise ``NotFound`` (``presence_disabled``) if it has none."""
        policy = self.policy(channel)
        if not policy.enabled:
            namespace = namespace_of(channel)
            where = f"[namespaces.{namespace}]" if namespace else "[server]"
            raise NotFound(f"presence is off for {channel!r}; turn it on with presence = true "
                           f"in {where}", code="presence_disabled")
        return policy

    # what the drivers tell it ---------------------------------------------------

    def hold(self, channels: Iterable[str], identity: Identity, technique: str) -> list[str]:
        """A stream or a parked long poll reads ``channels``; return those it now holds."""
        if not self.enabled:
            return []
        held = [channel for channel in channels if self.policy(channel).enabled]
        if held:
            wall_ms = int(time.time() * 1000)
            for channel in held:
                self.table.hold(channel, identity, technique, wall_ms)
        return held

    def release(self, channels: Iterable[str], client: str, linger: bool = False) -> None:
        """Holds of ``channels`` (as :meth:`hold` returned them) ended; with ``linger`` the
        client stays its channels' ``presence_timeout`` more (a long poller between polls)."""
        now = self._loop.time()
        for channel in channels:
            timeout = self.policy(channel).timeout if linger else 0.0
            self.table.release(channel, client, now, timeout)

    def touch(self, channels: Iterable[str], identity: Identity, technique: str) -> None:
        """A poller read ``channels``: present for each one's ``presence_timeout`` from now."""
        if not self.enabled:
            return
        now, wall_ms = self._loop.time(), 0
        for channel in channels:
            policy = self.policy(channel)
            if policy.enabled:
                wall_ms = wall_ms or int(time.time() * 1000)
                self.table.touch(channel, identity, technique, now, policy.timeout, wall_ms)

    def sweep(self, now: float) -> None:
        """From the server's housekeeping: pollers whose time ran out leave; the joins and
        leaves since the last sweep, coalesced, are logged and told to the watchers."""
        if not self.enabled:
            return
        self.table.expire(now)
        batches: dict[str, list[Change]] = {}
        for change in self.table.drain():
            batches.setdefault(change.channel, []).append(change)
        for channel, changes in batches.items():
            log = self.logs.get(channel)
            if log is None:
                continue
            after = self._end_of(channel)
            for change in changes:
                log.append(change, after, now)
            watchers = self.watchers.get(channel)
            if not watchers:
                continue
            if len(changes) > MAX_BATCH_EVENTS:
                self._tell(channel, watchers, wire.Encoded.members(self.members_answer(channel)))
            else:
                for change in changes:
                    self._tell(channel, watchers, wire.Encoded(change))
        for channel, log in list(self.logs.items()):
            timeout = self.policy(channel).timeout
            log.trim(now - timeout)
            if not self.watchers.get(channel) and self._read.get(channel, 0.0) < now - timeout:
                self._drop_log(channel)

    def _tell(self, channel: str, watchers: set[Watcher], encoded: wire.Encoded) -> None:
        for watcher in list(watchers):
            try:
                watcher.presence_changed(channel, encoded)
            except Exception as exc:
                self.unwatch(channel, watcher)
                watcher.fail(exc)

    # joins and leaves -----------------------------------------------------------------

    def check_events(self, channels: Iterable[str]) -> None:
        """Raise ``NotFound`` (``presence_disabled``) unless every channel has presence."""
        for channel in channels:
            self.require(channel)

    def log(self, channel: str) -> PresenceLog:
        """The numbered joins and leaves of ``channel``, kept from now on."""
        log = self.logs.get(channel)
        if log is None:
            log = self.logs[channel] = PresenceLog()
            self.table.watch(channel)
        return log

    def watch(self, channel: str, watcher: Watcher) -> PresenceLog:
        """Tell ``watcher`` of each join and leave on ``channel`` until :meth:`unwatch`."""
        self.watchers.setdefault(channel, set()).add(watcher)
        return self.log(channel)

    def unwatch(self, channel: str, watcher: Watcher) -> None:
        watchers = self.watchers.get(channel)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self.watchers[channel]

    def members_answer(self, channel: str) -> dict[str, object]:
        """Who is on ``channel`` now (the start of a presence stream), as
        ``GET /channels/{channel}/presence`` answers it."""
        return self.answer(channel, False)

    def poll_fields(self, channels: Iterable[str], since: Mapping[str, Start],
                    upto: Mapping[str, Start], multi: bool) -> dict[str, object]:
        """What a poll answer with ``?presence=1`` adds: the joins and leaves after
        ``since`` (the ``presence_since`` cursor) that come before the answer's messages end
        (``upto``), the cursor after them, and the member list of each channel whose cursor
        cannot say what was missed."""
        now = self._loop.time()
        events: list[dict[str, object]] = []
        members: dict[str, object] = {}
        cursors: dict[str, Position] = {}
        for channel in channels:
            log = self.log(channel)
            self._read[channel] = now
            start = since.get(channel)
            end = upto.get(channel)
            read = log.read(start if isinstance(start, Position) else None,
                            end if isinstance(end, Position) else None)
            if read is None:
                members[channel] = [m.to_json() for m in self.table.members(channel)]
                cursors[channel] = log.cursor()
                continue
            logged, cursors[channel] = read
            events.extend(wire.logged_json(entry) for entry in logged)
        fields: dict[str, object] = {"presence": events}
        if members:
            fields["members"] = members
        if multi:
            fields["presence_next"] = format_multi(cursors)
        else:
            (cursor,) = cursors.values()
            fields["presence_next"] = str(cursor)
        return fields

    def _end_of(self, channel: str) -> Position | None:
        if self._broker is None:
            return None
        try:
            end = self._broker.read(channel, END, 0).next
        except Exception:  # a shared store away: the event is logged without a place
            logger.exception("reading the end of %s for presence failed", channel)
            return None
        return end if end.seq else None

    def _drop_log(self, channel: str) -> None:
        del self.logs[channel]
        self._read.pop(channel, None)
        self.table.unwatch(channel)

    # who is here ------------------------------------------------------------------

    def answer(self, channel: str, count_only: bool) -> dict[str, object]:
        """The body of ``GET /channels/{channel}/presence`` (raises ``NotFound`` if off)."""
        self.require(channel)
        count, users = self.table.count(channel)
        body: dict[str, object] = {"channel": channel, "count": count, "users": users}
        if not count_only:
            members: list[dict[str, object]] = []
            for member in self.table.members(channel):
                if len(members) == MAX_LISTED_MEMBERS:
                    break
                members.append(member.to_json())
            body["members"] = members
            body["more"] = count > len(members)
        return body

    def statistics(self) -> dict[str, int]:
        return {"presence_channels": self.table.channels(), "presence_logs": len(self.logs),
                "presence_watched": len(self.watchers)}


