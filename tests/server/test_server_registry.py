"""The sweep's deadlines (server/registry.py), driven directly: no sockets, no loop.

A connection is filed under the first tick after its deadline and looked at only
then; the fakes below keep the connection's side of it (``watch`` when the deadline
moves earlier than :attr:`watched`, as ``HttpConnection._arm`` does).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tidings.server.connection import HttpConnection
from tidings.server.registry import Registry

TICK = 0.25


class Connection:
    """The part of an HTTP connection the sweep sees; counts how often it is looked at."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.watched = 0.0
        self._deadline = 0.0
        self.looks = 0
        self.timed_out_at: list[float] = []
        self.now = 0.0

    @property
    def deadline(self) -> float:
        self.looks += 1
        return self._deadline

    def arm(self, now: float, seconds: float) -> None:
        deadline = self._deadline = now + seconds
        if deadline < self.watched or not self.watched:
            self.registry.watch(cast(HttpConnection, self), deadline)

    def disarm(self) -> None:
        self._deadline = 0.0

    def timed_out(self) -> None:
        self.timed_out_at.append(self.now)
        self._deadline = 0.0


def registry_with(count: int) -> tuple[Registry, list[Connection]]:
    registry = Registry(cast(asyncio.AbstractEventLoop, None), TICK)
    connections = [Connection(registry) for _ in range(count)]
    for conn in connections:
        registry.add_connection(cast(HttpConnection, conn))
    return registry, connections


def sweep(registry: Registry, connections: list[Any], now: float) -> None:
    for conn in connections:
        conn.now = now
    registry.sweep(now, 0.0, heartbeat=False, check_tokens=False)


def test_a_deadline_is_enforced_within_a_tick_of_it() -> None:
    registry, (conn,) = registry_with(1)
    conn.arm(0.0, 1.0)
    for step in range(1, 20):
        sweep(registry, [conn], step * TICK / 2)
    assert len(conn.timed_out_at) == 1
    assert 1.0 < conn.timed_out_at[0] <= 1.0 + TICK


def test_a_deadline_moved_later_or_earlier_is_the_one_enforced() -> None:
    registry, (later, earlier, disarmed) = registry_with(3)
    for conn in (later, earlier, disarmed):
        conn.arm(0.0, 5.0)
    later.arm(1.0, 10.0)  # a keep-alive re-armed by a request: filed where it was
    earlier.arm(1.0, 1.0)  # a request began: its header timeout comes first
    disarmed.disarm()  # a long poll parked
    for step in range(1, 61):
        sweep(registry, [later, earlier, disarmed], step * TICK)
    assert earlier.timed_out_at == [2.25]
    assert later.timed_out_at == [11.25]
    assert disarmed.timed_out_at == []


def test_pollers_re_arming_their_keep_alive_are_looked_at_once_per_timeout() -> None:
    """A thousand connections re-armed every second for a minute, with a 60 s keep-alive:
    the sweep looks at each about once, not once per tick (240 ticks)."""
    registry, connections = registry_with(1000)
    for second in range(60):
        for conn in connections:
            conn.arm(second, 60.0)
        for tick in range(int(1 / TICK)):
            sweep(registry, connections, second + (tick + 1) * TICK)
    assert all(conn.timed_out_at == [] for conn in connections)
    assert max(conn.looks for conn in connections) <= 2


def test_a_connection_that_closed_is_not_looked_at() -> None:
    registry, (gone, staying) = registry_with(2)
    gone.arm(0.0, 1.0)
    staying.arm(0.0, 1.0)
    registry.discard_connection(cast(HttpConnection, gone))
    assert gone.watched == 0.0
    sweep(registry, [gone, staying], 2.0)
    assert (gone.looks, gone.timed_out_at) == (0, [])
    assert staying.timed_out_at == [2.0]
