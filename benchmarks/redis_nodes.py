"""The Redis broker: the latency it adds, and deliveries per second on one node vs two.

Every process runs on this machine over 127.0.0.1: a ``redis-server`` of our
own on a free port (tests/rediskit.py; never the shared one on 6379), one or
two ``python -m tidings serve --port 0`` nodes (node A pinned to CPU 0 with
``taskset``, node B to CPU 1, as fanout.py pins its server), and this load
generator, *not* pinned (with two cores it has to share one with a node).
Each scenario starts its own Redis and nodes and stops them at its end, on
errors and on Ctrl-C too. The clients are the raw WebSocket subscribers of
_loadgen.py; the publisher POSTs ``{"n": NUMBER, "t": time.time(), "p": ...}``
on 4 keep-alive connections to node A.

1. **Latency** (``--latency-subscribers`` WebSocket subscribers, one channel,
   ``--latency-rate`` messages/s): publish → delivery p50/p90/p99/max, and the
   POST round trip (request written → ``201`` read), for the memory broker on
   one node, the Redis broker on one node, and the Redis broker on two nodes
   with half the subscribers on A (the publisher's node) and half on B. The
   subscribers share this process with the publisher, so both latencies
   include the time it spends reading and parsing their frames: the three
   cases are run again with a single subscriber (on B for two nodes), which
   shows what the broker adds with little else in the way. The cases take
   turns, ``--rounds`` times, and the rounds are pooled.
2. **Deliveries per second** (``--subscribers`` in all, Redis broker, split
   evenly over one or two nodes): the publish rate goes up through
   ``--rates``; each step is published for ``--settle`` seconds, then measured
   for ``--window`` seconds. A step is *sustained* when the subscribers
   received at least 97 % of what was published in the window times the
   subscribers and the p99 latency of its messages is within ``--p99-bound``
   ms. The steps stop once the subscribers fall behind (under 90 %, or not
   caught up 5 s after the step), or after three steps in a row that were not
   sustained. The two layouts are deployed side by side and take turns at
   each rate. CPU µs per delivered message is each node's utime + stime
   (``/proc/PID/stat``) over the window ÷ the messages its own subscribers
   received; node A also answers the publisher.

CPU shares are of one core. "Others' CPU" is what /proc/stat counts busy on
the machine beyond our processes (other people's work, and softirq time for
our sockets that no process is billed for): the noise indicator.

Every subscriber counts its messages; the sampled ones (all of them in part
1, ``--sample`` split over the nodes in part 2) also parse each one for its
latency and note its number. After the last publish every subscriber must
have received every message once, and every sampled subscriber, on either
node, in the same order (the channel's; not necessarily the publisher's, whose
POSTs run concurrently). A message lost or duplicated, an order that differs,
an error frame, a subscriber cut off or a failed publish is a failure: it is
reported and the exit status is 1. About 95 seconds; ``--quick`` takes about
20::

    .venv/bin/python benchmarks/redis_nodes.py
    .venv/bin/python benchmarks/redis_nodes.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _loadgen import (
    CHANNEL,
    CLK_TCK,
    Client,
    Run,
    ServerProcess,
    WebSocketClient,
    connect_all,
    next_response,
    own_cpu_seconds,
    percentile,
)
from rediskit import RedisProcess, redis_missing

#: Node settings besides the broker: no publish rate limit, since one publisher
#: address makes every publish (the default limit is 1000/s per address).
NODE_CONFIG: dict[str, object] = {"max_publish_rate": 0}
#: Keep-alive connections the publisher spreads its POSTs over.
PUBLISH_CONNECTIONS = 4
#: Longest wait, after a run's last publish, for every subscriber to catch up.
CATCH_UP_LIMIT = 20.0
#: Longest wait between two rate steps; a step not caught up by then saturated something.
STEP_CATCH_UP_LIMIT = 5.0
#: A step is sustained with at least this share of the expected deliveries in its window...
SUSTAINED_SHARE = 0.97
#: ...and the steps stop below this share (the subscribers fall behind).
FALLING_BEHIND_SHARE = 0.90


# --- processes ------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy so far (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / CLK_TCK


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by each node, Redis, this process and the whole machine."""

    time: float
    nodes: list[float]
    redis: float
    loadgen: float
    machine: float

    def use_since(self, before: CpuSample) -> dict[str, object]:
        """Each one's share of one CPU (%) between ``before`` and this sample.

        ``others`` is what the machine spent besides: other people's work, and
        softirq work for our sockets that no process is billed for.
        """
        seconds = self.time - before.time
        nodes = [a - b for a, b in zip(self.nodes, before.nodes, strict=True)]
        ours = sum(nodes) + self.redis - before.redis + self.loadgen - before.loadgen
        return {
            "seconds": round(seconds, 2),
            "node_cpu_s": nodes,
            "node_cpu_percent": [round(100 * cpu / seconds, 1) for cpu in nodes],
            "redis_cpu_percent": round(100 * (self.redis - before.redis) / seconds, 1),
            "loadgen_cpu_percent": round(100 * (self.loadgen - before.loadgen) / seconds, 1),
            "others_cpu_percent": round(
                max(0.0, 100 * (self.machine - before.machine - ours) / seconds), 1),
        }


