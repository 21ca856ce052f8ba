"""Message stores behind the server: the :class:`Broker` interface and its implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.extras import missing_extra

if TYPE_CHECKING:
    from tidings.settings import Settings

__all__ = ["Broker", "MemoryBroker", "make_broker"]


def make_broker(settings: Settings) -> Broker:
    """The broker ``settings.broker`` names: in memory, or Redis at a URL."""
    if settings.broker == "memory":
        return MemoryBroker(settings.retention)
    try:
        from tidings.brokers.redis import RedisBroker
    except ImportError as exc:
        raise missing_extra("the Redis broker", "redis", exc) from None
    return RedisBroker(settings.broker, settings.retention)
