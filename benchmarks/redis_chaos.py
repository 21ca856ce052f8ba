"""Chaos soak: every message once, in order, on every technique, while Redis and nodes fail.

One ``redis-server`` of our own (tests/rediskit.py, a free port on 127.0.0.1,
never the shared one on 6379) and ``--nodes`` real ``tidings serve --broker``
processes (tests/nodes/nodekit.py), with ``--history-size 100000`` so that
nothing is trimmed: every gap must come from a real loss.

* **Publishers** POST ``{"p": PUBLISHER, "n": NUMBER, "a": ATTEMPT}`` at a
  steady pace, each to a random channel on a random node, including
  ``--publish-only`` nodes (1 by default) that no reader uses: they never
  read a channel, so they pass no known position to Redis's scripts. Every ``201`` id is
  noted with its channel. A ``503`` (or a connection that broke) is retried a
  moment later as a new attempt; a ``503`` after a timeout, or a broken
  connection, may have been stored all the same (docs/topics/redis.md), so its
  attempt is "unknown" and may show up in the log too.
* **Readers** of the four techniques follow every channel: WebSocket
  (``websockets``) and SSE (``httpx``, ``Last-Event-ID``) readers move to
  another node every few seconds, long-poll and poll readers (``httpx``) send
  each request to a random node. Each resumes from its own cursor: the last
  message id, or the ``to`` of the last gap it was told about.
* **Faults**, one at a time on a seeded schedule (each kind at least once):
  ``pubsub_kill`` (``CLIENT KILL TYPE pubsub``: every node's pub/sub link),
  ``redis_pause`` (SIGSTOP for a while, then SIGCONT), ``redis_restart``
  (Redis stops, stays down a moment and comes back empty: new epochs, readers
  must get an ``epoch`` gap), ``node_restart`` (SIGTERM one node, which
  must exit 0, and start a new one), ``redis_restore`` (a real restart from
  an RDB ``SAVE`` taken a moment before: no id may be given twice) and
  ``replica_failover`` (a replica left behind for a moment takes over: its
  data is served on Redis's address by a new process, as behind a proxy that
  follows Sentinel). ``--faults`` chooses them, and can add ``redis_flush``
  and ``redis_rollback`` (see :data:`EXTRA_FAULT_KINDS`);
  ``--overlap`` restarts nodes on a schedule of their own. With ``--keys``
  publishers send an ``Idempotency-Key`` and retry each message with the same
  key and body: a retry of one that was stored is answered ``200`` (counted
  as "replayed"), and a message stored twice in one epoch is a violation.

* **``--cluster``**: a three-master Redis Cluster of its own instead (the
  nodes' broker URL names its first master, which is never struck), with
  :data:`CLUSTER_FAULT_KINDS`: slots moved while in use, a master restarted
  from its own older RDB, a replica taking over from a live master after a
  pause, a master killed and its replica promoted, besides ``pubsub_kill``
  and ``node_restart``. A channel on the first master is moved before its
  shard is struck.

After the last fault the publishers go on for a few seconds, then stop; the
streams stop moving, and every reader must reach the end of its channel as
Redis has it (a bounded wait). Then each reader's record is checked:

1. walking what it received, a message follows the previous one in the same
   epoch (sequence + 1), or a gap that starts exactly where the reader was
   explains the jump (``expired`` with the exact ``missed``, or ``epoch``);
   no id twice; ids and data match across readers;
2. every acknowledged id of an epoch the reader read was delivered to it or
   is covered by a gap it got (the rest of an epoch it was told was lost);
   ids of epochs it never saw need an ``epoch`` gap;
3. every message delivered is one a publisher sent, under the id its ``201``
   gave, if it got one; a message stored although its publish was answered
   "not published" is a violation too;
4. SSE ``id:`` lines, WebSocket ``subscribed`` starts and poll ``next``
   cursors agree with the messages and gaps;
5. every node reports Redis ``ok`` again (``/healthz``), and every node
   stopped with SIGTERM exited 0 and logged no traceback.

Prints a summary; the exit status is 1 on any violation. Everything it starts
is stopped on errors, Ctrl-C and SIGTERM too::

    .venv/bin/python benchmarks/redis_chaos.py --seconds 120 --seed 1 --nodes 3
    .venv/bin/python benchmarks/redis_chaos.py --quick
    .venv/bin/python benchmarks/redis_chaos.py --cluster --seconds 120 --seed 11

tests/nodes/test_nodes_chaos.py runs the same machinery for about 15 s
(:func:`ci_plan`). Results: docs/benchmarks.md, "Redis chaos soak".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, WebSocketException

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "nodes"))

from nodekit import Node, node_argv

from rediskit import RedisClusterProcesses, RedisProcess, redis_missing
from tidings.testing import UNIT, SseStream

#: ``redis_restore`` and ``replica_failover`` bring Redis back with the data of a moment
#: before, as a restart from an RDB snapshot (or AOF ``everysec``) or a lagging replica
#: promoted does.
FAULT_KINDS = ("pubsub_kill", "redis_pause", "redis_restart", "node_restart", "redis_restore",
               "replica_failover")
#: More faults, on request (``--faults``): ``redis_flush`` empties Redis (FLUSHALL) with
#: every connection left open; ``redis_rollback`` puts older data back *inside* the same
#: Redis process (RESTORE), which no failure of Redis does and its ``run_id`` cannot
#: show: only nodes that read the channel notice it, so run it with ``--publish-only 0``
#: (docs/topics/redis.md, "A second line of defence").
EXTRA_FAULT_KINDS = ("redis_flush", "redis_rollback")
#: The faults of ``--cluster`` (a three-master Redis Cluster): ``slot_move`` moves a
#: random channel's slot to another master while it is published to (resharding);
#: ``shard_restore`` restarts a master from its own RDB of a moment before (its node
#: id kept); ``shard_failover`` makes a replica of a master take over
#: (``CLUSTER FAILOVER TAKEOVER``) after it was paused a moment, the old master
#: alive and acknowledging until it learns; ``master_kill`` kills a master and
#: promotes its replica. The startup node (the nodes' broker URL) is never struck.
CLUSTER_FAULT_KINDS = ("pubsub_kill", "node_restart", "slot_move", "shard_restore",
                       "shard_failover", "master_kill")
#: Lua: every tidings key and its DUMP, at one instant.
SNAPSHOT_SCRIPT = """local out = {}
for _, key in ipairs(redis.call('KEYS', 'tidings:*')) do
  table.insert(out, key); table.insert(out, redis.call('DUMP', key))