@dataclass
class Deployment:
    """The nodes of one scenario and, for the Redis broker, its Redis."""

    nodes: list[ServerProcess]
    redis: RedisProcess | None

    def cpu(self) -> CpuSample:
        redis = process_cpu_seconds(self.redis.process.pid) if (
            self.redis is not None and self.redis.process is not None) else 0.0
        return CpuSample(time.monotonic(), [n.cpu_seconds() for n in self.nodes], redis,
                         own_cpu_seconds(), machine_busy_seconds())


@contextlib.contextmanager
def deploy(broker: str, node_count: int) -> Iterator[Deployment]:
    """Start Redis (for ``broker == "redis"``) and ``node_count`` nodes; stop them all after."""
    with contextlib.ExitStack() as stack:
        redis: RedisProcess | None = None
        config = dict(NODE_CONFIG)
        if broker == "redis":
            redis = RedisProcess()
            stack.callback(redis.stop)  # also if start() is interrupted: removes its directory
            redis.start()
            config["broker"] = redis.url
        nodes: list[ServerProcess] = []
        for cpu in range(node_count):
            node = start_node(cpu % (os.cpu_count() or 1), config)
            stack.callback(node.stop)
            nodes.append(node)
        yield Deployment(nodes, redis)


def children() -> set[int]:
    """Process ids of this process's children, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(stat.parent.name))
    return found


def start_node(cpu: int, config: dict[str, object]) -> ServerProcess:
    """:meth:`ServerProcess.start`, without leaving a node behind if it is interrupted.

    An interruption (Ctrl-C) while the node starts leaves a child that nobody
    knows of yet: it is found among our children and killed, and the config
    file named on its command line (and the log beside it) removed.
    """
    before = children()
    try:
        return ServerProcess.start(cpu=cpu, config=config)
    except BaseException:
        for pid in children() - before:
            with contextlib.suppress(OSError, ValueError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                config_path = Path(argv[argv.index("--config") + 1])
                config_path.unlink(missing_ok=True)
                config_path.with_suffix(".log").unlink(missing_ok=True)
        raise


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so that every ``finally`` stops what it started."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


# --- subscribers ----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the sampled subscribers of one node saw: (message number, latency in s)."""

    samples: list[tuple[int, float]] = field(default_factory=list)

    def latencies(self, first: int, end: int) -> list[float]:
        """Latencies of the messages numbered ``first`` up to ``end`` (excluded)."""
        return [latency for n, latency in self.samples if first <= n < end]


@dataclass
class CheckedRun(Run):
    """The :class:`Run` of one sampled subscriber: records latencies and the order of arrival."""

    tally: Tally = field(default_factory=Tally)
    numbers: list[int] = field(default_factory=list)

    def record(self, data_json: bytes) -> None:
        now = time.time()
        data = json.loads(data_json)["data"]
        self.numbers.append(data["n"])
        self.tally.samples.append((data["n"], now - data["t"]))


@dataclass
class Audience:
    """The subscribers connected to one node."""

    node: ServerProcess
    clients: list[Client]
    tally: Tally
    checked: list[CheckedRun]

    def received(self) -> int:
        return sum(c.count for c in self.clients)


