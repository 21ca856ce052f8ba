"""The default broker: channel logs in this process's memory.

A restart loses every log; the new logs get new epochs, so cursors from
before the restart get a gap signal instead of a silent skip.

A log whose messages have all expired and that nobody reads is forgotten
after ``idle_log_seconds``, keeping only its epoch and last sequence number
(a tombstone, a few dozen bytes). If the channel is used again, its log goes
on from there, so a client that had seen everything resumes with no gap, and
one that had not gets an exact ``expired`` gap. Only past
:data:`MAX_TOMBSTONES` forgotten channels are the oldest tombstones dropped;
their cursors then get an ``epoch`` gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tidings.brokers.base import Broker
from tidings.core.cursor import Start
from tidings.core.fanout import Hub
from tidings.core.log import ChannelLog, Read, Retention
from tidings.core.message import Message

#: Forgotten channels whose epoch and position are still remembered.
MAX_TOMBSTONES = 100_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class MemoryBroker(Broker):
    """Channel logs in a dict, retention by count on append and by age in :meth:`maintain`."""

    def __init__(
        self,
        retention: Callable[[str], Retention] = lambda channel: Retention(),
        *,
        clock: Callable[[], int] = wall_clock_ms,
        idle_log_seconds: float = 3600.0,
    ) -> None:
        self.hub = Hub()
        self._retention = retention
        self._clock = clock
        self._logs: dict[str, ChannelLog] = {}
        # Last time each log was touched, for forgetting idle empty logs.
        self._touched: dict[str, int] = {}
        self._idle_ms = int(idle_log_seconds * 1000)
        # Forgotten empty logs: channel -> (epoch, last sequence number), oldest first.
        self._tombstones: dict[str, tuple[str, int]] = {}

    def log(self, channel: str) -> ChannelLog:
        """The log of ``channel``, created empty if needed (going on from its tombstone)."""
        log = self._logs.get(channel)
        if log is None:
            epoch, last_seq = self._tombstones.pop(channel, (None, 0))
            log = self._logs[channel] = ChannelLog(channel, self._retention(channel), epoch,
                                                   last_seq)
        return log

    async def publish(self, channel: str, data: bytes) -> Message:
        return self.publish_nowait(channel, data)

    def publish_nowait(self, channel: str, data: bytes) -> Message:
        """Like :meth:`publish`, for callers without an event loop."""
        now = self._clock()
        message = self.log(channel).append(data, now)
        self._touched[channel] = now
        self.hub.publish(message)
        return message

    def read(self, channel: str, start: Start, limit: int) -> Read:
        log = self.log(channel)
        now = self._touched[channel] = self._clock()
        if len(log):
            log.trim(now)
        return log.read(start, limit)

    def maintain(self) -> None:
        now = self._clock()
        hub = self.hub
        for channel, log in list(self._logs.items()):
            if len(log):
                log.trim(now)
            elif (
                not hub.subscribers(channel)
                and now - self._touched.setdefault(channel, now) > self._idle_ms
            ):
                del self._logs[channel]
                del self._touched[channel]
                if log.end.seq:
                    self._tombstones[channel] = (log.epoch, log.end.seq)
        while len(self._tombstones) > MAX_TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]

    def health(self) -> dict[str, object]:
        return {"kind": "memory", "status": "ok", "channels": len(self._logs)}

    def channels(self) -> int:
        """How many channel logs are held."""
        return len(self._logs)
