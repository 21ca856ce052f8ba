"""Running the Lua scripts (scripts.py) on Redis: how a node sends commands.

On a single Redis, :class:`SingleNode` sends every command on one
pipelined connection: concurrent publishes go out back to back without
waiting for each other, and replies come back in the order the commands
were sent, each to its waiter. It speaks RESP itself and parses with hiredis,
which costs a small fraction of a general-purpose client's time per command
(docs/benchmarks.md). On a Redis Cluster, :class:`ClusterNodes` hands the
scripts to redis-py's cluster client, which routes each to the node owning
its keys' slot and follows ``MOVED`` (updating its slot map) and ``ASK``.
While a slot is being moved, a script whose keys are split between the two
nodes is answered ``TRYAGAIN``; :class:`ClusterNodes` tries again with
backoff until it runs or the caller's timeout ends it.

Both raise :class:`~tidings.errors.BrokerError` when Redis cannot be reached
or refuses a command; callers bound each call with their own timeout.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl as ssl_module
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import hiredis

from tidings.brokers.redis.keys import ChannelKeys
from tidings.brokers.redis.link import Address, command
from tidings.errors import BrokerError, BrokerUnanswered

#: Delays (seconds) between attempts of a script the cluster answers
#: ``TRYAGAIN`` (a slot half moved): doubling from the first to the last.
TRYAGAIN_DELAYS = (0.005, 0.1)


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA-1, by which ``EVALSHA`` names it."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


class Commands(Protocol):
    """What the broker needs from Redis besides pub/sub."""

    cluster: bool

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` with ``keys`` and ``args``; return its reply."""

    async def ping(self) -> None: ...

    def address_of(self, channel: str) -> Address:
        """The node that holds ``channel`` (for its pub/sub subscription)."""

    async def locate(self, channels: list[str]) -> dict[str, Address]:
        """Where ``channels`` are now, asking Redis again (after a failover)."""

    async def aclose(self) -> None: ...


async def open_commands(address: Address, db: int, url: str, seconds: float) -> Commands:
    """Connect to Redis at ``address`` (each step within ``seconds``); a cluster is detected."""
    pipeline = Pipeline(address)
    await pipeline.connect(seconds, db)
    try:
        async with asyncio.timeout(seconds):
            info = await pipeline.call("INFO", "cluster")
    except TimeoutError:
        pipeline.close()
        raise BrokerError(f"Redis at {address} did not answer within {seconds} s") from None
    if b"cluster_enabled:1" not in info:
        return SingleNode(address, db, seconds, pipeline)
    pipeline.close()
    return await ClusterNodes.open(url, seconds, address)