async def subscribe(node: ServerProcess, count: int, sampled: int,
                    errors: list[str]) -> Audience:
    """Connect ``count`` WebSocket subscribers to ``node``, the first ``sampled`` checked."""
    run = Run(node.host, node.port, errors=errors)
    tally = Tally()
    checked = [CheckedRun(node.host, node.port, errors=errors, tally=tally)
               for _ in range(min(sampled, count))]
    factories: list[Callable[[], Client]] = [partial(WebSocketClient, c, True) for c in checked]
    factories += [partial(WebSocketClient, run, False)] * (count - len(checked))
    clients = await connect_all(run, factories)
    return Audience(node, clients, tally, checked)


async def catch_up(audiences: Sequence[Audience], publisher: Publisher, limit: float) -> bool:
    """Wait (at most ``limit`` s) until every publish is answered and every subscriber has it.

    A subscriber may see a message before the publisher reads its ``201``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    clients = [c for a in audiences for c in a.clients]
    while loop.time() < deadline:
        if (not any(conn.in_flight for conn in publisher.connections)
                and all(c.count >= publisher.sent for c in clients)):
            return True
        await asyncio.sleep(0.02)
    return False


def count_check(audiences: Sequence[Audience], published: int) -> dict[str, int]:
    """Messages lost or duplicated, and sampled subscribers that saw another order.

    Every subscriber must count ``published`` messages. Each sampled subscriber
    must have seen every number once, and all of them in one order: the
    channel's. That order need not be the publisher's, since its POSTs run
    concurrently on several connections; ``reordered`` counts the messages
    that came before a lower number (informative, not a failure).
    """
    clients = [c for a in audiences for c in a.clients if not c.sampled]
    checked = [r for a in audiences for r in a.checked]
    reference = checked[0].numbers if checked else []
    everything = set(range(published))
    return {
        "missing": sum(max(0, published - c.count) for c in clients)
        + sum(len(everything - set(r.numbers)) for r in checked),  # no subscriber counted twice
        "duplicates": sum(max(0, c.count - published) for c in clients)
        + sum(len(r.numbers) - len(set(r.numbers)) for r in checked),
        "order_differs": sum(r.numbers != reference for r in checked),
        "reordered": sum(b < a for a, b in itertools.pairwise(reference)),
    }


# --- publisher ------------------------------------------------------------------------------


class TimedPublishConnection(asyncio.Protocol):
    """POSTs on one keep-alive connection; times each request until its answer is read."""

    def __init__(self, host: str, port: int, publisher: Publisher) -> None:
        self.request_head = (b"POST /channels/%s HTTP/1.1\r\nHost: %s:%d\r\n"
                             b"Content-Type: application/json\r\n"
                             % (CHANNEL.encode(), host.encode(), port))
        self.publisher = publisher
        self.transport: asyncio.Transport | None = None
        self.in_flight: deque[tuple[int, float]] = deque()  # (number, perf_counter at send)
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def post(self, number: int, data: bytes) -> None:
        assert self.transport is not None
        self.in_flight.append((number, time.perf_counter()))
        self.transport.write(self.request_head + b"Content-Length: %d\r\n\r\n%s"
                             % (len(data), data))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (response := next_response(self)) is not None:
            number, sent = self.in_flight.popleft()
            if response.startswith(b"HTTP/1.1 201"):
                self.publisher.round_trips.append((number, time.perf_counter() - sent))
            else:
                self.publisher.errors.append(f"publish answered {response[:200]!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.publisher.errors.append(f"publisher connection lost: {exc}")


class Publisher:
    """Numbers its messages from 0; each goes on a connection with no request in flight."""

    def __init__(self, node: ServerProcess, size: int, errors: list[str]) -> None:
        self.node = node
        self.size = size
        self.errors = errors
        self.connections: list[TimedPublishConnection] = []
        self.round_trips: list[tuple[int, float]] = []  # (number, seconds)
        self.sent = 0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(PUBLISH_CONNECTIONS):
            _transport, conn = await loop.create_connection(
                partial(TimedPublishConnection, self.node.host, self.node.port, self),
                self.node.host, self.node.port)
            self.connections.append(conn)

    @property
    def accepted(self) -> int:
        return len(self.round_trips)

    def publish(self) -> None:
        data = b'{"n":%d,"t":%.6f,"p":"' % (self.sent, time.time())
        data += b"x" * max(0, self.size - len(data) - 2) + b'"}'
        count = len(self.connections)
        for step in range(count):
            conn = self.connections[(self.sent + step) % count]
            if not conn.in_flight:
                break
        else:
            conn = self.connections[self.sent % count]
        conn.post(self.sent, data)
        self.sent += 1

    async def publish_at(self, rate: float, count: int) -> None:
        """Publish ``count`` messages, one every 1/``rate`` s from now (late ones at once)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            self.publish()
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - loop.time()))

    def rtts(self, first: int, end: int) -> list[float]:
        return [rtt for n, rtt in self.round_trips if first <= n < end]

    def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()


