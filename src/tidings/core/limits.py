"""Counting clients: connections per address and publishes per second, without I/O.

The server asks these objects before it admits a connection or accepts a
publish, passing the loop time in; they never read a clock themselves, so
tests drive them with any times they like. docs/security.md explains the
settings behind them.
"""

from __future__ import annotations

#: Seconds between sweeps that forget idle rate-limit buckets (bounding memory).
PRUNE_INTERVAL = 10.0


class ConnectionCounts:
    """Open connections in total and per client address, each O(1) to count.

    ``max_total`` or ``max_per_address`` of ``0`` means no limit. Call
    :meth:`admit` when a connection opens and, if it returned ``None``,
    :meth:`release` exactly once when it closes.
    """

    __slots__ = ("by_address", "max_per_address", "max_total", "total")

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self.by_address: dict[str, int] = {}

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``, or say why not.

        Returns ``None`` (admitted), ``"total"`` (the server is full) or
        ``"address"`` (this address has too many); a refused connection is
        not counted and must not be released.
        """
        if self.max_total and self.total >= self.max_total:
            return "total"
        count = self.by_address.get(address, 0)
        if self.max_per_address and count >= self.max_per_address:
            return "address"
        self.total += 1
        self.by_address[address] = count + 1
        return None

    def release(self, address: str) -> None:
        """A connection admitted from ``address`` has closed."""
        self.total -= 1
        count = self.by_address[address] - 1
        if count:
            self.by_address[address] = count
        else:
            del self.by_address[address]


class RateLimiter:
    """A token bucket per key: ``rate`` tokens a second, holding at most ``burst``.

    Memory is bounded by the keys active in the last :data:`PRUNE_INTERVAL`
    seconds: buckets that have filled up again are forgotten (a full bucket
    and no bucket behave the same).
    """

    __slots__ = ("buckets", "burst", "next_prune", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        #: key -> (tokens left, loop time they were counted at)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.next_prune = 0.0

    def take(self, key: str, now: float) -> float:
        """Take a token for ``key`` at time ``now``.

        Returns ``0.0`` if one was taken; otherwise the seconds until one will
        be available (the caller refuses the action and may say when to retry).
        """
        if now >= self.next_prune:
            self._prune(now)
        tokens, then = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        self.next_prune = now + PRUNE_INTERVAL
        full = [key for key, (tokens, then) in self.buckets.items()
                if tokens + (now - then) * self.rate >= self.burst]
        for key in full:
            del self.buckets[key]
