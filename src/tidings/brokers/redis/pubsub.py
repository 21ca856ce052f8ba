"""The node's pub/sub links: one per Redis node, each following some channels.

:class:`PubSub` knows which channel is followed on which link. When a link
breaks it reconnects it (with backoff), follows its channels again, and only
then hands them to ``on_back``, so that the broker syncs each one: anything
published while the link was down is in the stream, and a sync that starts
after the subscription is confirmed misses nothing (docs/topics/redis.md).

In a Redis Cluster it also follows resharding, one channel at a time and
without closing any link: a subscription answered with ``MOVED``/``ASK`` is
made again on the node named (:data:`MAX_REDIRECTIONS` times at most in a
row), and a channel whose slot leaves its node (an unasked ``sunsubscribe``)
is followed on the new owner and then handed to ``on_back``, so that a sync
fills what was published during the move.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from tidings.brokers.redis.keys import ChannelKeys, channel_of
from tidings.brokers.redis.link import Address, Link
from tidings.errors import BrokerError

logger = logging.getLogger("tidings.redis")

#: Seconds of silence on a link before it is pinged, and before it is dropped.
LINK_PING_SECONDS = 5.0
LINK_SILENCE_SECONDS = 15.0
#: Reconnection delays (seconds): doubling from the first to the last.
RECONNECT_DELAYS = (0.05, 2.0)
#: Redirections (``MOVED``/``ASK``) one subscription follows in a row before it
#: backs off: two nodes that each name the other are in the middle of a move.
MAX_REDIRECTIONS = 5


class PubSub:
    """Links to Redis nodes, and the channels followed on each.

    ``on_message(name, payload)`` gets every pushed message; ``on_failure(why)``
    is called when a link breaks, cannot be opened or does not answer in time;
    ``on_back(channels)`` once a link is back and follows its channels again.
    """

    def __init__(
        self,
        db: int,
        timeout: float,
        on_message: Callable[[str, bytes], None],
        on_failure: Callable[[str], None],
        on_back: Callable[[list[str]], Coroutine[Any, Any, None]],
    ) -> None:
        #: Where channels are now, asked when a link cannot reconnect (a failover);
        #: the broker sets it once connected. None: nowhere else to look.
        self.locate: Callable[[list[str]], Coroutine[Any, Any, dict[str, Address]]] | None = None
        self._db = db
        self._timeout = timeout
        self._on_message = on_message
        self._on_failure = on_failure
        self._on_back = on_back
        self._links: dict[Address, Link] = {}
        #: channel -> the link it is followed on
        self._owners: dict[str, Link] = {}
        self._reconnecting: set[Link] = set()
        #: Links being opened for the first time, for reads that need them meanwhile.
        self._opening: dict[Address, asyncio.Future[None]] = {}
        #: Channels whose slot moved, being followed again on their new node.
        self._moving: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def follow(self, channel: str, address: Address) -> None:
        """Subscribe to ``channel`` on the node at ``address``; return once Redis confirmed.

        If that node says the channel's slot is elsewhere (Redis Cluster), the
        subscription is made there instead. Raises ``BrokerError`` if no node
        confirms it in time; the caller may try again.
        """
        for _ in range(MAX_REDIRECTIONS):
            link = await self._link(address)
            self._owners[channel] = link
            try:
                async with asyncio.timeout(self._timeout):
                    elsewhere = await link.subscribe(self._name(channel))
            except TimeoutError:
                self._on_failure(f"no confirmation of a subscription from {address}")
                raise BrokerError(f"Redis at {address} did not confirm a subscription within "
                                  f"{self._timeout} s") from None
            if elsewhere is None:
                return
            logger.info("%s is on Redis at %s, not %s", channel, elsewhere, address)
            address = elsewhere
        raise BrokerError(f"the Redis Cluster sent the subscription of {channel!r} "
                          f"elsewhere {MAX_REDIRECTIONS} times; its slot is moving")

    def unfollow(self, channel: str) -> None:
        moving = self._moving.pop(channel, None)
        if moving is not None:
            moving.cancel()
        link = self._owners.pop(channel, None)
        if link is not None:
            link.unsubscribe(self._name(channel))

    def connected(self, channel: str) -> bool:
        """Whether ``channel`` is followed on a link that is up."""
        link = self._owners.get(channel)
        return link is not None and link.connected

    @property
    def all_connected(self) -> bool:
        return all(link.connected for link in self._links.values())

    def health(self) -> dict[str, int]:
        links = self._links.values()
        return {"connected": sum(link.connected for link in links), "total": len(links)}

    def keep_alive(self) -> None:
        """Ping quiet links; drop (and so reconnect) those silent for too long."""
        now = asyncio.get_running_loop().time()
        for link in self._links.values():
            if not link.connected:
                continue
            silence = now - link.last_heard
            if silence > LINK_SILENCE_SECONDS:
                logger.warning("Redis at %s has been silent for %.0f s; reconnecting",
                               link.address, silence)
                link.close()
            elif silence > LINK_PING_SECONDS:
                link.ping()

    async def aclose(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self._links.values():
            link.close()

    # links -------------------------------------------------------------------

    def _name(self, channel: str) -> str:
        return ChannelKeys.of(channel, self._db).notify

    async def _link(self, address: Address) -> Link:
        opening = self._opening.get(address)
        if opening is not None:
            await asyncio.shield(opening)  # another read is opening it: share its outcome
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = Link(address, self._on_message, self._lost,
                                               self._moved)
            opening = self._opening[address] = asyncio.get_running_loop().create_future()
            opening.add_done_callback(_seen)
            try:
                await link.connect(self._timeout)
            except BaseException as exc:  # cancelled too: never leave a half-open link behind
                del self._links[address]
                link.close()
                error = BrokerError(f"cannot reach Redis at {address}: "
                                    f"{exc or type(exc).__name__}")
                opening.set_exception(error)
                if not isinstance(exc, (OSError, TimeoutError, BrokerError)):
                    raise
                self._on_failure(f"cannot reach {address}: {exc}")
                raise error from None
            else:
                opening.set_result(None)
            finally:
                del self._opening[address]
        if not link.connected:
            self._on_failure(f"no pub/sub connection to {address}")
            raise BrokerError(f"Redis at {address} is unreachable; reconnecting")
        return link

    def _lost(self, link: Link) -> None:
        if self._closed or link in self._reconnecting or self._links.get(link.address) is not link:
            return  # closing, already reconnecting, or a link given up while it opened
        self._on_failure(f"lost the pub/sub connection to {link.address}")
        logger.warning("lost the pub/sub connection to Redis at %s; reconnecting", link.address)
        self._reconnecting.add(link)
        task = asyncio.get_running_loop().create_task(self._reconnect(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # resharding ---------------------------------------------------------------

    def _moved(self, link: Link, name: str) -> None:
        """Redis dropped ``name`` from ``link``: its slot moved (Redis Cluster)."""
        try:
            channel = channel_of(name)
        except ValueError:
            return
        if self._closed or self._owners.get(channel) is not link or channel in self._moving:
            return  # no longer followed there
        logger.info("the slot of %s left Redis at %s; following it", channel, link.address)
        self._start_move(channel, link.address)

    def _start_move(self, channel: str, address: Address) -> None:
        """Follow ``channel`` again, starting at ``address``, then have it synced."""
        del self._owners[channel]  # not followed anywhere until the move is done
        task = asyncio.get_running_loop().create_task(self._move(channel, address))
        self._moving[channel] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _move(self, channel: str, address: Address) -> None:
        # The old node names the new owner (MOVED) when it is asked again: no
        # slot map to refresh, and no link is closed.
        delay = RECONNECT_DELAYS[0]
        try:
            while not self._closed:
                try:
                    await self.follow(channel, address)
                except BrokerError as exc:
                    self._owners.pop(channel, None)
                    logger.warning("following %s after its slot moved: %s", channel, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECONNECT_DELAYS[1])
                    continue
                break
            else:
                return
        finally:
            if self._moving.get(channel) is asyncio.current_task():
                del self._moving[channel]
        await self._on_back([channel])

    # reconnection ------------------------------------------------------------

    async def _reconnect(self, link: Link) -> None:
        try:
            channels = await self._follow_again(link)
        finally:
            self._reconnecting.discard(link)  # a loss from now on starts a new reconnection
        if channels is not None:
            await self._on_back(channels)

    async def _follow_again(self, link: Link) -> list[str] | None:
        """Reconnect ``link`` (with backoff) and follow its channels again; return them."""
        delay = RECONNECT_DELAYS[0]
        while not self._closed:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_DELAYS[1])
            try:
                await link.connect(self._timeout)
                channels = [c for c, owner in self._owners.items() if owner is link]
                async with asyncio.timeout(self._timeout):
                    answers = await asyncio.gather(
                        *(link.subscribe(self._name(c)) for c in channels))
            except (OSError, TimeoutError, BrokerError) as exc:
                self._on_failure(f"reconnecting to {link.address}: {exc or type(exc).__name__}")
                link.close()
                if await self._moved_away(link):
                    return None
                continue
            logger.info("pub/sub connection to Redis at %s is back; syncing %d channels",
                        link.address, len(channels))
            here = []
            for channel, elsewhere in zip(channels, answers, strict=True):
                if elsewhere is None:
                    here.append(channel)
                elif self._owners.get(channel) is link:
                    self._start_move(channel, elsewhere)  # its slot moved while we were away
            return here
        return None

    async def _moved_away(self, link: Link) -> bool:
        """Whether every channel of the unreachable ``link`` is now held elsewhere.

        In a Redis Cluster, a master that died is replaced by its replica
        (a failover): its channels are followed on the new master, and the link
        to the dead one is given up once none is left on it.
        """
        channels = [c for c, owner in self._owners.items() if owner is link]
        if self.locate is None:
            return False
        try:
            where = await self.locate(channels)
        except BrokerError:
            return False
        for channel in channels:
            address = where.get(channel)
            if address is not None and address != link.address \
                    and self._owners.get(channel) is link:
                logger.info("%s is now on Redis at %s (a failover?); following it there",
                            channel, address)
                self._start_move(channel, address)
        if any(owner is link for owner in self._owners.values()):
            return False
        if self._links.get(link.address) is link:
            del self._links[link.address]
        return True


def _seen(future: asyncio.Future[None]) -> None:
    """Mark a shared future's exception as retrieved (its waiters got it)."""
    if not future.cancelled():
        future.exception()
