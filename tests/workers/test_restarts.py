"""When a dead worker is started again, and what ``--workers`` accepts: no process involved."""

from __future__ import annotations

import os

import pytest

from tidings import Settings
from tidings.backoff import Backoff
from tidings.errors import UsageError
from tidings.server.workers import STEADY_SECONDS, Restarts, check_workers, worker_count


def test_a_worker_that_ran_steadily_comes_back_at_once() -> None:
    restarts = Restarts()
    restarts.started(0, now=100.0)
    assert restarts.delay(0, now=100.0 + STEADY_SECONDS) == 0.0


def test_quick_deaths_in_a_row_wait_longer_and_longer_up_to_the_maximum() -> None:
    restarts = Restarts(steady=10.0, backoff=Backoff(initial=0.5, maximum=4.0))
    delays = []
    now = 0.0
    for _ in range(6):
        restarts.started(1, now)
        now += 1.0  # dies a second after each start
        delays.append(restarts.delay(1, now))
        now += delays[-1]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_steady_run_resets_the_delay_and_workers_count_apart() -> None:
    restarts = Restarts(steady=10.0, backoff=Backoff(initial=0.5, maximum=4.0))
    restarts.started(0, 0.0)
    restarts.started(1, 0.0)
    assert restarts.delay(0, 1.0) == 0.5
    assert restarts.delay(1, 1.0) == 0.5  # worker 1's first quick death: its own count
    restarts.started(0, 2.0)
    assert restarts.delay(0, 3.0) == 1.0
    restarts.started(0, 4.0)
    assert restarts.delay(0, 40.0) == 0.0  # it ran 36 s
    restarts.started(0, 41.0)
    assert restarts.delay(0, 42.0) == 0.5


def test_worker_count() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-2", "many", ""):
        with pytest.raises(UsageError, match="--workers"):
            worker_count(bad)


def test_more_than_one_worker_needs_a_shared_broker() -> None:
    check_workers(Settings(), 1)
    check_workers(Settings(broker="redis://127.0.0.1:6379/0"), 4)
    with pytest.raises(UsageError, match=r"memory broker.*Redis"):
        check_workers(Settings(), 2)
