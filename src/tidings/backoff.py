"""Retry delays: exponential backoff with full jitter, without I/O.

The client waits this long before reconnecting; the bridges before trying a
lost database or server again. :class:`Backoff` is also exported as
``tidings.Backoff`` and ``tidings.client.Backoff``.

Attempt ``n`` (from 0) waits a random time between 0 and
``min(maximum, initial * factor ** n)`` seconds ("full jitter", see
https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/):
clients cut off together by a server restart come back spread out instead of
all at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tidings.errors import UsageError


@dataclass(frozen=True, slots=True)
class Backoff:
    """The retry policy: ``initial`` and ``maximum`` seconds, growth ``factor``."""

    initial: float = 0.1
    maximum: float = 30.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1:
            raise UsageError("backoff needs 0 < initial <= maximum and factor >= 1")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before attempt ``attempt`` (0 for the first retry)."""
        # min() before the power would overflow for long outages.
        exponent = min(attempt, 64)
        return min(self.maximum, self.initial * self.factor**exponent)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """A random wait in ``[0, ceiling(attempt)]``."""
        return rand() * self.ceiling(attempt)
