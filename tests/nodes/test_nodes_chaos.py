"""The chaos soak, short: nothing is lost silently while Redis and the nodes fail.

benchmarks/redis_chaos.py runs a Redis of its own and two ``tidings serve``
nodes (and a third that only publishers use, which never reads a channel),
publishers on random nodes and readers of the four techniques moving
between nodes, while it kills the nodes' pub/sub links, pauses Redis,
restarts it empty, from an older RDB snapshot, fails over to a replica that
was behind, and replaces a node. Every reader must end with every
acknowledged message once, in order, or a gap that explains what it missed.
Here it runs for about 15 s with a fixed seed and each kind of fault once.

The checker itself is tested first, on made-up records: a soak that never
fails would prove nothing.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import UNIT
from rediskit import redis_missing

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))

import redis_chaos
from redis_chaos import (
    CLUSTER_FAULT_KINDS,
    FAULT_KINDS,
    TECHNIQUES,
    Attempt,
    Id,
    Ledger,
    Received,
    check_all,
    check_reader,
)

#: The run's seed: it fixes the order of the faults (each kind once, then at random).
SEED = 4


# The checker ----------------------------------------------------------------------


def message(message_id: str, number: int) -> Received:
    body = {"channel": "c", "id": message_id, "data": {"p": 0, "n": number, "a": 0}, "time": 0}
    return Received("message", body, "A", 0.0)


def gap(start: str, resume: str, reason: str, missed: int | None = None) -> Received:
    body = {"channel": "c", "from": start, "to": resume, "reason": reason, "missed": missed}
    return Received("gap", body, "A", 0.0)


#: Three messages acknowledged in epoch e1, then two in e2 (Redis lost e1).
ACKED: dict[Id, str] = {("e1", 1): "0.1.0", ("e1", 2): "0.2.0", ("e1", 3): "0.3.0",
                        ("e2", 1): "0.4.0", ("e2", 2): "0.5.0"}
END: Id = ("e2", 2)


def violations_of(events: list[Received], target: Id = END) -> list[str]:
    reader: Any = SimpleNamespace(name="r", channel="c", start="e1-0", events=events,
                                  node=None, problems=[], stats=Counter())
    found: list[str] = []
    check_reader(reader, ACKED.items(), target, found)
    return found


@pytest.mark.parametrize("events", [
    pytest.param([message("e1-1", 1), message("e1-2", 2), message("e1-3", 3),
                  gap("e1-3", "e2-0", "epoch"), message("e2-1", 4), message("e2-2", 5)],
                 id="everything"),
    pytest.param([message("e1-1", 1), gap("e1-1", "e2-0", "epoch"), message("e2-1", 4),
                  message("e2-2", 5)], id="the-rest-of-a-lost-epoch"),
    pytest.param([message("e1-1", 1), gap("e1-1", "e1-2", "expired", 1), message("e1-3", 3),
                  gap("e1-3", "e2-0", "epoch"), message("e2-1", 4), message("e2-2", 5)],
                 id="an-exact-expired-gap"),
])
def test_the_checker_accepts_what_is_delivered_or_explained(events: list[Received]) -> None:
    assert violations_of(events) == []


@pytest.mark.parametrize(("events", "target", "complaint"), [
    pytest.param([message("e1-1", 1), message("e1-3", 3), gap("e1-3", "e2-0", "epoch"),
                  message("e2-1", 4), message("e2-2", 5)], END, "skipped to e1-3", id="hole"),
    pytest.param([message("e1-1", 1), message("e1-2", 2), message("e1-2", 2),
                  message("e1-3", 3), gap("e1-3", "e2-0", "epoch"), message("e2-1", 4),
                  message("e2-2", 5)], END, "a second time", id="duplicate"),
    pytest.param([message("e1-1", 1), message("e1-2", 2), message("e1-3", 3),
                  message("e2-1", 4), message("e2-2", 5)], END, "another epoch with no gap",
                 id="epoch-change-untold"),
    pytest.param([message("e1-1", 1), gap("e1-3", "e2-0", "epoch"), message("e2-1", 4),
                  message("e2-2", 5)], END, "but the reader was at e1-1",
                 id="gap-from-elsewhere"),
    pytest.param([message("e1-1", 1), gap("e1-1", "e2-1", "epoch"), message("e2-2", 5)], END,
                 "never delivered and covered by no gap", id="epoch-gap-past-new-messages"),
    pytest.param([message("e1-1", 1), gap("e1-1", "e1-2", "expired", 2), message("e1-3", 3),
                  gap("e1-3", "e2-0", "epoch"), message("e2-1", 4), message("e2-2", 5)], END,
                 "count is wrong", id="expired-count-wrong"),
    pytest.param([message("e1-1", 1), message("e1-2", 2), message("e1-3", 3),
                  gap("e1-3", "e2-0", "epoch"), message("e2-1", 4)], END, "did not catch up",
                 id="behind"),
    pytest.param([message("e1-1", 1), message("e1-2", 2), message("e1-3", 3)], ("e1", 3),
                 "epochs it never read, and it got no epoch gap", id="epoch-skipped-untold"),
])
def test_the_checker_finds_what_was_lost_or_repeated(events: list[Received], target: Id,
                                                     complaint: str) -> None:
    found = violations_of(events, target)
    assert any(complaint in v for v in found), found


def test_the_checker_counts_what_an_epoch_gap_explained() -> None:
    reader: Any = SimpleNamespace(
        name="r", channel="c", start="e1-0", node=None, problems=[], stats=Counter(),
        events=[message("e1-1", 1), gap("e1-1", "e2-0", "epoch"), message("e2-1", 4),
                message("e2-2", 5)])
    found: list[str] = []
    check_reader(reader, ACKED.items(), END, found)
    assert found == []
    assert reader.stats["lost, told by a gap"] == 2  # e1-2 and e1-3


def test_the_checker_finds_an_id_given_twice() -> None:
    """Redis went back in time: the same id acknowledged for two messages."""
    ledger = Ledger()
    ledger.attempts["0.1.0"] = Attempt("c", "A", "acked", "e1-1")
    ledger.attempts["0.2.0"] = Attempt("c", "B", "acked", "e1-1")
    reader: Any = SimpleNamespace(name="r", channel="c", start="e1-0", node=None,
                                  problems=[], stats=Counter(), events=[message("e1-1", 1)])
    found: list[str] = []
    check_all([reader], ledger, {"c": ("e1", 1)}, found)
    assert any("acknowledged to two different publishes" in v for v in found), found
    assert any("never delivered" in v and "0.2.0" in v for v in found), found


# The soak ---------------------------------------------------------------------------


async def test_nothing_is_lost_silently_while_redis_and_nodes_fail() -> None:
    reason = redis_missing()
    if reason is not None:
        pytest.skip(reason)
    log: list[str] = []
    plan = redis_chaos.ci_plan(seed=SEED)
    async with asyncio.timeout(120 * UNIT):  # each wait inside is bounded too
        report = await redis_chaos.run(plan, log.append)
    story = "\n".join(log) + "\n\n" + report.text()
    assert not report.violations, story
    faults = report.fault_counts()
    assert all(faults[kind] >= 1 for kind in FAULT_KINDS), story
    assert report.publishes.get("acked", 0) >= 0.5 * plan.rate * plan.seconds, story
    assert report.drain_seconds < 10 * UNIT, story
    for technique in TECHNIQUES:
        row = report.techniques[technique]
        assert row["messages"] > 0, story
        # Redis came back empty once: every reader had to be told.
        assert row["gap epoch"] >= row["readers"], story


async def test_nothing_is_lost_silently_while_a_redis_cluster_fails_over_and_reshards() -> None:
    """The same soak on a three-master Redis Cluster: slots moved, a shard restored from
    its own older snapshot, a replica taking over from a live master, a master killed.
    Each rolls a shard back or moves it; no id may be given twice, nothing lost silently."""
    reason = redis_missing()
    if reason is not None:
        pytest.skip(reason)
    log: list[str] = []
    plan = redis_chaos.ci_plan(seed=SEED)
    plan.cluster, plan.kinds = True, CLUSTER_FAULT_KINDS
    async with asyncio.timeout(180 * UNIT):  # each wait inside is bounded too
        report = await redis_chaos.run(plan, log.append)
    story = "\n".join(log) + "\n\n" + report.text()
    assert not report.violations, story
    faults = report.fault_counts()
    assert all(faults[kind] >= 1 for kind in CLUSTER_FAULT_KINDS), story
    assert report.publishes.get("acked", 0) >= 0.5 * plan.rate * plan.seconds, story
    assert report.drain_seconds < 10 * UNIT, story
    for technique in TECHNIQUES:
        assert report.techniques[technique]["messages"] > 0, story
