"""Fan-out bookkeeping: which subscribers want which channel.

The hub does no I/O and wakes no task: :meth:`Hub.publish` calls each
subscriber's ``deliver`` in turn, and a subscriber's ``deliver`` is expected to
append pre-encoded bytes to its connection's output and return at once.

A failure stays with its subscriber: if ``deliver`` or ``skip`` raises, the
hub drops that subscriber from the channel, hands it the exception
(:meth:`Subscriber.fail`) and goes on with the next one. Nothing a subscriber
does can reach another subscriber or the publisher.
"""

from __future__ import annotations

import heapq
import logging
from typing import Protocol

from tidings.core.log import Gap
from tidings.core.message import Message


class Subscriber(Protocol):
    """Anything that can take a message of a channel it subscribed to."""

    def deliver(self, message: Message) -> None:
        """Take ``message``; must not block and must not raise."""

    def skip(self, gap: Gap) -> None:
        """Learn that messages were lost while subscribed (``gap.resume`` follows); no raise."""

    def fail(self, error: Exception) -> None:
        """``deliver`` or ``skip`` raised ``error`` (a bug): end this subscriber's connection.

        The hub has already unsubscribed it from the channel.
        """


class Gatherer(Subscriber, Protocol):
    """A subscriber that answers several readers at once (long polls parked together)."""

    @property
    def readers(self) -> int:
        """How many readers it stands for now (at least one: its subscription)."""


logger = logging.getLogger("tidings.core")

class Hub:
    """Channel name → subscribers, and delivery of each message to them."""

    __slots__ = ("_gatherers", "_subscribers", "delivered")

    def __init__(self) -> None:
        # dicts as ordered sets: delivery order is subscription order.
        self._subscribers: dict[str, dict[Subscriber, None]] = {}
        #: The subscribers that stand for several readers, by channel (:meth:`gather`).
        self._gatherers: dict[str, dict[Gatherer, None]] = {}
        #: Messages handed to readers since start (one per reader per message; a subscriber
        #: that stands for several readers adds the rest itself).
        self.delivered = 0

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(channel, {})[subscriber] = None

    def gather(self, channel: str, gatherer: Gatherer) -> None:
        """Subscribe ``gatherer``, counted in :meth:`subscribers` and :meth:`busiest` as the
        readers it stands for when they are asked (it tells nothing as they come and go)."""
        self.subscribe(channel, gatherer)
        self._gatherers.setdefault(channel, {})[gatherer] = None

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.pop(subscriber, None)
            if not subscribers:
                del self._subscribers[channel]
        gatherers = self._gatherers.get(channel)
        if gatherers is not None:
            gatherers.pop(subscriber, None)  # type: ignore[call-overload]  # (any subscriber)
            if not gatherers:
                del self._gatherers[channel]

    def subscribers(self, channel: str) -> int:
        """How many readers ``channel`` has (subscribers, and those they stand for)."""
        return len(self._subscribers.get(channel, ())) + self._more(channel)

    def _more(self, channel: str) -> int:
        """The readers of ``channel`` beyond one per subscriber."""
        gatherers = self._gatherers.get(channel)
        return sum(gatherer.readers - 1 for gatherer in gatherers) if gatherers else 0

    def channels(self) -> int:
        """How many channels have at least one subscriber."""
        return len(self._subscribers)

    def busiest(self, count: int) -> list[tuple[str, int]]:
        """The ``count`` channels with the most subscribers, most first (O(channels))."""
        more = self._more
        return heapq.nlargest(count, ((channel, len(subscribers) + more(channel))
                                      for channel, subscribers in self._subscribers.items()),
                              key=lambda pair: pair[1])

    def publish(self, message: Message) -> int:
        """Deliver ``message`` to the channel's subscribers; return how many."""
        subscribers = self._subscribers.get(message.channel)
        if not subscribers:
            return 0
        # A copy: a subscriber may unsubscribe itself (or be cut off) in deliver().
        targets = tuple(subscribers)
        for subscriber in targets:
            try:
                subscriber.deliver(message)
            except Exception as exc:
                self._failed(message.channel, subscriber, exc)
        self.delivered += len(targets)
        return len(targets)

    def skip(self, gap: Gap) -> None:
        """Tell the channel's subscribers that the log lost messages (see :class:`Gap`).

        Only a replicated log can lose messages under live subscribers (a
        shared store that was emptied or fell behind); the messages that follow
        are delivered after this as usual.
        """
        subscribers = self._subscribers.get(gap.channel)
        if subscribers:
            for subscriber in tuple(subscribers):
                try:
                    subscriber.skip(gap)
                except Exception as exc:
                    self._failed(gap.channel, subscriber, exc)

    def _failed(self, channel: str, subscriber: Subscriber, error: Exception) -> None:
        self.unsubscribe(channel, subscriber)
        try:
            subscriber.fail(error)
        except Exception:
            logger.exception("a subscriber failed, then failed to close: %r", subscriber)
