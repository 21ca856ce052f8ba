"""A simulated stock feed for ``tidings demo``: a random walk over twenty symbols.

:class:`Market` is the walk itself, with no I/O (a seed makes it repeatable).
:func:`run_feed` publishes one tick of it every ``1 / rate`` seconds on the
channel ``stocks``, as::

    {"tick": 42, "quotes": [{"symbol": "AAPL", "price": 187.23, "change": 0.23}, ...]}

Every tick carries every symbol, so a page that subscribes mid-way fills its
table with the first message; only about a quarter of them move per tick.
``change`` is the change since the feed started (the "open").
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidings.server.app import Server

#: The channel every tick is published on.
CHANNEL = "stocks"
#: Ticks per second when ``--rate`` is not given.
DEFAULT_RATE = 5.0
#: The highest ``--rate`` accepted: the demo is a demo, not a load test (see benchmarks/).
MAX_RATE = 1000.0
#: Opening prices in dollars.
SYMBOLS: dict[str, float] = {
    "AAPL": 187.20, "MSFT": 415.10, "GOOG": 171.35, "AMZN": 182.60, "META": 492.80,
    "NVDA": 121.40, "TSLA": 178.90, "NFLX": 628.15, "ADBE": 512.30, "INTC": 30.45,
    "AMD": 158.70, "ORCL": 124.90, "IBM": 171.20, "CSCO": 46.85, "CRM": 271.40,
    "QCOM": 198.25, "UBER": 70.30, "SHOP": 64.15, "SAP": 193.60, "ASML": 955.00,
}
#: The share of the symbols that move in one tick.
MOVING_SHARE = 0.25
#: The standard deviation of one move, as a share of the price.
VOLATILITY = 0.0006
#: The pull back towards the opening price per move, so that hours of demo stay plausible.
MEAN_REVERSION = 0.002
#: How far behind schedule (in seconds) the feed may fall before it skips ahead instead of bursting.
MAX_LAG = 1.0


class Market:
    """Prices in cents, moved by :meth:`tick`; ``seed`` makes the walk repeatable."""

    def __init__(self, symbols: dict[str, float] | None = None, seed: int | None = None) -> None:
        symbols = SYMBOLS if symbols is None else symbols
        if not symbols:
            raise ValueError("a market needs at least one symbol")
        self.random = random.Random(seed)
        self.opening = {symbol: round(price * 100) for symbol, price in symbols.items()}
        self.cents = dict(self.opening)
        self.ticks = 0

    def tick(self) -> dict[str, Any]:
        """Move some prices; return the message of this tick (every symbol's quote)."""
        self.ticks += 1
        count = max(1, round(len(self.cents) * MOVING_SHARE))
        for symbol in self.random.sample(sorted(self.cents), count):
            self.cents[symbol] = self._move(self.cents[symbol], self.opening[symbol])
        return {"tick": self.ticks, "quotes": [self.quote(symbol) for symbol in self.cents]}

    def quote(self, symbol: str) -> dict[str, Any]:
        cents = self.cents[symbol]
        return {"symbol": symbol, "price": cents / 100,
                "change": (cents - self.opening[symbol]) / 100}

    def _move(self, cents: int, opening: int) -> int:
        step = self.random.gauss(0.0, cents * VOLATILITY) + (opening - cents) * MEAN_REVERSION
        if -1 < step < 1:  # a move of less than a cent still moves: the page should flash
            step = 1 if self.random.random() < 0.5 else -1
        return max(1, cents + round(step))


async def run_feed(server: Server, rate: float = DEFAULT_RATE, market: Market | None = None,
                   channel: str = CHANNEL) -> None:
    """Publish a tick of ``market`` on ``channel`` ``rate`` times a second, until cancelled.

    Ticks are scheduled on the loop clock, so the rate holds over time instead
    of drifting by the time each publish takes. Run it as a task the server
    owns: ``server.spawn(run_feed(server, rate))``.
    """
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be above 0 and at most {MAX_RATE:g} ticks per second")
    market = Market() if market is None else market
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    due = loop.time()
    while True:
        await server.publish(channel, market.tick())
        due += interval
        delay = due - loop.time()
        if delay < -MAX_LAG:
            due, delay = loop.time(), 0.0
        await asyncio.sleep(max(delay, 0.0))
