"""The sweep finds every HTTP connection past its deadline, looking at few of the others.

``Registry`` files each connection under the tick at which it must be looked at next
(server/registry.py). Driven here without I/O: a loop whose time the test sets, and
connections that are only a deadline. Hypothesis checks it against the plain scan it
replaces (every connection, every tick): the same connections due at every sweep, as long
as every deadline a connection sets is ``recheck`` away or was watched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.server.registry import Check, Registry

TICK = 1.0
RECHECK = 9.0


class Clock:
    """Enough of an event loop for a Registry: its time."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@dataclass(eq=False)
class Conn:
    """Enough of an HttpConnection for the sweep; counts how often its deadline is read."""

    name: int
    _deadline: float = 0.0
    checked_in: Check | None = None
    reads: int = 0
    timeouts: int = 0

    @property
    def deadline(self) -> float:
        self.reads += 1
        return self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._deadline = value

    def timed_out(self) -> None:
        self.timeouts += 1
        self._deadline = 0.0


def registry_at(clock: Clock) -> Registry:
    return Registry(cast(Any, clock), TICK, RECHECK)


def sweep(registry: Registry, clock: Clock) -> None:
    registry.sweep(clock.now, 0.0, heartbeat=False, check_tokens=False)


def test_a_connection_is_closed_by_the_first_sweep_past_its_deadline() -> None:
    clock = Clock(1000.9)  # (sweeps late in a tick, the deadline early in one)
    registry = registry_at(clock)
    conn = Conn(1)
    conn.deadline = clock.now + 10.3
    registry.add_connection(cast(Any, conn))
    for _ in range(10):
        clock.now += TICK
        sweep(registry, clock)
        assert conn.timeouts == 0, clock.now
    clock.now += TICK  # (past the deadline from here)
    sweep(registry, clock)
    assert conn.timeouts == 1


def test_a_connection_not_due_is_looked_at_once_per_recheck() -> None:
    clock = Clock()
    registry = registry_at(clock)
    conns = [Conn(n) for n in range(100)]
    for conn in conns:
        registry.add_connection(cast(Any, conn))
    for _ in range(60):  # a minute of ticks; each connection keeps renewing a far deadline
        clock.now += TICK
        for conn in conns:
            conn._deadline = clock.now + 60
        sweep(registry, clock)
    reads = [conn.reads for conn in conns]
    assert max(reads) <= 60 / RECHECK + 1, reads  # not 60: once per recheck
    assert all(conn.timeouts == 0 for conn in conns)


def test_a_nearer_deadline_is_watched() -> None:
    """A deadline nearer than ``recheck`` (a refused connection's linger) is watched."""
    clock = Clock()
    registry = registry_at(clock)
    conn = Conn(1)
    registry.add_connection(cast(Any, conn))
    conn.deadline = clock.now + 1.5
    registry.watch(cast(Any, conn))
    clock.now += TICK
    sweep(registry, clock)
    assert conn.timeouts == 0
    clock.now += TICK
    sweep(registry, clock)
    assert conn.timeouts == 1


def test_a_connection_gone_is_never_due() -> None:
    clock = Clock()
    registry = registry_at(clock)
    conn = Conn(1)
    conn.deadline = clock.now + 2
    registry.add_connection(cast(Any, conn))
    registry.discard_connection(cast(Any, conn))
    clock.now += 5 * TICK
    sweep(registry, clock)
    assert conn.timeouts == 0 and conn.checked_in is None


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    """Steps: ``("tick", 0, late)``: time moves a tick (and ``late`` more), then a sweep;
    ``("far", n, x)``: connection n sets a deadline ``RECHECK + TICK + x`` away (as every
    deadline a connection sets itself); ``("near", n, x)``: one ``x`` away, watched (a
    linger); ``("none", n, 0)``: no deadline (busy); ``("open"|"gone", n, 0)``."""
    tick = st.tuples(st.just("tick"), st.just(0),
                     st.one_of(st.just(0.0), st.floats(0, 0.9), st.floats(1, 3)))
    steps = st.one_of(
        tick, tick, tick,
        st.tuples(st.just("far"), st.integers(0, 5),
                  st.one_of(st.just(0.0), st.floats(0, 1), st.floats(0, 30))),
        st.tuples(st.just("near"), st.integers(0, 5), st.floats(0.01, RECHECK)),
        st.tuples(st.sampled_from(["none", "open", "gone"]), st.integers(0, 5), st.just(0.0)),
    )
    return draw(st.lists(steps, max_size=150))


@settings(max_examples=300, deadline=None)
@given(history=histories())
def test_the_same_connections_are_due_as_with_a_scan_of_all(
        history: list[tuple[str, int, float]]) -> None:
    clock = Clock()
    registry = registry_at(clock)
    conns = {n: Conn(n) for n in range(6)}
    open_: set[int] = set()
    expected_timeouts = dict.fromkeys(conns, 0)
    for kind, n, x in history:
        conn = conns[n]
        if kind == "tick":
            clock.now += TICK + x
            # the plain scan: every open connection past its deadline, now
            for m in open_:
                if 0 < conns[m]._deadline < clock.now:
                    expected_timeouts[m] += 1
            sweep(registry, clock)
            assert {m: c.timeouts for m, c in conns.items()} == expected_timeouts, clock.now
        elif kind == "open" and n not in open_:
            open_.add(n)
            conn._deadline = 0.0
            registry.add_connection(cast(Any, conn))
        elif kind == "gone" and n in open_:
            open_.discard(n)
            registry.discard_connection(cast(Any, conn))
        elif kind == "far" and n in open_:
            conn._deadline = clock.now + RECHECK + TICK + x
        elif kind == "near" and n in open_:
            conn._deadline = clock.now + x
            registry.watch(cast(Any, conn))
        elif kind == "none" and n in open_:
            conn._deadline = 0.0
