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
import secrets
import time
from collections.abc import Iterable

from tidings.core.names import namespace_of
from tidings.core.presence import Identity, Presence, PresencePolicy, check_client_id
from tidings.errors import NotFound, UsageError
from tidings.server.auth import Credentials
from tidings.server.request import Request
from tidings.settings import Settings

#: The response header that tells a poller (or an SSE client) its client id.
CLIENT_HEADER = "Tidings-Client"
#: The most members one presence answer lists; ``count`` and ``users`` are always whole.
MAX_LISTED_MEMBERS = 1000
#: Random bytes in a client id the server assigns (16 characters of base64url).
CLIENT_ID_BYTES = 12


def new_client_id() -> str:
    return secrets.token_urlsafe(CLIENT_ID_BYTES)


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


def client_header(response: bytes, client: str) -> bytes:
    """``response`` with a ``Tidings-Client`` header after its status line.

    Spliced in rather than passed with the other headers: heads are cached
    (``wire.http.response``), and a header that differs per client would
    make every head new.
    """
    end = response.index(b"\r\n") + 2
    return b"%s%s: %s\r\n%s" % (response[:end], CLIENT_HEADER.encode(), client.encode(),
                                 response[end:])


class PresenceTracker:
    """The members of this node's channels (``core.presence.Presence``), kept by the drivers.

    Channels whose namespace has no presence are left out at no cost. Each
    ``hold`` returns the channels it held: the caller releases exactly those.
    """

    __slots__ = ("_loop", "_policies", "_settings", "enabled", "table")

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self._loop = loop
        self._policies: dict[str, PresencePolicy] = {}
        #: Whether any channel has presence (else every call returns at once).
        self.enabled = settings.presence_anywhere
        self.table = Presence()

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
        """From the server's housekeeping: pollers whose time ran out leave."""
        if self.enabled:
            self.table.expire(now)

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
        return {"presence_channels": self.table.channels()}


def check_broker(settings: Settings, local: bool) -> None:
    """Refuse presence on a broker shared by several nodes until it keeps members there too:
    a count of this node's readers only would be a wrong answer, not a partial one."""
    if settings.presence_anywhere and not local:
        raise UsageError("presence is served with the memory broker only, for now; "
                         "turn presence off or use broker = \"memory\"")
