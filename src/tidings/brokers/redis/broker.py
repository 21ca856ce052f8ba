"""The Redis broker: channel logs in Redis, shared by every tidings node.

Each channel's log is a Redis stream (keys.py) that Lua scripts append to and
read (scripts.py). A node keeps a :class:`~replica.Replica` of each channel
it serves, so reads stay synchronous (the contract in brokers/base.py):

* a replica is loaded the first time a client reads the channel on this node
  (:meth:`RedisBroker.prepare`): the node subscribes to the channel's pub/sub
  name on its link, *then* fetches the retained entries, so nothing published
  in between is missed;
* new messages arrive once per node over sharded pub/sub, whatever the number
  of local subscribers, and the local hub fans them out;
* a client whose cursor is ahead of the replica (it read a newer message on
  another node) waits for a sync instead of being refused;
* a replica nobody has read for ``idle_replica_seconds`` is forgotten and
  its pub/sub name unsubscribed.

When Redis is unreachable, publishes fail with :class:`BrokerError` (503)
and reads of channels this node does not hold yet too, while subscribers
stay connected. When it comes back, each link resubscribes and every replica
syncs: what was published meanwhile is delivered, and a log that was lost
(or trimmed past the replica) becomes a gap for its subscribers.
docs/topics/redis.md has the design and its failure cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from tidings.brokers.base import Added, Broker, Replayed, UserChannelChange
from tidings.brokers.redis import pubsub, scripts
from tidings.brokers.redis.commands import Commands, open_commands
from tidings.brokers.redis.keys import (
    USERS,
    ChannelKeys,
    channel_of,
    decode_entry,
    decode_notice,
    idempotency_record,
    notice_position,
    stored_message,
    user_channels_key,
)
from tidings.brokers.redis.link import Address, parse_redis_url
from tidings.brokers.redis.presence import EVENTS_HEAD, SharedPresence
from tidings.brokers.redis.pubsub import PubSub
from tidings.brokers.redis.replica import Changes, Replica
from tidings.core.cursor import Position, Start, new_epoch, parse_position
from tidings.core.fanout import Hub
from tidings.core.idempotency import fingerprint
from tidings.core.log import BackRead, ChannelLog, Read, Retention
from tidings.core.message import Message
from tidings.core.presence import Presence, PresencePolicy
from tidings.errors import (
    BrokerError,
    BrokerUnanswered,
    IdempotencyConflict,
    InvalidCursor,
    UsageError,
)

logger = logging.getLogger("tidings.redis")

#: How long Redis keeps the metadata of a channel that was read but never published to (ms).
UNUSED_META_TTL_MS = 24 * 3600 * 1000
#: Seconds between syncs of followed channels that nothing was published to yet,
#: which keep their metadata from expiring in Redis while nodes still read them.
UNUSED_META_REFRESH_SECONDS = UNUSED_META_TTL_MS / 1000 / 4
# What scripts.PUBLISH did with an idempotency key it had seen (0: stored the message).
REPLAYED, CONFLICT = 1, 2
#: Syncs run at once after a reconnection or after slots moved (for all links together).
SYNC_CONCURRENCY = 32


class RedisBroker(Broker):
    """Channel logs in Redis (or a Redis Cluster), with a local replica per channel in use."""

    def __init__(
        self,
        url: str,
        retention: Callable[[str], Retention] = lambda channel: Retention(),
        *,
        timeout: float = 5.0,
        idle_replica_seconds: float = 60.0,
    ) -> None:
        self.hub = Hub()
        self.url = url
        try:
            self._node_address, self._db = parse_redis_url(url)
        except ValueError as exc:
            raise UsageError(f"invalid Redis URL {url!r}: {exc}") from None
        self._retention = retention
        self._timeout = timeout
        self._idle = idle_replica_seconds
        self._commands: Commands | None = None
        self.cluster = False
        self._replicas: dict[str, Replica] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._sync_locks: dict[str, asyncio.Lock] = {}
        self._sync_wanted: set[str] = set()
        self._pubsub = PubSub(self._db, timeout, self._on_message, self._failure, self._back)
        self._back_syncs = asyncio.Semaphore(SYNC_CONCURRENCY)
        self._probing = False
        self._meta_refreshed = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._last_error: str | None = None
        self._failed = False
        self._users_followed = False
        self._users_following = asyncio.Lock()
        #: Members across nodes (brokers/redis/presence.py), once the server asked for them.
        self._presence: SharedPresence | None = None

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect; if Redis is not there yet, go on connecting in the background."""
        try:
            await self._connect()
        except (BrokerError, TimeoutError) as exc:
            self._failure(exc)
            logger.warning("Redis at %s is unreachable (%s); retrying in the background",
                           self._where(), exc)
            self._spawn(self._connect_later())

    async def _connect_later(self) -> None:
        delay = pubsub.RECONNECT_DELAYS[0]
        while not self._closed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, pubsub.RECONNECT_DELAYS[1])
            try:
                await self._connect()
            except (BrokerError, TimeoutError) as exc:
                self._failure(exc)
                continue
            logger.info("connected to Redis at %s", self._where())
            return

    async def _connect(self) -> None:
        self._commands = await open_commands(self._node_address, self._db, self.url,
                                             self._timeout)
        self.cluster = self._commands.cluster
        if self.cluster:
            self._pubsub.locate = self._commands.locate
        self._succeeded()

    def presence(self, policy: Callable[[str], PresencePolicy]) -> Presence:
        """This node's readers, kept in Redis with every other node's (presence.py)."""
        self._presence = SharedPresence(policy, self._require_commands, self._db,
                                        self._timeout)
        return self._presence

    async def aclose(self) -> None:
        if self._presence is not None and not self._closed:
            await self._presence.aclose()  # while Redis is still reachable: members leave
        self._closed = True
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pubsub.aclose()
        if self._commands is not None:
            await self._commands.aclose()

    # publishing --------------------------------------------------------------

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> Message:
        keys = ChannelKeys.of(channel, self._db)
        retention = self._retention(channel)
        commands = self._require_commands()
        replica = self._replicas.get(channel)
        known = replica.log.end if replica is not None and replica.log is not None else None
        key = idempotency_key or ""
        try:
            async with asyncio.timeout(self._timeout):
                epoch, seq, now, outcome = await commands.run(
                    scripts.PUBLISH,
                    [keys.log, keys.meta, idempotency_record(channel, key)] if key
                    else [keys.log, keys.meta],
                    [new_epoch(), UNUSED_META_TTL_MS, known.epoch if known else "",
                     known.seq if known else 0, data, retention.size,
                     int(retention.ttl * 1000), key, fingerprint(data) if key else "",
                     int(retention.idempotency_window * 1000), keys.notify])
        except TimeoutError:
            self._failure("timeout")
            raise BrokerUnanswered(f"Redis at {self._where()} did not answer within "
                                   f"{self._timeout} s; the message may or may not be "
                                   "stored") from None
        except BrokerUnanswered as exc:
            self._failure(exc)
            raise BrokerUnanswered(f"Redis at {self._where()} did not answer ({exc}); "
                                   "the message may or may not be stored") from None
        except BrokerError as exc:
            self._failure(exc)
            raise BrokerError(f"Redis at {self._where()} is unavailable ({exc}); "
                              "the message was not published") from None
        self._succeeded()
        position = Position(epoch.decode(), int(seq))
        if outcome == REPLAYED:
            return Replayed(channel, position, data, int(now))
        if outcome == CONFLICT:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used on {channel!r} for another body "
                f"(message {position})")
        message = stored_message(channel, position, data, now)
        replica = self._replicas.get(channel)
        if replica is not None:
            changes = replica.offer(message)
            if replica.log is not None and replica.log.epoch == message.position.epoch:
                # A hole before our own message is only messages published just
                # before it, whose pub/sub copies are on their way: no sync needed.
                changes.sync = False
            self._apply(replica, changes)
        return message

    # reading -----------------------------------------------------------------

    def ready(self, starts: Mapping[str, Start]) -> bool:
        now = time.monotonic()
        replicas = self._replicas
        for channel, start in starts.items():
            replica = replicas.get(channel)
            if replica is None or (log := replica.log) is None:
                return False
            if isinstance(start, Position) and (start.epoch != log.epoch
                                                or start.seq > log.end.seq):
                return False  # from another node's future, or of another epoch: ask Redis
            if self._presence is not None and not self._presence.ready(channel):
                return False  # its members are not copied here yet
            replica.used = now
        return True

    async def prepare(self, starts: Mapping[str, Start]) -> None:
        for channel, start in starts.items():
            replica = self._replicas.get(channel)
            if replica is None or replica.log is None:
                await self._load(channel)  # or wait for a load another read started
                replica = self._replicas[channel]
            if not self.ready({channel: start}):
                # A cursor from the future (read on another node) or of another
                # epoch: only a sync that starts now can tell.
                await self._sync_replica(replica)
            if self._presence is not None and not self._presence.ready(channel):
                await self._presence.load(channel)
            replica.used = time.monotonic()

    def read(self, channel: str, start: Start, limit: int) -> Read:
        return self._prepared(channel).read(start, limit)

    def same_read(self, channel: str, start: Start, limit: int, found: Read) -> bool:
        # (``ready`` holds: the start was read from this very log, which has not moved)
        replica = self._replicas.get(channel)
        if replica is None or (log := replica.log) is None or not log.still_at_end(found):
            return False
        if self._presence is not None and not self._presence.ready(channel):
            return False
        replica.used = time.monotonic()
        return True

    def read_back(self, channel: str, before: Start, since: Start, limit: int) -> BackRead:
        # The replica holds every retained entry (its first sync fetched them
        # with XREVRANGE, newest first, up to the retention size), so reading
        # backwards needs no round trip, and answers from the same log as
        # forward reads: a page back and a read on from its top agree.
        return self._prepared(channel).read_back(before, since, limit)

    def _prepared(self, channel: str) -> ChannelLog:
        """The replica's log of ``channel``, trimmed by age; it must have been prepared."""
        replica = self._replicas.get(channel)
        if replica is None or replica.log is None:
            raise BrokerError(f"channel {channel!r} was read before it was prepared")
        log = replica.log
        if len(log):
            log.trim(int(time.time() * 1000))
        return log

    # replicas ----------------------------------------------------------------

    async def _load(self, channel: str) -> None:
        """Follow ``channel`` on its link, then fetch its log (one load at a time)."""
        loading = self._loading.get(channel)
        if loading is not None:
            await asyncio.shield(loading)
            return
        loading = self._loading[channel] = asyncio.get_running_loop().create_future()
        loading.add_done_callback(_consume)
        replica = self._replicas[channel] = Replica(channel, self._retention(channel))
        replica.used = time.monotonic()
        try:
            await self._pubsub.follow(channel, self._address(channel))
            await self._sync_replica(replica)
        except BaseException as exc:
            self._forget(channel)
            loading.set_exception(exc if isinstance(exc, BrokerError) else
                                  BrokerError(f"could not load {channel!r} from Redis"))
            raise
        else:
            loading.set_result(None)
        finally:
            del self._loading[channel]

    async def _sync_replica(self, replica: Replica) -> None:
        """Bring ``replica`` up to date with Redis; deliver what it was missing."""
        channel = replica.channel
        lock = self._sync_locks.setdefault(channel, asyncio.Lock())
        async with lock:
            if self._replicas.get(channel) is not replica:
                return  # forgotten meanwhile
            self._sync_wanted.discard(channel)
            keys = ChannelKeys.of(channel, self._db)
            log = replica.log
            started = replica.received
            commands = self._require_commands()
            try:
                async with self._deadline():
                    epoch, last, raw = await commands.run(
                        scripts.SYNC, [keys.log, keys.meta],
                        [new_epoch(), UNUSED_META_TTL_MS, "" if log is None else log.epoch,
                         0 if log is None else log.end.seq, replica.retention.size])
            except BrokerError as exc:
                self._failure(exc)
                self._sync_wanted.add(channel)
                raise
            self._succeeded()
            epoch_text = epoch.decode()
            entries = [decode_entry(channel, epoch_text, item) for item in reversed(raw)]
            self._apply(replica, replica.synced(epoch_text, int(last), entries, started))

    def _apply(self, replica: Replica, changes: Changes) -> None:
        hub = self.hub
        if changes.gap is not None:
            hub.skip(changes.gap)
        for message in changes.messages:
            hub.publish(message)
        if changes.sync:
            self._schedule_sync(replica)

    def _schedule_sync(self, replica: Replica) -> None:
        channel = replica.channel
        if channel in self._sync_wanted:
            return
        self._sync_wanted.add(channel)
        self._spawn(self._sync_in_background(replica))

    async def _sync_in_background(self, replica: Replica) -> None:
        with contextlib.suppress(BrokerError):
            await self._sync_replica(replica)
        # On failure it stays wanted; the link's reconnection syncs it again.

    def _forget(self, channel: str) -> None:
        self._replicas.pop(channel, None)
        self._sync_locks.pop(channel, None)
        self._sync_wanted.discard(channel)
        self._pubsub.unfollow(channel)
        if self._presence is not None:
            self._presence.forget(channel)

    def _on_message(self, name: str, payload: bytes) -> None:
        try:
            channel = channel_of(name)
        except ValueError:
            return
        if channel == USERS:
            self._user_channel_changed(payload)
            return
        if payload.startswith(EVENTS_HEAD):
            if self._presence is not None:
                self._presence.received(channel, payload)
            return
        replica = self._replicas.get(channel)
        if replica is None:
            return
        try:
            position = notice_position(payload)
            log = replica.log
            if log is not None and position.epoch == log.epoch and position.seq <= log.end.seq:
                return  # already here: most often this node's own publish, coming back
            message = decode_notice(channel, position, payload)
        except ValueError:
            logger.warning("ignored a malformed message on %s", name)
            return
        self._apply(replica, replica.offer(message))

    async def _back(self, channels: list[str]) -> None:
        """``channels`` are followed again (a link is back, or their slot moved): sync them.

        Every link's syncs share one limit, so a slot of many channels moving
        does not start all their syncs at once.
        """
        self._succeeded()
        if USERS in channels and self.on_user_channels_lost is not None:
            self.on_user_channels_lost()
        limit = self._back_syncs

        async def one(channel: str) -> None:
            replica = self._replicas.get(channel)
            if replica is None:
                return
            async with limit:
                with contextlib.suppress(BrokerError):
                    await self._sync_replica(replica)

        await asyncio.gather(*(one(channel) for channel in channels))
        if self._presence is not None:
            await self._presence.reload(channels)

    # users' server-side channels ---------------------------------------------------

    async def user_channels(self, user: str) -> dict[str, Position]:
        await self._follow_user_changes()
        flat = await self._run_user_script(scripts.USER_CHANNELS, user, [])
        channels = {}
        for channel, start in zip(flat[::2], flat[1::2], strict=True):
            with contextlib.suppress(ValueError, InvalidCursor):
                channels[channel.decode()] = parse_position(start.decode())
        return channels

    async def _follow_user_changes(self) -> None:
        """Follow the changes of users' channels (keys.USERS) before the first set is read,
        so that nothing changed after a read goes unheard. Only nodes that read users'
        sets follow them; the link stays followed (and is resynced) from then on."""
        if self._users_followed:
            return
        async with self._users_following:
            if not self._users_followed:
                self._require_commands()
                await self._pubsub.follow(USERS, self._address(USERS))
                self._users_followed = True

    async def add_user_channel(self, user: str, channel: str, start: Position,
                               limit: int) -> Added:
        change = _change_payload(user, channel, start)
        outcome = await self._run_user_script(
            scripts.ADD_USER_CHANNEL, user,
            [channel, str(start), limit, ChannelKeys.of(USERS, self._db).notify, change])
        return "added" if outcome == 1 else "present" if outcome == 0 else "full"

    async def remove_user_channel(self, user: str, channel: str) -> bool:
        change = _change_payload(user, channel, None)
        outcome = await self._run_user_script(
            scripts.REMOVE_USER_CHANNEL, user,
            [channel, ChannelKeys.of(USERS, self._db).notify, change])
        return bool(outcome == 1)

    async def _run_user_script(self, script: Any, user: str, args: list[Any]) -> Any:
        commands = self._require_commands()
        try:
            async with self._deadline():
                result = await commands.run(script, [user_channels_key(user)], args)
        except BrokerError as exc:
            self._failure(exc)
            raise BrokerError(f"Redis at {self._where()} is unavailable ({exc}); the "
                              "user's channels were not read or changed") from None
        self._succeeded()
        return result

    def _user_channel_changed(self, payload: bytes) -> None:
        try:
            fields = json.loads(payload)
            start = fields["s"]
            change = UserChannelChange(fields["u"], fields["c"],
                                       None if start is None else parse_position(start))
        except (ValueError, KeyError, TypeError, InvalidCursor):
            logger.warning("ignored a malformed change of a user's channels")
            return
        if self.on_user_channel is not None:
            self.on_user_channel(change)

    def _address(self, channel: str) -> Address:
        """The Redis node that holds ``channel`` (in a cluster, the owner of its slot)."""
        return self._require_commands().address_of(channel)

    # upkeep ------------------------------------------------------------------

    def maintain(self) -> None:
        now_ms = int(time.time() * 1000)
        now = time.monotonic()
        hub = self.hub
        for channel, replica in list(self._replicas.items()):
            log = replica.log
            if log is None:
                continue
            if len(log):
                log.trim(now_ms)
            if (now - replica.used > self._idle and not hub.subscribers(channel)
                    and channel not in self._loading):
                self._forget(channel)
        self._pubsub.keep_alive()
        for channel in list(self._sync_wanted):
            wanted = self._replicas.get(channel)
            if wanted is not None and self._pubsub.connected(channel):
                self._sync_wanted.discard(channel)
                self._schedule_sync(wanted)
        if now - self._meta_refreshed > UNUSED_META_REFRESH_SECONDS:
            self._meta_refreshed = now
            for replica in self._replicas.values():
                if replica.log is not None and replica.log.end.seq == 0:
                    self._schedule_sync(replica)
        if self._failed and self._commands is not None and not self._probing:
            self._probing = True
            self._spawn(self._probe())

    async def _probe(self) -> None:
        """Ask Redis for a sign of life after a failure.

        A node that only serves subscribers sends no command of its own while
        its links stay up, so without this it would go on reporting Redis as
        unavailable (``/healthz``, status notices) after Redis is back.
        """
        try:
            async with self._deadline():
                await self._require_commands().ping()
        except BrokerError as exc:
            self._failure(exc)
        else:
            self._succeeded()
        finally:
            self._probing = False

    def health(self) -> dict[str, object]:
        return {
            "kind": "redis",
            "status": "unavailable" if self._failed or self._commands is None else "ok",
            "redis": self._where(),
            "cluster": self.cluster,
            "channels": len(self._replicas),
            "links": self._pubsub.health(),
            **({"presence": self._presence.statistics()} if self._presence is not None else {}),
            "last_error": self._last_error,
        }

    # helpers -----------------------------------------------------------------

    def _require_commands(self) -> Commands:
        if self._commands is None:
            raise BrokerError(f"not connected to Redis at {self._where()} yet; retrying")
        return self._commands

    @contextlib.asynccontextmanager
    async def _deadline(self) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except TimeoutError:
            self._failure("timeout")
            raise BrokerError(f"Redis at {self._where()} did not answer within "
                              f"{self._timeout} s") from None

    def _failure(self, error: object) -> None:
        self._last_error = str(error) or type(error).__name__
        if not self._failed:
            self._failed = True
            if self.on_status is not None:
                self.on_status(False, f"Redis at {self._where()}: {self._last_error}")

    def _succeeded(self) -> None:
        if self._failed and self._pubsub.all_connected:
            self._failed = False
            if self.on_status is not None:
                self.on_status(True, f"Redis at {self._where()}")

    def _where(self) -> str:
        return f"{self._node_address}/{self._db}"

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _change_payload(user: str, channel: str, start: Position | None) -> str:
    """What the pub/sub channel of keys.USERS carries for one change."""
    return json.dumps({"u": user, "c": channel, "s": None if start is None else str(start)},
                      separators=(",", ":"))


def _consume(future: asyncio.Future[None]) -> None:
    """Mark a shared future's exception as seen (its waiters got it already)."""
    if not future.cancelled():
        future.exception()
