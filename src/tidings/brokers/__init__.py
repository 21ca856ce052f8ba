"""Message stores behind the server: the :class:`Broker` interface and its implementations."""

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker"]
