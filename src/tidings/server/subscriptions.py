"""Server-side subscriptions: channels the application chooses for a user.

A ``GET /subscribe`` without ``channel`` reads the channels of its user:

* those ``on_connect`` returned (``Identity.channels``) and those of the
  token's ``channels.read`` claim, fixed for the connection;
* the user's *set*, kept in the broker (so every node sees it, and a
  reconnection to another node keeps it): ``await server.subscribe_user(user,
  channel)`` / ``unsubscribe_user``, or ``POST`` / ``DELETE
  /users/{user}/channels/{channel}`` with the API key. Each channel of the
  set records where its reading starts: the end of its log when it was added.

A stream (SSE, WebSocket) opened that way follows its user's set: the
broker tells every node of each change (:class:`UserChannels` is its
listener), and each of the user's streams here reads the channel added from
its start, announced first by a ``subscribed`` event or frame carrying the
channel and that start (an SSE ``id:`` that includes it), or stops reading
the channel removed (``unsubscribed``). A poll reads the set as it is at each
request. A cursor that does not name a channel of the set (the client had
not heard of it yet) reads that channel from its recorded start: nothing
published after the subscription is missed.

These channels are the application's own choice: neither the token's
``subscribe`` patterns nor ``on_subscribe`` are asked about them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.brokers.base import UserChannelChange
from tidings.core.cursor import END, Position, Start, parse_since
from tidings.core.names import check_channel
from tidings.errors import (
    USER_CHANNEL_UNAVAILABLE,
    BadRequest,
    BrokerError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ProtocolError,
    Unauthorized,
    UsageError,
)
from tidings.wire import http

if TYPE_CHECKING:
    from tidings.server.app import Server
    from tidings.server.connection import HttpConnection
    from tidings.server.request import Request
    from tidings.server.stream import Stream

logger = logging.getLogger("tidings.server")

#: The longest user name a server-side subscription takes, in characters.
MAX_USER_LENGTH = 256
#: Users whose last change is remembered (to catch a read that looked up a set meanwhile).
RECENT_CHANGES = 10_000
#: Where the HTTP endpoint lives: ``/users/{user}/channels[/{channel}]``.
USERS_PREFIX = "/users/"
CHANNELS_PART = "/channels"


def check_user(user: object) -> str:
    """Return ``user`` if it names a user; raise ``BadRequest`` (``invalid_user``) if not."""
    if not isinstance(user, str):
        raise UsageError(f"user must be a str, not {type(user).__name__}")
    if not 0 < len(user) <= MAX_USER_LENGTH or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        raise BadRequest(f"a user is 1 to {MAX_USER_LENGTH} characters, without control "
                         "characters", code="invalid_user")
    return user


@dataclass(slots=True)
class Following:
    """What a stream reads because of the server (``Stream.server_side``)."""

    user: str | None
    #: From ``on_connect`` and the token: read for the whole connection.
    fixed: frozenset[str]
    #: From the user's set in the broker: follows its changes.
    added: set[str] = field(default_factory=set)
    #: :attr:`UserChannels.generation` when the set was read.
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Resolved:
    """The channels a read without ``channel`` reads, and where the set says each starts."""

    channels: list[str]
    recorded: dict[str, Position]
    following: Following


def starts_of(since: str | None, channels: list[str],
              recorded: Mapping[str, Position]) -> dict[str, Start]:
    """``since`` parsed for a read of a user's channels: a channel of the set that a
    multi-channel cursor does not name starts where it was added. No ``since`` is the
    end; an empty one (the ``next`` a poll of an empty set gets, sent back) is a cursor
    that names no channel: every channel of the set starts where it was added, so that
    a channel added between two polls of an empty set loses nothing."""
    if since is None:
        return dict.fromkeys(channels, END)
    if since == "":
        return {channel: recorded.get(channel, END) for channel in channels}
    starts = parse_since(since, channels)
    if "=" in since:
        for channel, start in starts.items():
            if start is END and channel in recorded:
                starts[channel] = recorded[channel]
    return starts


class UserChannels:
    """Users' server-side channels on this node: the sets in the broker, and the streams
    of each user here that follow them."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._streams: dict[str, set[Stream]] = {}
        #: Counts changes heard; a read remembers it when it looks a set up.
        self.generation = 0
        self._recent: dict[str, int] = {}
        self._floor = 0
        server.broker.on_user_channel = self._changed
        server.broker.on_user_channels_lost = self._lost

    # the application's API (Server.subscribe_user) -------------------------------------

    async def subscribe(self, user: str, channel: str) -> bool:
        """Add ``channel`` to ``user``'s set from the end of its log now; say whether it was
        added (``False``: it was there, from its first start)."""
        user, channel = check_user(user), check_channel(channel)
        server = self._server
        await server.prepare({channel: END})
        start = server.broker.read(channel, END, 0).next
        limit = server.settings.max_channels_per_subscription
        outcome = await server.broker.add_user_channel(user, channel, start, limit)
        if outcome == "full":
            raise BadRequest(f"{user[:60]!r} has {limit} channels already "
                             "(max_channels_per_subscription)", code="too_many_channels")
        return outcome == "added"

    async def unsubscribe(self, user: str, channel: str) -> bool:
        """Remove ``channel`` from ``user``'s set; say whether it was there."""
        user, channel = check_user(user), check_channel(channel)
        return await self._server.broker.remove_user_channel(user, channel)

    # reads ----------------------------------------------------------------------------

    async def resolve(self, user: str | None, fixed: tuple[str, ...]) -> Resolved:
        """What a read without ``channel`` reads for ``user`` (raises ``BrokerError``)."""
        generation = self.generation
        recorded = await self._server.broker.user_channels(user) if user is not None else {}
        channels = list(dict.fromkeys([*fixed, *recorded]))
        return Resolved(channels, recorded,
                        Following(user, frozenset(fixed), set(recorded), generation))

    def track(self, stream: Stream) -> None:
        """``stream`` (started, ``server_side`` set) follows its user's set from now on."""
        following = stream.server_side
        if following is None or following.user is None or stream.closed:
            return
        self._streams.setdefault(following.user, set()).add(stream)
        if self._recent.get(following.user, self._floor) > following.generation:
            self._server.spawn(self._reconcile(following.user))  # changed while it was read

    def forget(self, stream: Stream) -> None:
        """``stream`` ended (``Stream._finish``)."""
        following = stream.server_side
        if following is None or following.user is None:
            return
        streams = self._streams.get(following.user)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._streams[following.user]

    def statistics(self) -> dict[str, int]:
        return {"users_followed": len(self._streams)}

    # changes ----------------------------------------------------------------------------

    def _changed(self, change: UserChannelChange) -> None:
        """From the broker, on every node: a user's set changed."""
        self.generation += 1
        recent = self._recent
        recent.pop(change.user, None)
        recent[change.user] = self.generation
        if len(recent) > RECENT_CHANGES:
            oldest = next(iter(recent))
            self._floor = recent.pop(oldest)
        for stream in list(self._streams.get(change.user, ())):
            try:
                if change.start is None:
                    self._remove(stream, change.channel)
                else:
                    self._add(stream, change.channel, change.start)
            except Exception:
                logger.exception("applying a change of %r's channels to %r failed",
                                 change.user, stream)

    def _lost(self) -> None:
        """From the broker: changes may have been missed; read every followed set again."""
        self.generation += 1
        self._floor = self.generation
        for user in list(self._streams):
            self._server.spawn(self._reconcile(user))

    async def _reconcile(self, user: str) -> None:
        try:
            recorded = await self._server.broker.user_channels(user)
        except BrokerError as exc:
            logger.warning("reading %r's channels again failed: %s", user, exc)
            return
        for stream in list(self._streams.get(user, ())):
            following = stream.server_side
            assert following is not None
            try:
                for channel in list(following.added):
                    if channel not in recorded:
                        self._remove(stream, channel)
                for channel, start in recorded.items():
                    if channel not in following.added:
                        self._add(stream, channel, start)
            except Exception:
                logger.exception("reading %r's channels again for %r failed", user, stream)

    def _add(self, stream: Stream, channel: str, start: Position) -> None:
        following = stream.server_side
        assert following is not None
        if stream.closed or stream.reader.reads(channel):
            return  # read already: the server's, or the client's own (left to it)
        following.added.add(channel)

        def then() -> None:
            if channel in following.added and not stream.closed:
                try:
                    stream.add_server_channel(channel, start)
                except ProtocolError as exc:  # a start the log cannot read (never expected)
                    logger.warning("%r cannot read %s from %s: %s", stream, channel, start, exc)
                    stream.close_with(USER_CHANNEL_UNAVAILABLE)

        def refuse(error: ProtocolError | BrokerError) -> None:
            # Reading on without it would miss its messages unseen: reconnecting resumes it.
            if not stream.closed:
                logger.warning("%r cannot read %s: %s", stream, channel, error)
                stream.close_with(USER_CHANNEL_UNAVAILABLE)

        self._server.when_ready({channel: start}, then, refuse)

    def _remove(self, stream: Stream, channel: str) -> None:
        following = stream.server_side
        assert following is not None
        if channel not in following.added:
            return  # not the server's: the client's own, or fixed (on_connect, the token)
        following.added.discard(channel)
        if channel not in following.fixed and not stream.closed:
            stream.remove_server_channel(channel)

    # the HTTP endpoint ------------------------------------------------------------------

    def answer(self, conn: HttpConnection, request: Request) -> None:
        """``/users/{user}/channels[/{channel}]``: ``GET`` the set, ``POST`` / ``DELETE`` a
        channel; the API key only."""
        path, method = request.path, request.method
        rest = path[len(USERS_PREFIX):]
        channel: str | None = None
        if rest.endswith(CHANNELS_PART):
            user = rest[:-len(CHANNELS_PART)]
            allowed: tuple[str, ...] = ("GET",)
        else:
            user, found, channel = rest.rpartition(CHANNELS_PART + "/")
            if not found:
                raise NotFound(f"no such URL: {path[:100]}; see /users/{{user}}/channels")
            allowed = ("POST", "DELETE")
        if method not in allowed:
            raise MethodNotAllowed(f"{method} is not allowed on {path[:100]}", allow=allowed)
        self._check_api_key(request)
        user = check_user(user)
        if channel is not None:
            channel = check_channel(channel)
        conn.park()
        self._server.spawn(self._answer(conn, request, user, channel))

    def _check_api_key(self, request: Request) -> None:
        auth = self._server.auth
        if auth.api_key is None:
            raise Forbidden("this server has no API key: set api_key (or TIDINGS_API_KEY) to "
                            "change users' channels over HTTP, or use server.subscribe_user",
                            code="api_key_required")
        credentials = auth.identify(request)
        if credentials.api_key:
            return
        if credentials.claims is None:
            raise Unauthorized("users' channels need the API key (Authorization: Bearer)",
                               code="api_key_required")
        raise Forbidden("users' channels need the API key, not a token",
                        code="api_key_required")

    async def _answer(self, conn: HttpConnection, request: Request, user: str,
                      channel: str | None) -> None:
        keep_alive = request.keep_alive
        body: dict[str, Any]
        try:
            if channel is None:
                recorded = await self._server.broker.user_channels(user)
                status, body = 200, {"user": user, "channels": {
                    name: str(start) for name, start in recorded.items()}}
            elif request.method == "POST":
                added = await self.subscribe(user, channel)
                status = 201 if added else 200
                body = {"user": user, "channel": channel, "added": added}
            else:
                removed = await self.unsubscribe(user, channel)
                status, body = 200, {"user": user, "channel": channel, "removed": removed}
        except (ProtocolError, BrokerError) as exc:
            if not conn.closing:
                conn.respond(http.error_response(exc, keep_alive=keep_alive), keep_alive)
            return
        if not conn.closing:
            conn.answer_json(status, body, (("Cache-Control", "no-store"),), keep_alive)