end
return out"""
#: Lua: replace the database with a snapshot (KEYS: names, ARGV: their DUMPs).
RESTORE_SCRIPT = """redis.call('FLUSHDB')
for i = 1, #KEYS do redis.call('RESTORE', KEYS[i], 0, ARGV[i]) end
return #KEYS"""
TECHNIQUES = ("websocket", "sse", "longpoll", "poll")
#: Messages each node keeps per channel: far more than a run publishes, so
#: nothing is trimmed and every gap comes from a real loss.
HISTORY_SIZE = 100_000
#: Seconds a long poll is held by the node.
LONGPOLL_WAIT = 2
#: Seconds between two regular polls.
POLL_INTERVAL = 0.25
#: Seconds a reader waits before trying again after a refused or broken read.
RETRY_DELAY = (0.05, 0.3)
#: Seconds before a publish that failed is tried again (as a new attempt).
REPUBLISH_DELAY = 0.3
#: Seconds an HTTP request may take: more than the node's Redis timeout (5 s).
HTTP_TIMEOUT = 15 * UNIT
#: Seconds every reader gets to reach the end of its channel after the last publish.
DRAIN_TIMEOUT = 30 * UNIT
#: What a node's stderr must not contain.
NODE_ERROR_MARKS = ("Traceback", "task failed", "never retrieved", "Exception in callback")

Id = tuple[str, int]
T = TypeVar("T")


def parse_id(text: str) -> Id:
    epoch, _, seq = text.rpartition("-")
    return epoch, int(seq)


def format_id(position: Id) -> str:
    return f"{position[0]}-{position[1]}"


# --- the plan -------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a run does; :func:`quick_plan` and :func:`ci_plan` are shorter ones."""

    seconds: float = 120.0  #: publishing time, faults included (the tail too)
    seed: int = 1
    nodes: int = 2
    #: More nodes that only publishers use: no reader ever makes them read a channel,
    #: so their scripts know no position (the case of issue 13).
    publish_only: int = 1
    channels: int = 3
    publishers: int = 3
    rate: float = 60.0  #: publishes per second, all publishers together
    readers: int = 1  #: readers per technique and channel
    hop: tuple[float, float] = (2.0, 5.0)  #: seconds a stream stays on one node
    warmup: float = 2.0  #: seconds of publishing before the first fault
    fault_gap: tuple[float, float] = (3.0, 7.0)  #: seconds between two faults
    pause: tuple[float, float] = (0.5, 2.0)  #: seconds Redis stays paused
    down: tuple[float, float] = (0.0, 2.0)  #: seconds Redis stays down when it restarts
    tail: float = 3.0  #: seconds of publishing after the last fault
    overlap: bool = False  #: node restarts on a schedule of their own, during Redis faults too
    keys: bool = False  #: publishers retry with an Idempotency-Key (one per message)
    kinds: tuple[str, ...] = FAULT_KINDS  #: the faults injected
    cluster: bool = False  #: a three-master Redis Cluster instead of one Redis


def quick_plan(seed: int = 1, nodes: int = 2) -> Plan:
    return Plan(seconds=25.0, seed=seed, nodes=nodes, warmup=1.5, fault_gap=(2.0, 4.0),
                tail=2.5)


def ci_plan(seed: int = 1, nodes: int = 2) -> Plan:
    """About 15 s of publishing with each kind of fault once (the CI test)."""
    return Plan(seconds=14.0, seed=seed, nodes=nodes, rate=45.0, hop=(1.5, 3.5), warmup=1.5,
                fault_gap=(1.5, 2.5), pause=(0.5, 1.5), down=(0.3, 1.0), tail=2.5)


# --- what is recorded -----------------------------------------------------------------------


@dataclass
class Attempt:
    """One POST of one payload; ``outcome`` is acked, refused, unknown or unexpected."""

    channel: str
    node: str
    outcome: str = "pending"
    id: str | None = None
    detail: str = ""


class Ledger:
    """Every publish attempt, by its key ``P.N.A`` (publisher, number, attempt)."""

    def __init__(self, keyed: bool = False) -> None:
        self.attempts: dict[str, Attempt] = {}
        #: Whether publishers send an ``Idempotency-Key`` (one per number, kept across
        #: retries); each number then has one key ``P.N.0``, for its last try.
        self.keyed = keyed
        #: Retries answered ``200``: the key's first publish had stored the message.
        self.replays = 0

    def outcomes(self) -> Counter[str]:
        return Counter(a.outcome for a in self.attempts.values())


@dataclass(frozen=True)
class Received:
    """A message or a gap as one reader got it."""

    kind: str  #: "message" or "gap"
    body: dict[str, Any]
    node: str
    at: float  #: seconds since the run began


@dataclass
class FaultRecord:
    at: float
    kind: str
    detail: str
    seconds: float


# --- the deployment -------------------------------------------------------------------------