# --- statistics -----------------------------------------------------------------------------


def spread_ms(values: list[float]) -> dict[str, float | int]:
    """p50/p90/p99/max of ``values`` (seconds), in milliseconds."""
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"),
                "max": float("nan"), "samples": 0}
    return {"p50": round(1000 * percentile(values, 0.50), 2),
            "p90": round(1000 * percentile(values, 0.90), 2),
            "p99": round(1000 * percentile(values, 0.99), 2),
            "max": round(1000 * max(values), 2),
            "samples": len(values)}


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares as even as can be, the first ones larger."""
    return [total // parts + (i < total % parts) for i in range(parts)]


# --- part 1: latency ------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyCase:
    name: str
    broker: str
    nodes: int
    #: ``None``: ``--latency-subscribers`` split over the nodes; else the node
    #: (0: A, 1: B) of the only subscriber.
    alone_on: int | None = None

    def shares(self, subscribers: int) -> list[int]:
        if self.alone_on is None:
            return split(subscribers, self.nodes)
        return [int(i == self.alone_on) for i in range(self.nodes)]


LATENCY_CASES = (
    LatencyCase("memory, 1 node", "memory", 1),
    LatencyCase("redis, 1 node", "redis", 1),
    LatencyCase("redis, 2 nodes", "redis", 2),
    LatencyCase("memory, 1 node, 1 sub", "memory", 1, alone_on=0),
    LatencyCase("redis, 1 node, 1 sub", "redis", 1, alone_on=0),
    LatencyCase("redis, 2 nodes, 1 sub", "redis", 2, alone_on=1),
)


async def latency_round(case: LatencyCase, deployment: Deployment,
                        args: argparse.Namespace) -> dict[str, object]:
    """One measurement of ``case``: its raw latencies (s), CPU use and counts."""
    errors: list[str] = []
    nodes = deployment.nodes
    audiences = [await subscribe(node, share, share, errors)
                 for node, share in zip(nodes, case.shares(args.latency_subscribers),
                                        strict=True)]
    publisher = Publisher(nodes[0], args.size, errors)
    await publisher.connect()
    warm = round(args.latency_warmup * args.latency_rate)
    await publisher.publish_at(args.latency_rate, warm)
    before = deployment.cpu()
    await publisher.publish_at(args.latency_rate, round(args.latency_seconds * args.latency_rate))
    cpu = deployment.cpu().use_since(before)
    caught_up = await catch_up(audiences, publisher, CATCH_UP_LIMIT)
    end = publisher.sent
    result: dict[str, object] = {
        "case": case.name, "published": end, "accepted": publisher.accepted,
        "caught_up": caught_up,
        "post_s": publisher.rtts(warm, end),
        "delivery_s": [a.tally.latencies(warm, end) for a in audiences],
        **cpu, **count_check(audiences, end),
        "errors": len(errors), "first_errors": errors[:3],
    }
    for audience in audiences:
        for client in audience.clients:
            client.close()
    publisher.close()
    return result


def latency_summary(case: LatencyCase, rounds: list[dict[str, object]]) -> dict[str, object]:
    """The rounds of one case pooled: latency percentiles (ms), mean CPU shares, sums."""
    def values(key: str) -> list[Any]:
        return [r[key] for r in rounds]

    def mean(key: str) -> float:
        return round(float(sum(values(key))) / len(rounds), 1)

    return {
        "part": "latency", "case": case.name, "broker": case.broker, "nodes": case.nodes,
        "rounds": len(rounds),
        "post_ms": spread_ms([x for r in values("post_s") for x in r]),
        "delivery_ms": {("A" if i == 0 else "B"): spread_ms(
            [x for r in values("delivery_s") for x in r[i]]) for i in range(case.nodes)},
        "delivery_p50_ms_per_round": [
            spread_ms([x for node in r for x in node])["p50"] for r in values("delivery_s")],
        "node_cpu_percent": [round(sum(r[i] for r in values("node_cpu_percent")) / len(rounds),
                                   1) for i in range(case.nodes)],
        "redis_cpu_percent": mean("redis_cpu_percent"),
        "loadgen_cpu_percent": mean("loadgen_cpu_percent"),
        "others_cpu_percent": mean("others_cpu_percent"),
        **{key: sum(values(key)) for key in ("published", "accepted", "missing", "duplicates",
                                             "order_differs", "reordered", "errors")},
        "caught_up": all(values("caught_up")),
        "first_errors": [e for r in values("first_errors") for e in r][:3],
    }


# --- part 2: deliveries per second ----------------------------------------------------------


class Rig:
    """One deployment with its subscribers and publisher, stepped through the rates."""

    def __init__(self, deployment: Deployment, audiences: list[Audience],
                 publisher: Publisher, errors: list[str]) -> None:
        self.deployment = deployment
        self.audiences = audiences
        self.publisher = publisher
        self.errors = errors
        self.steps: list[dict[str, Any]] = []
        self.misses = 0  # steps in a row that were not sustained
        self.stopped = False

    @classmethod
    async def connect(cls, deployment: Deployment, args: argparse.Namespace) -> Rig:
        errors: list[str] = []
        nodes = deployment.nodes
        audiences = [await subscribe(node, share, sampled, errors)
                     for node, share, sampled in zip(
                         nodes, split(args.subscribers, len(nodes)),
                         split(args.sample, len(nodes)), strict=True)]
        publisher = Publisher(nodes[0], args.size, errors)
        await publisher.connect()
        return cls(deployment, audiences, publisher, errors)

    async def step(self, rate: float, args: argparse.Namespace) -> None:
        """Publish at ``rate`` (settle, then the measured window); note how it went."""
        publisher, audiences = self.publisher, self.audiences
        await publisher.publish_at(rate, round(args.settle * rate))
        first = publisher.sent
        counts0 = [a.received() for a in audiences]
        before = self.deployment.cpu()
        await publisher.publish_at(rate, round(args.window * rate))
        await asyncio.sleep(1 / rate)  # the last message's deliveries are still in flight
        counts1 = [a.received() for a in audiences]
        cpu = self.deployment.cpu().use_since(before)
        end = publisher.sent
        caught_up = await catch_up(audiences, publisher, STEP_CATCH_UP_LIMIT)
        delivered = [c1 - c0 for c0, c1 in zip(counts0, counts1, strict=True)]
        seconds: float = cpu["seconds"]  # type: ignore[assignment]
        node_cpu: list[float] = cpu.pop("node_cpu_s")  # type: ignore[assignment]
        share = sum(delivered) / ((end - first) * args.subscribers)
        latency = spread_ms([x for a in audiences for x in a.tally.latencies(first, end)])
        sustained = (caught_up and share >= SUSTAINED_SHARE
                     and latency["p99"] <= args.p99_bound and not self.errors)
        self.steps.append({
            "rate": rate, "published_per_s": round((end - first) / seconds, 1),
            "delivered_per_s": round(sum(delivered) / seconds),
            "delivered_share": round(share, 3), "latency_ms": latency,
            "us_per_delivered": [round(1e6 * c / d, 2) if d else None
                                 for c, d in zip(node_cpu, delivered, strict=True)],
            **cpu, "caught_up": caught_up, "sustained": sustained,
        })
        self.misses = 0 if sustained else self.misses + 1
        self.stopped = (not caught_up or share < FALLING_BEHIND_SHARE or bool(self.errors)
                        or self.misses == 3)

    async def finish(self) -> dict[str, object]:
        """Wait for every subscriber, check the counts, close every connection."""
        caught_up = await catch_up(self.audiences, self.publisher, CATCH_UP_LIMIT)
        sustained = [s for s in self.steps if s["sustained"]]
        best = max(sustained, key=lambda s: s["delivered_per_s"]) if sustained else None
        result: dict[str, object] = {
            "part": "throughput", "nodes": len(self.deployment.nodes),
            "subscribers": sum(len(a.clients) for a in self.audiences),
            "split": [len(a.clients) for a in self.audiences], "steps": self.steps,
            "sustained_per_s": best["delivered_per_s"] if best else 0,
            "sustained_rate": best["rate"] if best else None,
            "published": self.publisher.sent, "accepted": self.publisher.accepted,
            "caught_up": caught_up, **count_check(self.audiences, self.publisher.sent),
            "errors": len(self.errors), "first_errors": self.errors[:3],
        }
        for audience in self.audiences:
            for client in audience.clients:
                client.close()
        self.publisher.close()
        return result


async def compare_throughput(deployments: list[Deployment],
                             args: argparse.Namespace) -> list[dict[str, object]]:
    """Step every deployment through the rates, taking turns at each rate.

    Taking turns spreads the machine's other work over the deployments
    instead of letting it fall on whichever ran during a busy minute.
    """
    rigs = [await Rig.connect(d, args) for d in deployments]
    for rate in args.rates:
        for rig in rigs:
            if not rig.stopped:
                await rig.step(rate, args)
                print(f"deliveries {len(rig.deployment.nodes)} node(s) "
                      f"{json.dumps(rig.steps[-1])}", flush=True)
    return [await rig.finish() for rig in rigs]


# --- reporting ------------------------------------------------------------------------------


def failed(result: dict[str, object]) -> bool:
    return bool(result["missing"] or result["duplicates"] or result["order_differs"]
                or result["errors"] or result["accepted"] != result["published"]
                or not result["caught_up"])


def percents(values: object) -> str:
    assert isinstance(values, list)
    return " + ".join(f"{v} %" for v in values)


def latency_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| broker, nodes | subscribers on | delivery p50 / p90 / p99 / max ms "
             "| POST p50 / p90 / p99 / max ms | node CPU | redis CPU | others' CPU "
             "| lost / dup / order |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        post = r["post_ms"]
        for node, d in r["delivery_ms"].items():
            where = "A (publisher's node)" if node == "A" else "B (the other node)"
            if not d["samples"]:
                continue  # no subscriber on this node
            delivery = f"{d['p50']} / {d['p90']} / {d['p99']} / {d['max']}"
            lines.append(
                f"| {r['case']} | {where} | {delivery} "
                f"| {post['p50']} / {post['p90']} / {post['p99']} / {post['max']} "
                f"| {percents(r['node_cpu_percent'])} | {r['redis_cpu_percent']} % "
                f"| {r['others_cpu_percent']} % "
                f"| {r['missing']} / {r['duplicates']} / {r['order_differs']} |")
    return lines


def throughput_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| nodes | msg/s | delivered/s | p50 / p99 ms | µs/delivered per node "
             "| node CPU | redis CPU | loadgen CPU | others' CPU | sustained |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        for s in r["steps"]:
            lat = s["latency_ms"]
            lines.append(
                f"| {r['nodes']} | {s['published_per_s']} | {s['delivered_per_s']:,} "
                f"| {lat['p50']} / {lat['p99']} "
                f"| {' / '.join(str(u) for u in s['us_per_delivered'])} "
                f"| {percents(s['node_cpu_percent'])} | {s['redis_cpu_percent']} % "
                f"| {s['loadgen_cpu_percent']} % | {s['others_cpu_percent']} % "
                f"| {'yes' if s['sustained'] else 'no'} |")
    return lines


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("latency", "throughput", "both"), default="both")
    parser.add_argument("--size", type=int, default=100, help="bytes of JSON data per message")
    parser.add_argument("--latency-subscribers", type=int, default=100)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--latency-warmup", type=float, default=0.5, help="seconds")
    parser.add_argument("--latency-seconds", type=float, default=3.0,
                        help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=2,
                        help="part 1: rounds over the three cases, pooled")
    parser.add_argument("--subscribers", type=int, default=1000,
                        help="part 2: subscribers in all, split evenly over the nodes")
    parser.add_argument("--rates", type=float, nargs="+", default=[25, 50, 100, 125, 150],
                        help="part 2: publish rates tried in turn (messages per second); "
                             "the steps stop after three in a row that are not sustained")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="part 2: seconds published at each rate before the window")
    parser.add_argument("--window", type=float, default=3.0,
                        help="part 2: measured seconds per step")
    parser.add_argument("--p99-bound", type=float, default=50.0,
                        help="part 2: the p99 latency (ms) of a sustained step")
    parser.add_argument("--sample", type=int, default=50,
                        help="part 2: subscribers (split over the nodes) that parse and check "
                             "each message")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 20 s")
    parser.add_argument("--json", action="store_true", help="also print JSON result lines")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.latency_warmup, args.latency_seconds = 1, 0.3, 1.0
        args.subscribers, args.rates = min(args.subscribers, 200), [100.0, 200.0]
        args.settle, args.window = 0.5, 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = redis_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    stop_on_sigterm()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {os.cpu_count()} CPUs; node A pinned to "
          f"CPU 0, node B to CPU 1; redis-server and this load generator not pinned "
          f"(allowed CPUs {sorted(os.sched_getaffinity(0))}); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    latency_results: list[dict[str, Any]] = []
    throughput_results: list[dict[str, Any]] = []
    started = time.monotonic()
    if args.part in ("latency", "both"):
        rounds: dict[LatencyCase, list[dict[str, object]]] = {c: [] for c in LATENCY_CASES}
        for number in range(args.rounds):
            for case in LATENCY_CASES:
                with deploy(case.broker, case.nodes) as deployment:
                    result = uvloop.run(latency_round(case, deployment, args))
                rounds[case].append(result)
                print(f"latency round {number + 1} {case.name:22} "
                      f"POST {spread_ms(result['post_s'])['p50']} ms, delivery "  # type: ignore[arg-type]
                      f"{[spread_ms(d)['p50'] for d in result['delivery_s']]} ms (p50), "  # type: ignore[attr-defined]
                      f"others' CPU {result['others_cpu_percent']} %", flush=True)
        latency_results = [latency_summary(c, r) for c, r in rounds.items()]
    if args.part in ("throughput", "both"):
        with deploy("redis", 1) as one, deploy("redis", 2) as two:
            throughput_results = uvloop.run(compare_throughput([one, two], args))
    print(f"\nfinished in {time.monotonic() - started:.0f} s; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    if latency_results:
        print(f"Latency: {args.latency_subscribers} WebSocket subscribers, "
              f"{args.latency_rate:g} msg/s of {args.size} bytes, {args.rounds} x "
              f"{args.latency_seconds:g} s measured per case\n")
        print("\n".join(latency_table(latency_results)) + "\n")
    if throughput_results:
        print(f"Deliveries: {args.subscribers} WebSocket subscribers split over the nodes, "
              f"Redis broker, {args.window:g} s per step, sustained = p99 <= "
              f"{args.p99_bound:g} ms and >= {SUSTAINED_SHARE:.0%} delivered\n")
        print("\n".join(throughput_table(throughput_results)) + "\n")
        for r in throughput_results:
            print(f"{r['nodes']} node(s): sustained {r['sustained_per_s']:,} deliveries/s "
                  f"(at {r['sustained_rate']} msg/s)")
    status = 0
    for r in latency_results + throughput_results:
        name = r.get("case") or f"{r['nodes']} node(s)"
        print(f"{name}: published {r['published']}, "
              f"accepted {r['accepted']}, lost {r['missing']}, duplicated {r['duplicates']}, "
              f"order differs {r['order_differs']}, caught up {r['caught_up']}, errors "
              f"{r['errors']}; {r['reordered']} came after a higher number (concurrent POSTs)")
        if failed(r):
            status = 1
            print(f"FAILED: {name}: {r['first_errors'] or 'see the counts above'}",
                  file=sys.stderr)
    if args.json:
        for r in latency_results + throughput_results:
            print(json.dumps(r))
    return status


if __name__ == "__main__":
    sys.exit(main())
