"""The Redis broker: several tidings nodes sharing channel logs in Redis (docs/topics/redis.md)."""

from tidings.brokers.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