class Pipeline(asyncio.Protocol):
    """One connection; each :meth:`call` is answered in the order it was sent."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def connect(self, seconds: float, db: int) -> None:
        """Open the connection, authenticate and select ``db``."""
        loop = asyncio.get_running_loop()
        context = ssl_module.create_default_context() if self.address.tls else None
        try:
            async with asyncio.timeout(seconds):
                await loop.create_connection(lambda: self, self.address.host,
                                             self.address.port, ssl=context)
                if self.address.password is not None:
                    user = [self.address.username] if self.address.username else []
                    await self.call("AUTH", *user, self.address.password)
                if db:
                    await self.call("SELECT", str(db))
        except (OSError, TimeoutError) as exc:
            self.close()
            raise BrokerError(f"cannot reach Redis at {self.address}: "
                              f"{exc or type(exc).__name__}") from None

    def call(self, *args: bytes | str | int) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply (or a ``BrokerError``)."""
        if self._transport is None:
            raise BrokerError(f"not connected to Redis at {self.address}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._transport.write(command(*args))
        return future

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while (reply := reader.gets()) is not False:
            future = waiting.popleft()
            if future.done():
                continue  # its caller gave up waiting (a timeout)
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(BrokerError(f"Redis at {self.address} refused: {reply}"))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(BrokerUnanswered(
                    f"the connection to Redis {self.address} broke before it answered"))


class SingleNode:
    """Scripts on one Redis over one :class:`Pipeline`, reopened when it breaks."""

    cluster = False

    def __init__(self, address: Address, db: int, timeout: float, pipeline: Pipeline) -> None:
        self._address = address
        self._db = db
        self._timeout = timeout
        self._pipeline = pipeline
        self._reopening = asyncio.Lock()

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        pipeline = await self._connected()
        evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            return await pipeline.call(*evalsha)
        except BrokerError as exc:
            if "NOSCRIPT" not in str(exc):
                raise
        # A Redis that restarted (or ran SCRIPT FLUSH) forgot the script: load it again.
        await pipeline.call("SCRIPT", "LOAD", script.text)
        return await pipeline.call(*evalsha)

    async def ping(self) -> None:
        await (await self._connected()).call("PING")

    def address_of(self, channel: str) -> Address:
        return self._address

    async def locate(self, channels: list[str]) -> dict[str, Address]:
        return dict.fromkeys(channels, self._address)

    async def aclose(self) -> None:
        self._pipeline.close()

    async def _connected(self) -> Pipeline:
        if self._pipeline.connected:
            return self._pipeline
        async with self._reopening:
            if not self._pipeline.connected:
                pipeline = Pipeline(self._address)
                await pipeline.connect(self._timeout, self._db)
                self._pipeline = pipeline
        return self._pipeline


class ClusterNodes:
    """Scripts on a Redis Cluster, through redis-py's cluster client."""

    cluster = True

    def __init__(self, client: Any, address: Address) -> None:
        self._client = client
        self._address = address  # the credentials and TLS of every node's address
        self._scripts: dict[Script, Any] = {}

    @classmethod
    async def open(cls, url: str, seconds: float, address: Address) -> ClusterNodes:
        from redis.asyncio import RedisCluster
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError
        from redis.retry import Retry

        # reinitialize_steps=0: a MOVED patches that one slot in the map. redis-py's
        # default (5) rebuilds the map on every fifth MOVED by closing every
        # connection, in-use ones too, so during a slot move a publish running
        # concurrently on another slot broke with "Connection closed by server".
        client = RedisCluster.from_url(url, socket_timeout=seconds,
                                       socket_connect_timeout=seconds,
                                       retry=Retry(NoBackoff(), 0), max_connections=64,
                                       reinitialize_steps=0)
        try:
            async with asyncio.timeout(seconds):
                await client.initialize()
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise BrokerError(f"cannot reach the Redis Cluster at {url}: {exc}") from None
        return cls(client, address)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script``; while its slot is half moved, try again until it runs.

        The caller must bound the call with a timeout: during a long
        migration this waits for the move to end.
        """
        runner = self._scripts.get(script)
        if runner is None:
            runner = self._scripts[script] = self._client.register_script(script.text)
        delay = TRYAGAIN_DELAYS[0]
        while True:
            try:
                return await self._call(runner(keys=keys, args=args))
            except _Unsettled:
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, TRYAGAIN_DELAYS[1])

    async def ping(self) -> None:
        await self._call(self._client.ping())

    def address_of(self, channel: str) -> Address:
        node = self._client.get_node_from_key(ChannelKeys.of(channel).notify)
        if node is None:
            raise BrokerError(f"no Redis Cluster node holds the slot of {channel!r}")
        template = self._address
        return Address(node.host, int(node.port), template.username, template.password,
                       template.tls)

    async def locate(self, channels: list[str]) -> dict[str, Address]:
        """Read the slot map again (from any node that answers), then say where each is.

        After a failover, the map redis-py holds still names the dead master
        until a command fails on it; a pub/sub link that cannot reconnect asks here.
        """
        from redis.exceptions import RedisError

        try:
            await self._client.nodes_manager.initialize()
        except (RedisError, OSError) as exc:
            raise BrokerError(f"Redis Cluster: cannot read the slot map: {exc}") from None
        return {channel: self.address_of(channel) for channel in channels}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        from redis.exceptions import (
            ClusterError,
            RedisClusterException,
            RedisError,
            TryAgainError,
        )
        from redis.exceptions import ConnectionError as LinkBroke
        from redis.exceptions import TimeoutError as NoAnswer

        try:
            return await awaitable
        except TryAgainError as exc:
            raise _Unsettled(f"Redis Cluster: {exc}") from None
        except ClusterError as exc:
            if "TTL exhausted" in str(exc):  # redis-py's own tries ran out on TRYAGAIN
                raise _Unsettled(f"Redis Cluster: slot moving ({exc})") from None
            raise BrokerError(f"Redis Cluster: {exc}") from None
        except (LinkBroke, NoAnswer, OSError) as exc:
            # redis-py does not say whether the command had been sent: it may have run.
            raise BrokerUnanswered(f"Redis Cluster: {exc or type(exc).__name__}") from None
        except (RedisError, RedisClusterException) as exc:
            # Refused, or not sent at all (no node serves the slot during a failover).
            raise BrokerError(f"Redis Cluster: {exc or type(exc).__name__}") from None
        except Exception as exc:
            # redis-py closes every connection when one breaks; a command running on
            # one of them meanwhile fails inside redis-py (AttributeError seen in the
            # chaos soak during failovers). Whatever it is, it is this command's
            # failure, and it may have been sent.
            raise BrokerUnanswered(f"Redis Cluster: {type(exc).__name__}: {exc}") from None


class _Unsettled(BrokerError):
    """A script's slot is in the middle of a move (``TRYAGAIN``): try it again shortly.

    :meth:`ClusterNodes.run` catches it; anywhere else it is a broker failure.
    """
