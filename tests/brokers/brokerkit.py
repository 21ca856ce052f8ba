"""Brokers under test, for the one conformance suite every broker passes.

``test_broker_conformance.py`` is written against :class:`~tidings.brokers.base.Broker`
only; a :class:`BrokerHarness` supplies brokers of one kind:

* :meth:`BrokerHarness.open_broker` — a started broker on the test's store,
  which is empty when the test begins;
* :meth:`BrokerHarness.second_node` — another broker on the same store (only
  harnesses with :attr:`~BrokerHarness.shared` set: several nodes over one Redis);
* :meth:`BrokerHarness.node_in_thread` — another node on the same store, run
  by an event loop in another thread (:class:`ThreadNode`): its publishes
  complete while the test's loop stands still, so the test's nodes have
  certainly not heard of them yet;
* :meth:`BrokerHarness.lose_store` — the store loses everything (a restarted
  memory broker, a ``FLUSHALL``), so logs start again in new epochs.

Adding a broker to the suite is a harness class here, a line in
:func:`open_harness` and its name in :data:`KINDS` (and in :data:`SHARED_KINDS`
if several nodes can share its store).

:func:`read_ready` reads the way the server does (``ready``, else ``await
prepare``, then the synchronous ``read``), and :class:`Recorder` is a hub
subscriber whose deliveries can be awaited. Every wait is bounded by a
multiple of ``UNIT`` seconds.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.redis import RedisBroker
from tidings.core.cursor import Start
from tidings.core.log import Gap, Read, Retention
from tidings.core.message import Message
from tidings.testing import UNIT

T = TypeVar("T")

#: Every kind of broker the suite runs against.
KINDS = ("memory", "redis")
#: The kinds whose store several brokers (nodes) can share.
SHARED_KINDS = ("redis",)


def open_harness(kind: str, fixture: Callable[[str], Any]) -> BrokerHarness:
    """The harness of ``kind``; ``fixture`` gets the pytest fixtures it needs by name."""
    if kind == "memory":
        return MemoryHarness()
    if kind == "redis":
        return RedisHarness(fixture("redis_url"))
    raise ValueError(f"no harness for brokers of kind {kind!r}")


class BrokerHarness(abc.ABC):
    """Opens brokers of one kind for one test; :meth:`aclose` closes them all."""

    #: Whether :meth:`second_node` can open another node on the same store.
    shared = False

    def __init__(self) -> None:
        self.brokers: list[Broker] = []
        self.threads: list[ThreadNode] = []
        self.retention = Retention()

    async def open_broker(self, *, size: int = 1000, ttl: float = 3600.0,
                          idempotency_window: float = 300.0) -> Broker:
        """A started broker keeping ``size`` messages for ``ttl`` seconds on every channel."""
        retention = self.retention = Retention(size, ttl, idempotency_window)
        return await self._started(self._make(lambda channel: retention))

    async def second_node(self) -> Broker:
        """Another started broker on the store of the last one opened, with its retention."""
        raise NotImplementedError(f"{type(self).__name__} has no store to share")

    async def node_in_thread(self) -> ThreadNode:
        """Another node on the store of the last broker opened, on an event loop of its own."""
        if not self.shared:
            raise NotImplementedError(f"{type(self).__name__} has no store to share")
        retention = self.retention
        node = await asyncio.to_thread(ThreadNode, lambda: self._make(lambda channel: retention))
        self.threads.append(node)
        return node

    @abc.abstractmethod
    async def lose_store(self, broker: Broker) -> Broker:
        """Empty the store ``broker`` uses; return the broker to go on with.

        A shared store's nodes live on (the same ``broker`` is returned and has
        to notice); a memory broker's store is the broker, so a new one is.
        """

    async def aclose(self) -> None:
        threads, self.threads = self.threads, []
        for node in threads:
            await asyncio.to_thread(node.close)
        brokers, self.brokers = self.brokers, []
        for broker in reversed(brokers):
            await broker.aclose()

    @abc.abstractmethod
    def _make(self, retention: Callable[[str], Retention]) -> Broker: ...

    async def _started(self, broker: Broker) -> Broker:
        self.brokers.append(broker)
        await broker.start()
        return broker


class MemoryHarness(BrokerHarness):
    """:class:`MemoryBroker`: the store is the broker, so nothing is shared."""

    def _make(self, retention: Callable[[str], Retention]) -> Broker:
        return MemoryBroker(retention)

    async def lose_store(self, broker: Broker) -> Broker:
        self.brokers.remove(broker)
        await broker.aclose()
        retention = self.retention
        return await self._started(self._make(lambda channel: retention))


class RedisHarness(BrokerHarness):
    """``RedisBroker`` nodes on the test's own Redis (``redis_url``, emptied for each test)."""

    shared = True

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def _make(self, retention: Callable[[str], Retention]) -> Broker:
        return RedisBroker(self.url, retention)

    async def second_node(self) -> Broker:
        retention = self.retention
        return await self._started(self._make(lambda channel: retention))

    async def lose_store(self, broker: Broker) -> Broker:
        client = redis.asyncio.Redis.from_url(self.url)
        try:
            await client.flushall()
        finally:
            await client.aclose()
        return broker


