"""Presence across nodes: the members of every node, kept in Redis with expiry.

Each node keeps its own readers in a local table (``core.presence.Presence``:
holds and leases, as on the memory broker) and sends what changed there to
Redis in batches; every node keeps a *copy* of the shared member list of the
channels it serves, which is what ``GET /channels/{channel}/presence``, the
WebSocket ``presence`` command and the joins and leaves told to readers come
from. :class:`SharedPresence` is both: the server's tracker uses it as it uses
the memory broker's table (``Broker.presence``), so the server does not know
which broker it runs on.

In Redis, per channel, with the channel's hash tag (one slot in a cluster):

=========================  =================================================
``tidings:{C}:members``    hash: ``CLIENT NODE`` -> the member's JSON, one
                           field per node that holds the client
``tidings:{C}:nodes``      sorted set: node id -> Unix ms until which the
                           node's members stay without a refresh
=========================  =================================================

One Lua script (:data:`PRESENCE`) does everything, atomically, with Redis's
clock: it first removes the nodes whose time ran out and their members (a node
that died), then applies the calling node's batch of joins and leaves, moves
the node's time on, and publishes the resulting joins and leaves, in one
pub/sub message, on the channel's pub/sub name (the one its messages travel
on). A client is a member while *any* node holds it: a connection moving from
one node to another is a join on the first node that holds it and a leave on
the last one to let it go, so neither, if the two overlap; a node that dies
takes its members with it within ``presence_timeout``, never leaving a ghost.

Timing: a node's members are kept :data:`NODE_TTL_SHARE` of
``presence_timeout`` past its last script on the channel, and each node runs
the script on each channel it has members on, or keeps a copy of, every
:data:`REFRESH_SHARE` of it; so a dead node's members leave within
``presence_timeout`` if any node serves the channel, and before any node
answers for it again otherwise (the script that loads a copy expires first).

Cost: nothing per delivered message. A join or leave waits up to
:data:`BATCH_SECONDS` for others, then all of a channel's go in one script
(up to :data:`MAX_CHANGES_PER_SCRIPT`): a storm of 10,000 joins is a few round
trips, not 10,000. Each channel with presence costs one script per node every
``presence_timeout`` x :data:`REFRESH_SHARE` seconds.

Copies follow the pattern of the message replicas (replica.py): a copy is
loaded after the channel's pub/sub name is followed, the events that arrive
meanwhile are applied after the snapshot (each sets or removes one member, so
applying some that the snapshot already has changes nothing), and a copy is
loaded again whenever its link comes back, its slot moved, or Redis forgot it.
The changes of a copy are coalesced like the memory broker's
(``Presence.drain``): the server's sweep tells them to the watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from tidings.brokers.redis.commands import Commands, Script
from tidings.brokers.redis.keys import ChannelKeys
from tidings.core.presence import Identity, Join, Member, Presence, PresencePolicy
from tidings.errors import BrokerError
from tidings.wire import jsonvalue

logger = logging.getLogger("tidings.redis")

#: Random bytes of a node's id (drawn at each start: a restarted node is a new node).
NODE_ID_BYTES = 9
#: Seconds a change waits for others to go in the same round trip.
BATCH_SECONDS = 0.02
#: Joins and leaves of one channel sent in one script at most.
MAX_CHANGES_PER_SCRIPT = 500
#: Share of ``presence_timeout`` a node's members outlive its last script on a channel.
NODE_TTL_SHARE = 2 / 3
#: Share of ``presence_timeout`` between two scripts of a node on one channel.
REFRESH_SHARE = 1 / 4
#: Seconds before a batch that Redis did not take is sent again.
RETRY_SECONDS = 0.5
#: The first line of a pub/sub payload of joins and leaves (a message's starts with
#: its epoch, letters and digits).
EVENTS_HEAD = b"!presence"

#: KEYS: members, nodes. ARGV: node, ttl (ms), present (1: the node has members here),
#: registered (1: it had, as far as it knows), gone (1: the node leaves altogether),
#: list (1: return the members), pub/sub channel, then CLIENT, JSON pairs (JSON '':
#: the node no longer holds CLIENT). Returns {rejoin, events, listing}: rejoin is 1 if
#: the node was registered but Redis had none of its members (expired, or lost), so it
#: must send them all again.
PRESENCE = Script("""
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local node = ARGV[1]
local events = {}
local score = redis.call('ZSCORE', KEYS[2], node)
local rejoin = 0
if ARGV[4] == '1' and (not score or tonumber(score) < now) then rejoin = 1 end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
if ARGV[5] == '1' then gone[#gone + 1] = node end
for _, dead in ipairs(gone) do redis.call('ZREM', KEYS[2], dead) end
local live = redis.call('ZRANGE', KEYS[2], 0, -1)
local function held(client, except)
  for _, other in ipairs(live) do
    if other ~= except and redis.call('HEXISTS', KEYS[1], client .. ' ' .. other) == 1 then
      return true
    end
  end
  return false
end
local left = {}
for _, dead in ipairs(gone) do
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', KEYS[1], cursor, 'MATCH', '* ' .. dead, 'COUNT', 1000)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      local field = page[2][i]
      if redis.call('HDEL', KEYS[1], field) == 1 then
        local client = string.sub(field, 1, #field - #dead - 1)
        if not left[client] and not held(client, dead) then
          left[client] = true
          events[#events + 1] = 'L' .. page[2][i + 1]
        end
      end
    end
  until cursor == '0'
end
if ARGV[5] ~= '1' then
  for i = 8, #ARGV, 2 do
    local client, member = ARGV[i], ARGV[i + 1]
    local field = client .. ' ' .. node
    local old = redis.call('HGET', KEYS[1], field)
    if member ~= '' then
      if old ~= member then
        redis.call('HSET', KEYS[1], field, member)
        if not held(client, node) then
          if old then events[#events + 1] = 'L' .. old end
          events[#events + 1] = 'J' .. member
        end
      end
    elseif old then
      redis.call('HDEL', KEYS[1], field)
      if not held(client, node) then events[#events + 1] = 'L' .. old end
    end
  end
  if ARGV[3] == '1' then
    local ttl = tonumber(ARGV[2])
    redis.call('ZADD', KEYS[2], now + ttl, node)
    for _, key in ipairs(KEYS) do
      if redis.call('PTTL', key) < 2 * ttl then redis.call('PEXPIRE', key, 2 * ttl) end
    end
  end
end
if #events > 0 then
  redis.call('SPUBLISH', ARGV[7], '!presence\\n' .. table.concat(events, '\\n'))
end
local listing = {}
if ARGV[6] == '1' then listing = redis.call('HGETALL', KEYS[1]) end
return {rejoin, #events, listing}
""")


def presence_keys(channel: str) -> list[str]:
    """The Redis keys of ``channel``'s members (see the module docstring)."""
    tag = f"tidings:{{{channel}}}"
    return [f"{tag}:members", f"{tag}:nodes"]


def encode_member(member: Member) -> bytes:
    return jsonvalue.encode(member.to_json())


def decode_member(raw: bytes) -> Member:
    """A member as :func:`encode_member` wrote it; ``ValueError`` if it is not one."""
    try:
        value = json.loads(raw)
        member = Member(str(value["client"]), value["user"], value["info"],
                        str(value["technique"]), int(value["since"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a member: {raw[:100]!r}") from exc
    if member.user is not None and not isinstance(member.user, str):
        raise ValueError(f"not a member: {raw[:100]!r}")
    return member


def members_of(listing: list[bytes]) -> list[Member]:
    """The members of a channel from its hash (``CLIENT NODE``, JSON, ...), oldest first;
    a client held by several nodes is listed once, as it joined first."""
    found: dict[str, Member] = {}
    for field, raw in zip(listing[::2], listing[1::2], strict=True):
        try:
            member = decode_member(raw)
        except ValueError:
            logger.warning("ignored a malformed member in Redis: %r", field[:100])
            continue
        known = found.get(member.client)
        if known is None or member.since < known.since:
            found[member.client] = member
    return sorted(found.values(), key=lambda member: member.since)


class SharedPresence(Presence):
    """This node's readers (:attr:`local`), sent to Redis; and copies of the shared member
    lists of the channels this node serves (the :class:`Presence` it is itself).

    The server's tracker calls ``hold``, ``release``, ``touch`` and ``expire``
    (this node's readers) and reads ``members``, ``count``, ``watch`` and
    ``drain`` (everyone's), as on the memory broker. The broker calls
    :meth:`ready` and :meth:`load` when a channel is read, :meth:`received` for
    each pub/sub payload of joins and leaves, :meth:`reload` when channels are
    followed again, :meth:`forget` when it gives a channel up, and
    :meth:`aclose` last.
    """

    __slots__ = ("_buffers", "_closed", "_commands", "_db", "_due", "_loaded", "_loads",
                 "_outbox", "_policy", "_registered", "_task", "_timeout", "_wake", "local",
                 "node", "scripts")

    def __init__(self, policy: Callable[[str], PresencePolicy],
                 commands: Callable[[], Commands], db: int, timeout: float) -> None:
        super().__init__()
        #: This node's own readers; what changes there is sent to Redis.
        self.local = Presence(record_all=True)
        #: This node's id in Redis (new at each start).
        self.node = secrets.token_urlsafe(NODE_ID_BYTES)
        self._policy = policy
        self._commands = commands
        self._db = db
        self._timeout = timeout
        #: channel -> client -> the member this node now has (None: it let it go), not sent yet.
        self._outbox: dict[str, dict[str, Member | None]] = {}
        #: Channels where Redis holds this node's members, as far as it knows.
        self._registered: set[str] = set()
        #: Channels whose copy is loaded, and the payloads that came while one loads.
        self._loaded: set[str] = set()
        self._buffers: dict[str, list[bytes]] = {}
        self._loads: dict[str, asyncio.Future[None]] = {}
        #: channel -> loop time of this node's next script on it.
        self._due: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Scripts run so far (for statistics and benchmarks).
        self.scripts = 0

    # this node's readers (the tracker) --------------------------------------------

    def hold(self, channel: str, identity: Identity, technique: str, wall_ms: int) -> bool:
        joined = self.local.hold(channel, identity, technique, wall_ms)
        if joined:
            self._changed()
        return joined

    def release(self, channel: str, client: str, now: float, linger: float = 0.0) -> bool:
        left = self.local.release(channel, client, now, linger)
        if left:
            self._changed()
        return left

    def touch(self, channel: str, identity: Identity, technique: str, now: float,
              timeout: float, wall_ms: int) -> bool:
        joined = self.local.touch(channel, identity, technique, now, timeout, wall_ms)
        if joined:
            self._changed()
        return joined

    def expire(self, now: float) -> int:
        """Expire this node's pollers, and start the refreshes that are due."""
        left = self.local.expire(now)
        if left:
            self._changed()
        due = [channel for channel, when in self._due.items() if when <= now]
        for channel in due:
            del self._due[channel]
            self._outbox.setdefault(channel, {})
        if due:
            self._changed()
        return left

    # copies (the broker) ----------------------------------------------------------

    def ready(self, channel: str) -> bool:
        """Whether ``channel`` needs no copy (no presence) or its copy is loaded."""
        return channel in self._loaded or not self._policy(channel).enabled

    async def load(self, channel: str) -> None:
        """Load the copy of ``channel`` (its pub/sub name must be followed already); raise
        ``BrokerError`` if Redis does not answer."""
        loading = self._loads.get(channel)
        if loading is not None:
            await asyncio.shield(loading)
            return
        loading = self._loads[channel] = asyncio.get_running_loop().create_future()
        loading.add_done_callback(_seen)
        self._loaded.discard(channel)
        self._buffers[channel] = []
        try:
            _rejoin, _events, listing = await self._run(channel, [], list_members=True)
        except BaseException as exc:
            self._buffers.pop(channel, None)
            error = exc if isinstance(exc, BrokerError) else BrokerError(
                f"could not load the members of {channel!r} from Redis")
            loading.set_exception(error)
            if isinstance(exc, BrokerError | asyncio.CancelledError):
                raise
            raise error from exc
        else:
            buffered = self._buffers.pop(channel, None)
            if buffered is not None:  # not forgotten meanwhile
                self._replace(channel, members_of(listing))
                self._loaded.add(channel)
                for payload in buffered:
                    self._apply(channel, payload)
                self._schedule(channel)
            loading.set_result(None)
        finally:
            del self._loads[channel]

    def received(self, channel: str, payload: bytes) -> None:
        """A pub/sub payload of joins and leaves on ``channel`` (:data:`EVENTS_HEAD`)."""
        buffered = self._buffers.get(channel)
        if buffered is not None:
            buffered.append(payload)
        elif channel in self._loaded:
            self._apply(channel, payload)

    async def reload(self, channels: list[str]) -> None:
        """Load again the copies of ``channels`` that were loaded (their link came back:
        joins and leaves may have been missed)."""
        async def one(channel: str) -> None:
            with contextlib.suppress(BrokerError):
                await self.load(channel)

        await asyncio.gather(*(one(c) for c in channels if c in self._loaded))

    def forget(self, channel: str) -> None:
        """Give up the copy of ``channel`` (the broker no longer follows it)."""
        self._loaded.discard(channel)
        self._buffers.pop(channel, None)
        super().forget(channel)
        if channel not in self._registered:
            self._due.pop(channel, None)

    def statistics(self) -> dict[str, object]:
        return {"node": self.node, "copies": len(self._loaded),
                "registered": len(self._registered), "unsent": len(self._outbox),
                "scripts": self.scripts}

    async def aclose(self) -> None:
        """Stop sending, then take this node's members out of Redis (within the timeout):
        other nodes see them leave at once instead of after ``presence_timeout``."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._collect()
        channels = self._registered | set(self._outbox)

        async def leave(channel: str) -> None:
            with contextlib.suppress(BrokerError):
                await self._run(channel, [], gone=True)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await asyncio.gather(*(leave(channel) for channel in channels))

    # sending ----------------------------------------------------------------------

    def _changed(self) -> None:
        if self._closed:
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send_forever())
        self._wake.set()

    async def _send_forever(self) -> None:
        """Owned by this object (cancelled by :meth:`aclose`): send what changed, in
        batches; one script per channel at a time, so a channel's batches stay in order."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(BATCH_SECONDS)
            self._wake.clear()
            self._collect()
            outbox, self._outbox = self._outbox, {}
            if not outbox:
                continue
            results = await asyncio.gather(
                *(self._send(channel, changes) for channel, changes in outbox.items()),
                return_exceptions=True)
            failed = False
            for result in results:
                if isinstance(result, BaseException):
                    failed = True
                    if not isinstance(result, BrokerError):
                        logger.error("sending presence to Redis failed", exc_info=result)
            if failed:
                await asyncio.sleep(RETRY_SECONDS)
                self._wake.set()

    def _collect(self) -> None:
        """Move this node's joins and leaves since the last time into the outbox."""
        outbox = self._outbox
        for change in self.local.drain():
            changes = outbox.setdefault(change.channel, {})
            changes[change.member.client] = change.member if isinstance(change, Join) else None

    async def _send(self, channel: str, changes: dict[str, Member | None]) -> None:
        """Send ``changes`` (possibly none: a refresh); on failure, put back what was not
        sent (behind anything newer) and raise ``BrokerError``."""
        items = list(changes.items())
        start = 0
        try:
            while True:
                chunk = items[start:start + MAX_CHANGES_PER_SCRIPT]
                await self._run(channel, chunk)
                start += MAX_CHANGES_PER_SCRIPT
                if start >= len(items):
                    break
        except BaseException:
            unsent = dict(items[start:])
            newer = self._outbox.get(channel)
            self._outbox[channel] = unsent if newer is None else {**unsent, **newer}
            raise
        self._schedule(channel)

    async def _run(self, channel: str, changes: list[tuple[str, Member | None]], *,
                   list_members: bool = False, gone: bool = False) -> Any:
        """Run :data:`PRESENCE` on ``channel`` within the timeout."""
        present = bool(self.local.count(channel)[0]) and not gone
        ttl_ms = max(1, int(self._policy(channel).timeout * NODE_TTL_SHARE * 1000))
        args: list[Any] = [self.node, ttl_ms, int(present), int(channel in self._registered),
                           int(gone), int(list_members), ChannelKeys.of(channel, self._db).notify]
        for client, member in changes:
            args += (client, b"" if member is None else encode_member(member))
        self.scripts += 1
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._commands().run(PRESENCE, presence_keys(channel), args)
        except TimeoutError:
            raise BrokerError(f"Redis did not answer within {self._timeout} s") from None
        if present:
            self._registered.add(channel)
        else:
            self._registered.discard(channel)
        if reply[0]:
            logger.warning("Redis had lost this node's members of %s (expired while it was "
                           "away, or Redis restarted); sending them again", channel)
            again = self._outbox.setdefault(channel, {})
            for member in self.local.members(channel):
                again.setdefault(member.client, member)
            self._changed()
        return reply

    def _schedule(self, channel: str) -> None:
        """Plan this node's next script on ``channel``, if it has members there or a copy."""
        if channel in self._registered or channel in self._loaded:
            timeout = self._policy(channel).timeout
            self._due[channel] = asyncio.get_running_loop().time() + timeout * REFRESH_SHARE
        else:
            self._due.pop(channel, None)

    # the copies -------------------------------------------------------------------

    def _apply(self, channel: str, payload: bytes) -> None:
        for line in payload.split(b"\n")[1:]:
            try:
                member = decode_member(line[1:])
            except ValueError:
                logger.warning("ignored a malformed presence event on %s", channel)
                continue
            if line[:1] == b"J":
                self.put(channel, member)
            else:
                self.drop(channel, member.client)

    def _replace(self, channel: str, members: list[Member]) -> None:
        """Make the copy of ``channel`` hold ``members`` (each difference is noted)."""
        clients = {member.client for member in members}
        for member in list(self.members(channel)):
            if member.client not in clients:
                self.drop(channel, member.client)
        for member in members:
            self.put(channel, member)


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