class Replica(RedisProcess):
    """A ``redis-server`` that follows the run's Redis before each failover."""

    def start_following(self, master: RedisProcess, timeout: float = 10 * UNIT) -> None:
        """(Re)start empty as a replica of ``master``; return once in sync."""
        self.stop()
        self.extra_args = ["--replicaof", "127.0.0.1", str(master.port)]
        self.start()
        deadline = time.monotonic() + timeout
        while b"master_link_status:up" not in _bytes(self.command("INFO", "replication")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica on {self.port} did not sync with {master.port}")
            time.sleep(0.02)
        master.command("WAIT", 1, int(timeout * 1000))


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class Deployment:
    """The run's Redis and its nodes; nodes come and go, names are never reused."""

    def __init__(self, redis: RedisProcess, directory: Path,
                 cluster: RedisClusterProcesses | None = None) -> None:
        #: The Redis the nodes are given: in a cluster, its startup node.
        self.redis = redis
        self.cluster = cluster
        self._replica: Replica | None = None
        self.directory = directory
        self.live: list[Node] = []
        #: Nodes only publishers use (they never read a channel).
        self.publish_only: list[Node] = []
        self.every: list[Node] = []
        #: Exit status of each node stopped with SIGTERM, by name.
        self.exit_codes: dict[str, int] = {}
        self._names = itertools.chain((chr(c) for c in range(ord("A"), ord("Z") + 1)),
                                      (f"N{n}" for n in itertools.count(27)))

    def replica(self) -> Replica:
        """The Redis replica for failovers, started on first use."""
        if self._replica is None:
            self._replica = Replica()
        return self._replica

    def stop_replica(self) -> None:
        if self._replica is not None:
            self._replica.stop()

    def _argv(self) -> list[str]:
        return node_argv(self.redis.url, "--history-size", str(HISTORY_SIZE))

    def _new_node(self) -> Node:
        node = Node(next(self._names), self._argv(), self.directory)
        self.every.append(node)
        return node

    async def start(self, count: int, publish_only: int = 0) -> None:
        nodes = [self._new_node() for _ in range(count + publish_only)]
        for node in nodes:  # all are starting already
            await node.wait_url()
        self.live.extend(nodes[:count])
        self.publish_only.extend(nodes[count:])

    def choose(self, rng: random.Random, avoid: Node | None = None) -> Node:
        """A random live node, other than ``avoid`` when there is another."""
        others = [n for n in self.live if n is not avoid] or self.live
        return rng.choice(others)

    def choose_for_publish(self, rng: random.Random) -> Node:
        """A random node among the live ones and those only publishers use."""
        return rng.choice(self.live + self.publish_only)

    async def replace(self, rng: random.Random) -> str:
        """SIGTERM a random node (clients on it move elsewhere), then start a new one."""
        old = rng.choice(self.live)
        self.live.remove(old)
        code = self.exit_codes[old.name] = await old.stop()
        new = self._new_node()
        await new.wait_url()
        self.live.append(new)
        return f"{old.name} exited {code}, {new.name} started"

    async def stop(self) -> None:
        """SIGTERM every live node and note how each exited."""
        nodes, self.live = self.live + self.publish_only, []
        self.publish_only = []
        for node, code in zip(nodes, await asyncio.gather(*(n.stop() for n in nodes)),
                              strict=True):
            self.exit_codes[node.name] = code

    def kill(self) -> None:
        """The last resort on the way out: SIGKILL whatever still runs."""
        for node in self.every:
            node.kill()

    def node_errors(self) -> list[str]:
        found = []
        for node in self.every:
            lines = node.stderr().splitlines()
            for number, line in enumerate(lines):
                if any(mark in line for mark in NODE_ERROR_MARKS):
                    context = "\n    ".join(lines[number:number + 12])
                    found.append(f"node {node.name} logged:\n    {context}")
                    break
        return found


# --- faults ---------------------------------------------------------------------------------


class Faults:
    """Injects faults on a seeded schedule; every kind at least once.

    One at a time; with :attr:`Plan.overlap`, node restarts follow a schedule
    of their own, so they also strike while Redis is paused or restarting.
    """

    def __init__(self, deployment: Deployment, plan: Plan, clock: Callable[[], float],
                 log: Callable[[str], None]) -> None:
        self.deployment = deployment
        self.plan = plan
        self.rng = random.Random(f"{plan.seed}:faults")
        self.clock = clock
        self.log = log
        self.done: list[FaultRecord] = []
        #: The run's channels (for ``slot_move``); set by :func:`run`.
        self.channels: list[str] = []

    async def run(self, until: float) -> None:
        """Inject faults from the warm-up on; stop once ``until`` (run seconds) has passed."""
        kinds = self.plan.kinds
        redis_kinds = tuple(k for k in kinds if k != "node_restart")
        if not self.plan.overlap or "node_restart" not in kinds or not redis_kinds:
            await self._schedule(kinds, until, self.rng, self.plan.warmup)
            return
        node_rng = random.Random(f"{self.plan.seed}:node faults")
        async with asyncio.TaskGroup() as schedules:
            schedules.create_task(self._schedule(redis_kinds, until, self.rng, self.plan.warmup))
            schedules.create_task(self._schedule(
                ("node_restart",), until, node_rng,
                self.plan.warmup + node_rng.uniform(0, self.plan.fault_gap[1])))

    async def _schedule(self, kinds: tuple[str, ...], until: float, rng: random.Random,
                        delay: float) -> None:
        first = list(kinds)
        rng.shuffle(first)
        await asyncio.sleep(delay)
        while self.clock() < until or first:
            await self.inject(first.pop(0) if first else rng.choice(kinds), rng)
            if self.clock() < until or first:
                await asyncio.sleep(rng.uniform(*self.plan.fault_gap))

    async def inject(self, kind: str, rng: random.Random) -> None:
        redis = self.deployment.redis
        began = self.clock()
        cluster = self.deployment.cluster
        if cluster is not None and kind != "node_restart":
            detail = await ClusterFaults(cluster, self.channels).inject(kind, rng, self.plan)
        elif kind == "pubsub_kill":
            killed = await asyncio.to_thread(redis.command, "CLIENT", "KILL", "TYPE", "pubsub")
            detail = f"{killed} pub/sub links killed"
        elif kind == "redis_pause":
            seconds = rng.uniform(*self.plan.pause)
            await asyncio.to_thread(redis.pause)
            try:
                await asyncio.sleep(seconds)
            finally:
                await asyncio.to_thread(redis.resume)
            detail = f"paused {seconds:.2f} s"
        elif kind == "redis_restart":
            down = rng.uniform(*self.plan.down)
            await asyncio.to_thread(redis.stop)
            try:
                await asyncio.sleep(down)
            finally:
                await asyncio.to_thread(redis.restart)  # the same port, empty
            detail = f"down {down:.2f} s, back empty"
        elif kind == "node_restart":
            detail = await self.deployment.replace(rng)
        elif kind == "redis_flush":
            await asyncio.to_thread(redis.command, "FLUSHALL")
            detail = "emptied, connections kept"
        elif kind == "redis_rollback":
            detail = await self._roll_back(rng.uniform(*self.plan.pause))
        elif kind == "redis_restore":
            detail = await self._restore(rng.uniform(*self.plan.pause))
        elif kind == "replica_failover":
            detail = await self._fail_over(rng.uniform(*self.plan.pause))
        else:
            raise ValueError(f"unknown fault {kind!r}")
        record = FaultRecord(round(began, 2), kind, detail, round(self.clock() - began, 2))
        self.done.append(record)
        self.log(f"{record.at:7.2f} s  fault {kind}: {detail} ({record.seconds:.2f} s)")

    async def _roll_back(self, seconds: float) -> str:
        """Snapshot the data, let ``seconds`` pass, put the snapshot back and cut every client.

        What a restart from an RDB snapshot taken ``seconds`` earlier looks like
        to the nodes (they reconnect and sync), without the restart.
        """
        redis = self.deployment.redis
        snapshot = await asyncio.to_thread(redis.command, "EVAL", SNAPSHOT_SCRIPT, 0)
        assert isinstance(snapshot, list)
        await asyncio.sleep(seconds)
        names, dumps = snapshot[0::2], snapshot[1::2]
        await asyncio.to_thread(redis.command, "EVAL", RESTORE_SCRIPT, len(names), *names,
                                *dumps)
        for kind in ("normal", "pubsub"):
            await asyncio.to_thread(redis.command, "CLIENT", "KILL", "TYPE", kind)
        return f"back to the data of {seconds:.2f} s before"


    async def _restore(self, seconds: float) -> str:
        """``SAVE``, let ``seconds`` pass, then restart Redis from that dump (a new process)."""
        redis = self.deployment.redis
        await asyncio.to_thread(redis.command, "SAVE")
        snapshot = await asyncio.to_thread(redis.snapshot)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(redis.restart, snapshot=snapshot)
        return f"restarted from the RDB of {seconds:.2f} s before"

    async def _fail_over(self, seconds: float) -> str:
        """A replica loses its link ``seconds`` before Redis dies, then takes over.

        (A replica paused with SIGSTOP would catch up from its socket buffer
        when resumed; a replica cut off is behind by exactly what followed.)
        The promoted replica's data is then served on Redis's address by a new
        process started from it.
        """
        redis, replica = self.deployment.redis, self.deployment.replica()
        await asyncio.to_thread(replica.start_following, redis)
        await asyncio.to_thread(replica.command, "REPLICAOF", "NO", "ONE")
        await asyncio.sleep(seconds)
        await asyncio.to_thread(redis.stop)
        await asyncio.to_thread(replica.command, "SAVE")
        snapshot = await asyncio.to_thread(replica.snapshot)
        await asyncio.to_thread(redis.restart, snapshot=snapshot)
        return f"a replica {seconds:.2f} s behind took over"


class ClusterFaults:
    """The faults of ``--cluster``, each run in a thread (rediskit is blocking)."""

    def __init__(self, cluster: RedisClusterProcesses, channels: list[str]) -> None:
        self.cluster = cluster
        self.channels = channels

    async def inject(self, kind: str, rng: random.Random, plan: Plan) -> str:
        seconds = rng.uniform(*plan.pause)
        if kind == "pubsub_kill":
            killed = 0
            for port in self.masters():
                reply = await asyncio.to_thread(self.process(port).command,
                                                "CLIENT", "KILL", "TYPE", "pubsub")
                killed += int(reply) if isinstance(reply, int) else 0
            return f"{killed} pub/sub links killed"
        if kind == "slot_move":
            channel = rng.choice(self.channels)
            slot = await asyncio.to_thread(self.slot_of, channel)
            source = self.cluster.owner(slot)
            target = rng.choice([port for port in self.masters() if port != source])
            await asyncio.to_thread(self.cluster.migrate_slot, slot, target)
            return f"the slot of {channel} moved from {source} to {target}"
        shard, moved = await self.shard_of(rng.choice(self.channels), rng)
        if kind == "shard_restore":
            await asyncio.to_thread(shard.command, "SAVE")
            snapshot = await asyncio.to_thread(shard.snapshot)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(shard.restart, snapshot=snapshot)
            await asyncio.to_thread(self.cluster.wait_ok)
            return (f"{moved}master {shard.port} restarted from its RDB of {seconds:.2f} s "
                    "before")
        replica = await asyncio.to_thread(self.replica_of, shard.port)
        if kind == "shard_failover":
            await asyncio.to_thread(replica.pause)
            await asyncio.sleep(seconds)
            await asyncio.to_thread(replica.resume)
            await asyncio.to_thread(replica.command, "CLUSTER", "FAILOVER", "TAKEOVER")
            await asyncio.to_thread(self.wait_master, replica.port)
            return (f"{moved}replica {replica.port}, paused {seconds:.2f} s, took over from "
                    f"{shard.port}")
        if kind == "master_kill":
            await asyncio.sleep(seconds)
            await asyncio.to_thread(shard.stop)
            self.cluster.nodes.remove(shard)
            await asyncio.to_thread(replica.command, "CLUSTER", "FAILOVER", "TAKEOVER")
            await asyncio.to_thread(self.wait_master, replica.port)
            return f"{moved}master {shard.port} killed, replica {replica.port} took over"
        raise ValueError(f"unknown fault {kind!r}")

    def process(self, port: int) -> RedisProcess:
        return next(node for node in self.cluster.nodes if node.port == port)

    def masters(self) -> list[int]:
        """The ports of the masters that own slots (``CLUSTER SLOTS`` of the startup node)."""
        ranges = self.cluster.nodes[0].command("CLUSTER", "SLOTS")
        assert isinstance(ranges, list)
        return sorted({int(master[1]) for _first, _last, master, *_replicas in ranges})

    async def shard_of(self, channel: str, rng: random.Random) -> tuple[RedisProcess, str]:
        """The master of ``channel``'s slot, to strike; and what was done to have one.

        The startup node (the nodes' broker URL) is never struck: a channel on it
        is first moved to another master.
        """
        slot = await asyncio.to_thread(self.slot_of, channel)
        owner = self.cluster.owner(slot)
        startup = self.cluster.nodes[0].port
        if owner != startup:
            return self.process(owner), ""
        target = rng.choice([port for port in self.masters() if port != startup])
        await asyncio.to_thread(self.cluster.migrate_slot, slot, target)
        return self.process(target), f"{channel} moved from {owner} to {target}, then "

    def slot_of(self, channel: str) -> int:
        slot = self.cluster.nodes[0].command("CLUSTER", "KEYSLOT", f"tidings:{{{channel}}}:log")
        assert isinstance(slot, int)
        return slot

    def replica_of(self, master: int) -> RedisProcess:
        """A replica of ``master`` in sync: one it has, or a new one."""
        for node in self.cluster.nodes:
            info = _bytes(node.command("INFO", "replication"))
            if node.port != master and b"role:slave" in info \
                    and f"master_port:{master}".encode() in info \
                    and b"master_link_status:up" in info:
                return node
        return self.cluster.add_replica(master)

    def wait_master(self, port: int, timeout: float = 20 * UNIT) -> None:
        deadline = time.monotonic() + timeout
        while b"role:master" not in _bytes(self.process(port).command("INFO", "replication")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{port} did not become a master")
            time.sleep(0.05)
        self.cluster.wait_ok()


# --- publishers -----------------------------------------------------------------------------


class Publisher:
    """POSTs at a steady pace to random channels on random nodes; retries what failed."""

    def __init__(self, index: int, channels: list[str], deployment: Deployment,
                 ledger: Ledger, plan: Plan) -> None:
        self.index = index
        self.channels = channels
        self.deployment = deployment
        self.ledger = ledger
        self.rng = random.Random(f"{plan.seed}:publisher:{index}")
        self.interval = plan.publishers / plan.rate
        #: (when, number, attempt, channel) of publishes to try again.
        self.retry: deque[tuple[float, int, int, str]] = deque()
        self.numbers = itertools.count()

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            due = loop.time()
            while not stop.is_set():
                await self._publish_one(client, loop.time())
                due += self.interval
                delay = due - loop.time()
                if delay < 0:
                    due = loop.time()  # fell behind during a fault: no burst afterwards
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()

    async def _publish_one(self, client: httpx.AsyncClient, now: float) -> None:
        if self.retry and self.retry[0][0] <= now:
            _when, number, attempt, channel = self.retry.popleft()
            attempt += 1
        else:
            number, attempt, channel = next(self.numbers), 0, self.rng.choice(self.channels)
        node = self.deployment.choose_for_publish(self.rng)
        headers = {"Content-Type": "application/json"}
        if self.ledger.keyed:
            # Every try of a number is one publish: the same body, the same key.
            key = f"{self.index}.{number}.0"
            headers["Idempotency-Key"] = f"chaos-{self.index}-{number}"
            data = json.dumps({"p": self.index, "n": number, "a": 0})
        else:
            key = f"{self.index}.{number}.{attempt}"
            data = json.dumps({"p": self.index, "n": number, "a": attempt})
        record = self.ledger.attempts[key] = Attempt(channel, node.name)
        try:
            response = await client.post(f"{node.url}/channels/{channel}", content=data,
                                         headers=headers)
        except httpx.HTTPError as exc:
            record.outcome, record.detail = "unknown", f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code in (200, 201):
                body = response.json()
                record.outcome, record.id = "acked", str(body["id"])
                if response.status_code == 200:
                    self.ledger.replays += 1
                    if body.get("replayed") is not True:
                        record.outcome, record.detail = "unexpected", f"200 for {body}"
                if body.get("channel") != channel:
                    record.outcome, record.detail = "unexpected", f"201 for {body}"
                return
            text = response.text[:300]
            if response.status_code == 503:
                # After a timeout the message may have been stored; otherwise it was not.
                record.outcome = "unknown" if "may or may not" in text else "refused"
                record.detail = text
            else:
                record.outcome, record.detail = "unexpected", f"{response.status_code} {text}"
                return
        self.retry.append((asyncio.get_running_loop().time() + REPUBLISH_DELAY, number,
                           attempt, channel))


# --- readers --------------------------------------------------------------------------------


class Reader:
    """Follows one channel from a cursor, moving between nodes; records what it gets."""

    technique: ClassVar[str]

    def __init__(self, name: str, channel: str, start: str, deployment: Deployment,
                 plan: Plan, clock: Callable[[], float], hopping: Callable[[], bool]) -> None:
        self.name = name
        self.channel = channel
        self.start = start
        self.cursor = start
        self.deployment = deployment
        self.plan = plan
        self.rng = random.Random(f"{plan.seed}:{name}")
        self.clock = clock
        self.hopping = hopping
        self.events: list[Received] = []
        self.stats: Counter[str] = Counter()
        #: Protocol inconsistencies noticed while reading (they become violations).
        self.problems: list[str] = []
        self.node: Node | None = None

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            while True:
                node = self.node = self.deployment.choose(self.rng, avoid=self.node)
                try:
                    await self.session(client, node)
                except (httpx.HTTPError, OSError, WebSocketException, EOFError,
                        TimeoutError) as exc:
                    self.stats[f"broken ({type(exc).__name__})"] += 1
                    await asyncio.sleep(self.rng.uniform(*RETRY_DELAY))

    async def session(self, client: httpx.AsyncClient, node: Node) -> None:
        raise NotImplementedError

    def take_message(self, body: dict[str, Any], node: Node) -> None:
        if body.get("channel") != self.channel:
            self.problems.append(f"a message of another channel: {body}")
            return
        self.events.append(Received("message", body, node.name, round(self.clock(), 3)))
        self.cursor = str(body["id"])
        self.stats["messages"] += 1

    def take_gap(self, body: dict[str, Any], node: Node) -> None:
        self.events.append(Received("gap", body, node.name, round(self.clock(), 3)))
        self.cursor = str(body["to"])
        self.stats[f"gap {body.get('reason')}"] += 1

    def refused(self, status: int) -> None:
        self.stats[f"refused {status}"] += 1

    def leave_at(self) -> float:
        return self.clock() + self.rng.uniform(*self.plan.hop)

    async def until_leaving(self, leave: float, awaitable: Awaitable[T]) -> T | None:
        """``awaitable``'s result, or ``None`` if it is time to move to another node first.

        Once the run stops moving readers (the final catch-up), waits as long as it takes.
        """
        if not self.hopping():
            return await awaitable
        try:
            async with asyncio.timeout(max(0.0, leave - self.clock())):
                return await awaitable
        except TimeoutError:
            return None

    def time_to_leave(self, leave: float) -> bool:
        return self.hopping() and self.clock() >= leave


class WebSocketReader(Reader):
    technique = "websocket"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The start a ``subscribed`` frame named, while it differs from our cursor.
        self.begin: str | None = None

    async def session(self, client: httpx.AsyncClient, node: Node) -> None:
        url = node.ws_url(f"/channels/{self.channel}?since={self.cursor}")
        self.begin = None
        try:
            connection = ws_connect(url, open_timeout=10 * UNIT, close_timeout=UNIT,
                                    max_size=None)
            async with connection as ws:
                self.stats["connections"] += 1
                leave = self.leave_at()
                while not self.time_to_leave(leave):
                    frame = await self.until_leaving(leave, ws.recv())
                    if frame is None:
                        return
                    self.take_frame(json.loads(frame), node)
        except InvalidStatus as exc:
            self.refused(exc.response.status_code)
            await asyncio.sleep(self.rng.uniform(*RETRY_DELAY))

    def take_frame(self, frame: dict[str, Any], node: Node) -> None:
        kind = frame.get("type")
        if kind in ("message", "gap") and self.begin is not None:
            # ``subscribed`` named another start than our cursor: only a gap may explain it.
            if kind != "gap" or frame.get("to") != self.begin:
                self.problems.append(f"subscribed from {self.begin} at {self.cursor} on "
                                     f"{node.name}, then {frame}")
            self.begin = None
        if kind == "message":
            self.take_message(frame, node)
        elif kind == "gap":
            self.take_gap(frame, node)
        elif kind == "status":
            self.stats[f"status {frame.get('broker')}"] += 1
        elif kind == "subscribed":
            self.begin = frame.get("next") if frame.get("next") != self.cursor else None
        else:
            self.problems.append(f"an unexpected frame from {node.name}: {frame}")


class SseReader(Reader):
    technique = "sse"

    async def session(self, client: httpx.AsyncClient, node: Node) -> None:
        headers = {"Accept": "text/event-stream", "Last-Event-ID": self.cursor}
        async with client.stream("GET", f"{node.url}/channels/{self.channel}",
                                 headers=headers,
                                 timeout=httpx.Timeout(10 * UNIT, read=None)) as response:
            if response.status_code != 200:
                await response.aread()
                self.refused(response.status_code)
                await asyncio.sleep(self.rng.uniform(*RETRY_DELAY))
                return
            self.stats["connections"] += 1
            stream = SseStream(response.aiter_bytes())
            leave = self.leave_at()
            while not self.time_to_leave(leave):
                block = await self.until_leaving(leave, stream.next_event())
                if block is None:
                    return
                if block.is_message:
                    body = block.json()
                    if block.id != body.get("id"):
                        self.problems.append(f"SSE id: {block.id} on message {body}")
                    self.take_message(body, node)
                elif block.event == "gap":
                    body = block.json()
                    if block.id != body.get("to"):
                        self.problems.append(f"SSE id: {block.id} on gap {body}")
                    self.take_gap(body, node)
                elif block.event == "client":
                    pass  # the opening event: who this reader is (docs/protocol.md)
                elif block.event == "status":
                    self.stats[f"status {block.json().get('broker')}"] += 1
                elif block.event == "close":
                    self.stats[f"closed ({block.json().get('error')})"] += 1
                else:
                    self.problems.append(f"an unexpected event from {node.name}: {block}")


class LongPollReader(Reader):
    technique = "longpoll"

    async def session(self, client: httpx.AsyncClient, node: Node) -> None:
        response = await client.get(f"{node.url}/channels/{self.channel}",
                                    params={"since": self.cursor, "wait": LONGPOLL_WAIT})
        if response.status_code != 200:
            self.refused(response.status_code)
            await asyncio.sleep(self.rng.uniform(*RETRY_DELAY))
            return
        self.take_answer(response.json(), node)

    def take_answer(self, body: dict[str, Any], node: Node) -> None:
        self.stats["requests"] += 1
        gaps = body.get("gaps", [])
        if bool(body.get("gap")) != bool(gaps):
            self.problems.append(f"gap flag and gaps disagree: {body}")
        for gap in gaps:
            self.take_gap(gap, node)
        for message in body["messages"]:
            self.take_message(message, node)
        if body["next"] != self.cursor:
            self.problems.append(f"next {body['next']} after reading up to {self.cursor} "
                                 f"from {node.name}")
            self.cursor = body["next"]


class PollReader(LongPollReader):
    technique = "poll"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.etag: str | None = None

    async def session(self, client: httpx.AsyncClient, node: Node) -> None:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        response = await client.get(f"{node.url}/channels/{self.channel}",
                                    params={"since": self.cursor}, headers=headers)
        if response.status_code == 304:
            self.stats["not modified"] += 1
        elif response.status_code == 200:
            body = response.json()
            self.take_answer(body, node)
            self.etag = response.headers.get("etag")
            if body.get("more"):
                return  # more is retained: ask again at once
        else:
            self.refused(response.status_code)
        await asyncio.sleep(POLL_INTERVAL)


READERS: dict[str, type[Reader]] = {cls.technique: cls for cls in (
    WebSocketReader, SseReader, LongPollReader, PollReader)}


# --- checking -------------------------------------------------------------------------------


@dataclass
class Report:
    """The numbers of a run and what went wrong (``violations`` must be empty)."""

    plan: dict[str, Any]
    seconds: float = 0.0
    faults: list[FaultRecord] = field(default_factory=list)
    publishes: dict[str, int] = field(default_factory=dict)
    stored_without_ack: int = 0
    epochs: dict[str, int] = field(default_factory=dict)
    messages_in_redis: dict[str, str] = field(default_factory=dict)
    techniques: dict[str, dict[str, int]] = field(default_factory=dict)
    drain_seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def fault_counts(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults)

    def text(self) -> str:
        plan = self.plan
        faults = self.fault_counts()
        lines = [
            f"chaos soak: {self.seconds:.0f} s, seed {plan['seed']}, {plan['nodes']} nodes, "
            f"{plan['channels']} channels, {plan['rate']:g} publishes/s from "
            f"{plan['publishers']} publishers, {plan['readers']} reader(s) per technique "
            "and channel",
            "faults: " + ", ".join(f"{kind} {faults[kind]}" for kind in plan["kinds"])
            + f" ({len(self.faults)} in all)",
            "publishes: " + ", ".join(f"{k} {v}" for k, v in self.publishes.items())
            + f"; stored without a 201: {self.stored_without_ack}",
            "epochs per channel: " + ", ".join(f"{c} {n}" for c, n in self.epochs.items()),
            "end of each channel in Redis: " + ", ".join(
                f"{c} {i}" for c, i in self.messages_in_redis.items()),
            f"all readers caught up {self.drain_seconds:.1f} s after the last publish"
            if self.drain_seconds >= 0 else "readers did NOT all catch up",
            "",
            "| technique | readers | messages delivered | acknowledged, lost with an epoch "
            "| gaps epoch / expired | connections or requests | refused (503) | broken "
            "| status notices |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for technique, t in self.techniques.items():
            lines.append(
                f"| {technique} | {t['readers']} | {t['messages']:,} | {t['lost, told']} "
                f"| {t['gap epoch']} / {t['gap expired']} | {t['connections']:,} "
                f"| {t['refused']} | {t['broken']} | {t['status']} |")
        lines += ["", f"violations: {len(self.violations)}"]
        lines += [f"  - {v}" for v in self.violations[:40]]
        if len(self.violations) > 40:
            lines.append(f"  ... and {len(self.violations) - 40} more")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fault_counts": dict(self.fault_counts())}


def check_reader(reader: Reader, acked: Iterable[tuple[Id, str]], target: Id,
                 violations: list[str]) -> dict[Id, str]:
    """Walk what ``reader`` received; note violations; return its delivered ids → keys.

    ``acked`` are the acknowledged ids of its channel with their publishes' keys
    (an id twice if Redis gave it twice).
    """
    who = f"{reader.name} ({reader.channel})"
    delivered: dict[Id, str] = {}
    lost_after: dict[str, int] = {}  # epoch -> seqs after this were lost (epoch gaps)
    expired: list[tuple[str, int, int]] = []  # epoch, after, up to
    epochs = {parse_id(reader.start)[0]}
    epoch_gaps = 0
    position = parse_id(reader.start)
    for event in reader.events:
        where = f"{who} at {event.at} s from node {event.node}"
        if event.kind == "message":
            mid = parse_id(event.body["id"])
            if mid in delivered:
                violations.append(f"{where}: {format_id(mid)} a second time")
            elif mid[0] != position[0]:
                violations.append(f"{where}: {format_id(mid)} after {format_id(position)}, "
                                  "another epoch with no gap")
            elif mid[1] != position[1] + 1:
                what = "skipped to" if mid[1] > position[1] + 1 else "went back to"
                violations.append(f"{where}: {what} {format_id(mid)} after "
                                  f"{format_id(position)} with no gap")
            delivered.setdefault(mid, data_key(event.body.get("data")))
            epochs.add(mid[0])
            position = mid
            continue
        gap = event.body
        start, resume = parse_id(gap["from"]), parse_id(gap["to"])
        reason, missed = gap.get("reason"), gap.get("missed")
        if start != position:
            violations.append(f"{where}: a gap from {gap['from']} but the reader was at "
                              f"{format_id(position)}: {gap}")
        if reason == "epoch":
            epoch_gaps += 1
            if resume[0] == start[0] or missed is not None:
                violations.append(f"{where}: a malformed epoch gap {gap}")
            lost_after[start[0]] = min(lost_after.get(start[0], start[1]), start[1])
        elif reason == "expired":
            if resume[0] != start[0] or missed != resume[1] - start[1] or missed <= 0:
                violations.append(f"{where}: an expired gap whose count is wrong: {gap}")
            expired.append((start[0], start[1], resume[1]))
        else:
            violations.append(f"{where}: a gap with an unknown reason: {gap}")
        epochs.add(resume[0])
        position = resume
    if position != target:
        violations.append(f"{who} did not catch up: it is at {format_id(position)}, the "
                          f"channel ends at {format_id(target)} (on node "
                          f"{reader.node.name if reader.node else '-'})")
    silent: list[str] = []
    unseen_epochs = covered = 0
    for mid, key in sorted(acked):
        if delivered.get(mid) == key:
            continue
        if mid in delivered:
            silent.append(f"{format_id(mid)} ({key}, but {delivered[mid]} came with that id)")
            continue
        epoch, seq = mid
        if (epoch in lost_after and seq > lost_after[epoch]) or any(
                epoch == e and after < seq <= upto for e, after, upto in expired):
            covered += 1
            continue
        if epoch not in epochs:
            unseen_epochs += 1
            covered += 1  # if it got an epoch gap (checked below)
            continue
        if epoch == position[0] and seq > position[1]:
            continue  # behind: reported above
        silent.append(f"{format_id(mid)} ({key})")
    if silent:
        violations.append(f"{who}: {len(silent)} acknowledged messages never delivered and "
                          f"covered by no gap: {', '.join(silent[:5])}")
    if unseen_epochs and not epoch_gaps:
        violations.append(f"{who}: {unseen_epochs} acknowledged messages of epochs it never "
                          "read, and it got no epoch gap")
    reader.stats["lost, told by a gap"] = covered
    for problem in reader.problems[:10]:
        violations.append(f"{who}: {problem}")
    return delivered


def data_key(data: object) -> str:
    if isinstance(data, dict) and set(data) == {"p", "n", "a"}:
        return f"{data['p']}.{data['n']}.{data['a']}"
    return f"?{json.dumps(data)[:80]}"


def check_all(readers: list[Reader], ledger: Ledger, targets: dict[str, Id],
              violations: list[str]) -> int:
    """Check every reader and the publishes; return how many messages were stored without a 201."""
    for key, attempt in ledger.attempts.items():
        if attempt.outcome in ("unexpected", "pending"):
            violations.append(f"publish {key} on {attempt.node}: {attempt.outcome} "
                              f"{attempt.detail}")
    acked: dict[str, dict[Id, str]] = {channel: {} for channel in targets}
    every_ack: dict[str, list[tuple[Id, str]]] = {channel: [] for channel in targets}
    by_id: dict[tuple[str, Id], str] = {}  # every id acknowledged or delivered -> its key
    by_key: dict[str, tuple[str, Id]] = {}  # and back
    twice: dict[str, list[str]] = {}
    for key, attempt in ledger.attempts.items():
        if attempt.outcome == "acked" and attempt.id is not None:
            mid = parse_id(attempt.id)
            every_ack[attempt.channel].append((mid, key))
            first = acked[attempt.channel].setdefault(mid, key)
            if first != key:
                twice.setdefault(attempt.channel, []).append(f"{attempt.id} ({first}, {key})")
            by_id.setdefault((attempt.channel, mid), key)
            by_key[key] = (attempt.channel, mid)
    for channel, examples in twice.items():
        violations.append(f"{channel}: {len(examples)} ids acknowledged to two different "
                          f"publishes: {', '.join(examples[:5])}")
    unacknowledged: set[str] = set()
    for reader in readers:
        delivered = check_reader(reader, every_ack[reader.channel],
                                 targets[reader.channel], violations)
        found: dict[str, list[str]] = {}
        for mid, key in delivered.items():
            place = (reader.channel, mid)
            seen = f"{format_id(mid)} ({key})"
            known = by_id.get(place)
            sent = ledger.attempts.get(key)
            if known is not None:
                if known != key:
                    found.setdefault("carry other data than the same ids elsewhere", []).append(
                        f"{seen} vs {known}")
                continue
            if sent is None:
                found.setdefault("carry data nobody published", []).append(seen)
            elif sent.outcome == "refused":
                found.setdefault("were stored though their publish was answered 'not "
                                 "published'", []).append(f"{seen} on {sent.node}: "
                                                          f"{sent.detail}")
            elif sent.outcome == "acked":
                if ledger.keyed and sent.id is not None and parse_id(sent.id)[0] != mid[0]:
                    # A try stored in an epoch that was then lost, stored again in the
                    # next: the key went with the lost epoch (docs/topics/redis.md).
                    by_id[place] = key
                    continue
                found.setdefault("were acknowledged with another id", []).append(
                    f"{seen} acknowledged as {sent.id}")
            elif key in by_key:
                found.setdefault("were stored twice", []).append(
                    f"{seen} and {format_id(by_key[key][1])}")
            else:
                unacknowledged.add(key)
                by_key[key] = place
            by_id[place] = key
        for what, examples in found.items():
            violations.append(f"{reader.name}: {len(examples)} messages {what}: "
                              f"{', '.join(examples[:5])}")
    return len(unacknowledged)


def technique_table(readers: list[Reader]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for technique in TECHNIQUES:
        group = [r for r in readers if r.technique == technique]
        stats: Counter[str] = Counter()
        for reader in group:
            stats.update(reader.stats)
        table[technique] = {
            "readers": len(group),
            "messages": stats["messages"],
            "lost, told": stats["lost, told by a gap"],
            "gap epoch": stats["gap epoch"],
            "gap expired": stats["gap expired"],
            "connections": stats["connections"] + stats["requests"] + stats["not modified"],
            "refused": sum(v for k, v in stats.items() if k.startswith("refused")),
            "broken": sum(v for k, v in stats.items() if k.startswith("broken")),
            "status": sum(v for k, v in stats.items() if k.startswith("status")),
        }
    return table


# --- the run --------------------------------------------------------------------------------


async def channel_end(deployment: Deployment, channel: str) -> Id | None:
    """Where ``channel`` ends in Redis (its epoch and last sequence number), if it has one."""
    redis, cluster = deployment.redis, deployment.cluster
    if cluster is not None:  # ask the master that owns its slot
        owner = cluster.owner(ClusterFaults(cluster, [channel]).slot_of(channel))
        redis = next(node for node in cluster.nodes if node.port == owner)
    reply = await asyncio.to_thread(redis.command, "HMGET", f"tidings:{{{channel}}}:meta",
                                    "epoch", "seq")
    assert isinstance(reply, list)
    epoch, seq = reply
    if epoch is None:
        return None
    return epoch.decode(), int(seq)


async def first_cursor(node: Node, channel: str) -> str:
    """The position before the first message: a concrete cursor every reader starts from."""
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        response = await client.get(f"{node.url}/channels/{channel}", params={"since": "0"})
        response.raise_for_status()
        return str(response.json()["next"])


async def run(plan: Plan, log: Callable[[str], None] = print) -> Report:
    """Deploy, publish and read through the faults, catch up, check; stop everything."""
    loop = asyncio.get_running_loop()
    began = loop.time()

    def clock() -> float:
        return loop.time() - began

    report = Report(plan=asdict(plan))
    directory = Path(tempfile.mkdtemp(prefix="tidings-chaos-"))
    cluster = RedisClusterProcesses() if plan.cluster else None
    redis = RedisProcess()
    deployment: Deployment | None = None
    try:
        if cluster is not None:
            await asyncio.to_thread(cluster.start)
            redis = cluster.nodes[0]
        else:
            await asyncio.to_thread(redis.start)
        deployment = Deployment(redis, directory, cluster)
        await deployment.start(plan.nodes, plan.publish_only)
        where = f"a Redis Cluster on {cluster.ports}" if cluster else f"Redis on {redis.port}"
        log(f"{clock():7.2f} s  {where}, nodes "
            + ", ".join(f"{n.name} {n.url}" for n in deployment.live)
            + "".join(f", {n.name} {n.url} (publishers only)" for n in deployment.publish_only))
        channels = [f"chaos-{n}" for n in range(plan.channels)]
        starts = {c: await first_cursor(deployment.live[0], c) for c in channels}
        hopping = True
        readers = [READERS[technique](f"{technique}-{channel}-{number}", channel,
                                      starts[channel], deployment, plan, clock,
                                      lambda: hopping)
                   for channel in channels for technique in TECHNIQUES
                   for number in range(plan.readers)]
        ledger = Ledger(keyed=plan.keys)
        publishers = [Publisher(n, channels, deployment, ledger, plan)
                      for n in range(plan.publishers)]
        faults = Faults(deployment, plan, clock, log)
        faults.channels = channels
        stop_publishing = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            reading = [tasks.create_task(r.run()) for r in readers]
            publishing = [tasks.create_task(p.run(stop_publishing)) for p in publishers]
            first_publish = clock()
            await faults.run(until=first_publish + plan.seconds - plan.tail)
            # At least the tail after the last fault: the nodes settle with messages flowing.
            await asyncio.sleep(max(plan.tail, first_publish + plan.seconds - clock()))
            stop_publishing.set()
            await asyncio.gather(*publishing)
            last_publish = clock()
            log(f"{last_publish:7.2f} s  publishing stopped; waiting for every reader")
            hopping = False
            targets, caught_up = await drain(deployment, readers, channels)
            report.drain_seconds = round(clock() - last_publish, 2) if caught_up else -1.0
            for task in reading:
                task.cancel()
        report.seconds = round(last_publish - first_publish, 1)
        report.violations.extend(await unhealthy(deployment.live + deployment.publish_only))
        await deployment.stop()
        report.faults = faults.done
        report.publishes = dict(ledger.outcomes())
        if ledger.keyed:
            report.publishes["replayed (200)"] = ledger.replays
        report.messages_in_redis = {c: format_id(t) for c, t in targets.items()}
        report.epochs = {c: len(set().union(*(epochs_of(r) for r in readers if r.channel == c)))
                         for c in channels}
        violations = report.violations
        report.stored_without_ack = check_all(readers, ledger, targets, violations)
        report.techniques = technique_table(readers)
        for name, code in deployment.exit_codes.items():
            if code != 0:
                violations.append(f"node {name} exited with status {code} after SIGTERM")
        violations.extend(deployment.node_errors())
        return report
    finally:
        if deployment is not None:
            deployment.kill()
            await asyncio.to_thread(deployment.stop_replica)
        await asyncio.to_thread(redis.stop)
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
        shutil.rmtree(directory, ignore_errors=True)


async def unhealthy(nodes: list[Node]) -> list[str]:
    """Nodes that do not report Redis as ``ok`` (``/healthz``) within a bounded wait.

    Each node probes Redis about once a second after a failure, so a node
    that only serves readers must also notice that Redis is back.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * UNIT
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        while True:
            found = []
            for node in nodes:
                health = (await client.get(f"{node.url}/healthz")).json()
                broker = health.get("broker", {})
                links = broker.get("links", {})
                if health.get("status") != "ok" or links.get("connected") != links.get("total"):
                    found.append(f"node {node.name} reports {health.get('status')}: {broker}")
            if not found or loop.time() > deadline:
                return found
            await asyncio.sleep(0.1)


def epochs_of(reader: Reader) -> set[str]:
    found = {parse_id(reader.start)[0]}
    for event in reader.events:
        if event.kind == "message":
            found.add(parse_id(event.body["id"])[0])
        else:
            found.add(parse_id(event.body["to"])[0])
    return found


async def drain(deployment: Deployment, readers: list[Reader],
                channels: Iterable[str]) -> tuple[dict[str, Id], bool]:
    """Wait (bounded) until every reader is at the end of its channel in Redis."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT
    while True:
        targets: dict[str, Id] = {}
        for channel in channels:
            end = await channel_end(deployment, channel)
            targets[channel] = end if end is not None else ("", -1)
        behind = [r for r in readers if parse_id(r.cursor) != targets[r.channel]]
        if not behind:
            return targets, True
        if loop.time() > deadline:
            return targets, False
        await asyncio.sleep(0.05)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="seconds of publishing, faults included (default 120)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--publish-only", type=int, default=1,
                        help="nodes only publishers use, which never read a channel")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--rate", type=float, default=60.0, help="publishes per second in all")
    parser.add_argument("--readers", type=int, default=1,
                        help="readers per technique and channel")
    parser.add_argument("--pause", type=float, nargs=2, default=(0.5, 2.0),
                        metavar=("MIN", "MAX"),
                        help="seconds Redis stays paused; above 5 s publishes time out")
    parser.add_argument("--keys", action="store_true",
                        help="publishers retry with an Idempotency-Key, the same body and key "
                             "for every try of a message")
    parser.add_argument("--overlap", action="store_true",
                        help="restart nodes on a schedule of their own, during Redis faults too")
    parser.add_argument("--cluster", action="store_true",
                        help="a three-master Redis Cluster, with the cluster's faults "
                             f"({', '.join(CLUSTER_FAULT_KINDS)})")
    parser.add_argument("--faults", default=None, metavar="LIST",
                        help=f"faults to inject, comma-separated (default {','.join(FAULT_KINDS)}"
                             f", with --cluster {','.join(CLUSTER_FAULT_KINDS)}; "
                             f"also {', '.join(EXTRA_FAULT_KINDS)})")
    parser.add_argument("--quick", action="store_true", help="about 25 s")
    parser.add_argument("--json", action="store_true", help="also print the report as JSON")
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be 2 or more: a node is stopped while another serves")
    if args.quick:
        plan = quick_plan(args.seed, args.nodes)
    else:
        plan = Plan(seconds=args.seconds, seed=args.seed, nodes=args.nodes)
    plan.channels, plan.rate, plan.readers = args.channels, args.rate, args.readers
    plan.publish_only = args.publish_only
    plan.pause = (args.pause[0], args.pause[1])
    plan.overlap = args.overlap
    plan.keys = args.keys
    plan.cluster = args.cluster
    known = CLUSTER_FAULT_KINDS if args.cluster else (*FAULT_KINDS, *EXTRA_FAULT_KINDS)
    faults = args.faults or ",".join(CLUSTER_FAULT_KINDS if args.cluster else FAULT_KINDS)
    plan.kinds = tuple(kind for kind in faults.split(",") if kind)
    unknown = set(plan.kinds) - set(known)
    if unknown or not plan.kinds:
        parser.error(f"--faults: unknown {sorted(unknown)}; choose from {', '.join(known)}")
    return plan, args


async def main_async(plan: Plan) -> Report:
    """:func:`run`, with SIGTERM stopping it like Ctrl-C (everything started is stopped)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run(plan, lambda line: print(line, flush=True))
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    plan, args = parse_args(argv)
    missing = redis_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; plan {asdict(plan)}", flush=True)
    try:
        report = asyncio.run(main_async(plan))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print()
    print(report.text())
    if args.json:
        print(json.dumps(report.to_json()))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
