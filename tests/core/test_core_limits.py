"""Connection counts and token buckets, driven with made-up times (no event loop)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.limits import PRUNE_INTERVAL, ConnectionCounts, RateLimiter


def test_connections_are_counted_in_total_and_per_address() -> None:
    counts = ConnectionCounts(max_total=3, max_per_address=2)
    assert counts.admit("a") is None
    assert counts.admit("a") is None
    assert counts.admit("a") == "address"
    assert counts.admit("b") is None
    assert counts.admit("c") == "total"
    counts.release("a")
    assert counts.admit("c") is None
    assert counts.by_address == {"a": 1, "b": 1, "c": 1}
    for address in ("a", "b", "c"):
        counts.release(address)
    assert (counts.total, counts.by_address) == (0, {})


def test_zero_means_no_limit() -> None:
    counts = ConnectionCounts(max_total=0, max_per_address=0)
    for _ in range(1000):
        assert counts.admit("a") is None
    assert counts.total == 1000


def test_a_bucket_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.take("k", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", 100.0) == pytest.approx(0.5)
    assert limiter.take("other", 100.0) == 0.0  # buckets are per key
    assert limiter.take("k", 100.5) == 0.0
    assert limiter.take("k", 100.5) > 0


def test_idle_buckets_are_forgotten() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    for n in range(100):
        limiter.take(f"client-{n}", 0.0)
    assert len(limiter.buckets) == 100
    limiter.take("late", PRUNE_INTERVAL + 1)
    assert list(limiter.buckets) == ["late"]


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.1, 1000), burst=st.integers(1, 50),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int,
                                                       gaps: list[float]) -> None:
    limiter = RateLimiter(rate, burst)
    now = taken = 0.0
    for gap in gaps:
        now += gap
        if limiter.take("k", now) == 0.0:
            taken += 1
        assert taken <= burst + rate * now + 1e-6


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1, 0)