class ThreadNode:
    """A broker run by an event loop in a thread of its own.

    Its blocking methods return once the broker is done, without letting the
    caller's event loop run meanwhile: whatever the store pushes to the
    caller's nodes about it is still unread when they return.
    """

    def __init__(self, make: Callable[[], Broker]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="broker-node",
                                        daemon=True)
        self._thread.start()
        try:
            self.broker = self._call(self._open(make))
        except BaseException:
            self._stop()
            raise

    @staticmethod
    async def _open(make: Callable[[], Broker]) -> Broker:
        broker = make()
        await broker.start()
        return broker

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(5 * UNIT)

    def publish_blocking(self, channel: str, data: bytes) -> Message:
        """Publish on this node; return once it is stored (the caller's loop stood still)."""
        return self._call(self.broker.publish(channel, data))

    def close(self) -> None:
        """Close the broker, stop the loop and its thread (blocking)."""
        try:
            self._call(self.broker.aclose())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5 * UNIT)
        if not self._thread.is_alive():
            self._loop.close()


async def read_ready(broker: Broker, channel: str, start: Start, limit: int = 1000) -> Read:
    """Read as the server does: wait for :meth:`Broker.prepare` only if not ready.

    The read itself is synchronous, so a :meth:`Hub.subscribe` right after this
    returns, with no ``await`` in between, joins history and live messages.
    """
    starts = {channel: start}
    if not broker.ready(starts):
        async with asyncio.timeout(5 * UNIT):
            await broker.prepare(starts)
    return broker.read(channel, start, limit)


class Recorder:
    """A hub subscriber that keeps what it is given, in order; its deliveries can be awaited."""

    def __init__(self) -> None:
        #: Messages and gaps, in the order they came.
        self.events: list[Message | Gap] = []
        self._changed = asyncio.Event()

    @property
    def messages(self) -> list[Message]:
        return [event for event in self.events if isinstance(event, Message)]

    @property
    def gaps(self) -> list[Gap]:
        return [event for event in self.events if isinstance(event, Gap)]

    def deliver(self, message: Message) -> None:
        self.events.append(message)
        self._changed.set()

    def skip(self, gap: Gap) -> None:
        self.events.append(gap)
        self._changed.set()

    async def wait_for(self, count: int, within: float = 5 * UNIT) -> list[Message]:
        """Wait until at least ``count`` messages came; return all that did."""
        await self.wait_until(lambda: len(self.messages) >= count, within,
                              f"{count} messages")
        return self.messages

    async def wait_for_gap(self, within: float = 5 * UNIT) -> Gap:
        """Wait until a gap came; return the first."""
        await self.wait_until(lambda: bool(self.gaps), within, "a gap")
        return self.gaps[0]

    async def wait_until(self, condition: Callable[[], bool], within: float,
                         what: str = "the condition") -> None:
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"waited {within:.1f} s for {what}; got {self.events}") from None
