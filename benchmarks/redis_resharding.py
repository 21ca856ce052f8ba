"""What a live slot move costs: a channel moved between Redis Cluster nodes while used.

A local three-node Redis Cluster of our own (tests/rediskit.py: free ports,
never 6379). One broker follows a channel (a node with one subscriber);
another publishes to it without pause, one publish at a time. Meanwhile the
channel's slot is moved ``--moves`` times from node to node with
``CLUSTER SETSLOT``/``MIGRATE`` (tests/rediskit.py ``migrate_slot``), with
``--pause`` seconds of normal traffic between moves.

Prints how long each move took, the publish latency (from the call to its
acknowledgement) and the delivery delay (from a publish's acknowledgement to
its delivery on the other broker) over all messages and over those published
while a move was under way, and checks that every acknowledged message was
delivered once, in order (exit status 1 otherwise)::

    .venv/bin/python benchmarks/redis_resharding.py
    .venv/bin/python benchmarks/redis_resharding.py --moves 20 --pause 0.2

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rediskit import RedisClusterProcesses, redis_missing
from tidings.brokers.redis import RedisBroker
from tidings.brokers.redis.keys import ChannelKeys
from tidings.core.cursor import END
from tidings.core.log import Gap
from tidings.core.message import Message

CHANNEL = "bench-resharding"


class Arrivals:
    """A hub subscriber noting when each message arrived."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.at: dict[str, float] = {}
        self.gaps: list[Gap] = []
        self.changed = asyncio.Event()

    def deliver(self, message: Message) -> None:
        self.ids.append(message.id)
        self.at.setdefault(message.id, time.perf_counter())
        self.changed.set()

    async def wait_for(self, count: int, within: float) -> None:
        """Wait until ``count`` messages arrived, or ``within`` seconds passed."""
        try:
            async with asyncio.timeout(within):
                while len(self.ids) < count:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            pass

    def skip(self, gap: Gap) -> None:
        self.gaps.append(gap)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def measure(cluster: RedisClusterProcesses, moves: int, pause: float) -> int:
    slot = cluster.nodes[0].command("CLUSTER", "KEYSLOT", ChannelKeys.of(CHANNEL).log)
    assert isinstance(slot, int)
    reader = RedisBroker(cluster.startup_url)
    publisher = RedisBroker(cluster.startup_url)
    await reader.start()
    await publisher.start()
    await reader.prepare({CHANNEL: END})
    arrivals = Arrivals()
    reader.hub.subscribe(CHANNEL, arrivals)

    acks: list[tuple[str, float, float]] = []  # id, called, acknowledged
    windows: list[tuple[float, float]] = []  # when each move ran
    stop = asyncio.Event()

    async def publishing() -> None:
        n = 0
        while not stop.is_set():
            called = time.perf_counter()
            message = await publisher.publish(CHANNEL, b'{"n":%d}' % n)
            acks.append((message.id, called, time.perf_counter()))
            n += 1

    task = asyncio.create_task(publishing())
    await asyncio.sleep(pause)
    for _ in range(moves):
        owner = cluster.owner(slot)
        target = next(port for port in cluster.ports if port != owner)
        began = time.perf_counter()
        await asyncio.to_thread(cluster.migrate_slot, slot, target)
        windows.append((began, time.perf_counter()))
        await asyncio.sleep(pause)
    stop.set()
    await task
    await arrivals.wait_for(len(acks), within=10)
    await reader.aclose()
    await publisher.aclose()

    published = [id_ for id_, _called, _acked in acks]
    ok = arrivals.ids == published and not arrivals.gaps
    during = [(id_, called, acked) for id_, called, acked in acks
              if any(began <= acked and called <= ended for began, ended in windows)]

    def line(what: str, rows: list[tuple[str, float, float]]) -> None:
        latency = [(acked - called) * 1000 for _id, called, acked in rows]
        delay = [(arrivals.at[id_] - acked) * 1000 for id_, _called, acked in rows
                 if id_ in arrivals.at]
        print(f"| {what} | {len(rows)} | {percentile(latency, 0.5):.2f} | "
              f"{percentile(latency, 0.99):.1f} | {max(latency, default=0):.1f} | "
              f"{percentile(delay, 0.5):.2f} | {max(delay, default=0):.1f} |")

    move_ms = [(ended - began) * 1000 for began, ended in windows]
    print(f"{moves} moves of slot {slot}: {percentile(move_ms, 0.5):.1f} ms median, "
          f"{max(move_ms):.1f} ms max (CLUSTER SETSLOT x2, MIGRATE, SETSLOT NODE x3)")
    print(f"{len(published)} published, {len(arrivals.ids)} delivered, "
          f"{len(set(arrivals.ids))} distinct, {len(arrivals.gaps)} gaps: "
          f"{'every message once, in order' if ok else 'NOT once in order'}\n")
    print("| messages | count | publish p50 ms | p99 ms | max ms "
          "| delivery after ack p50 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    line("all", acks)
    line("published during a move", during)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.5,
                        help="seconds of traffic before, between and after moves")
    args = parser.parse_args(argv)
    missing = redis_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    with RedisClusterProcesses() as cluster:
        return asyncio.run(measure(cluster, args.moves, args.pause))


if __name__ == "__main__":
    sys.exit(main())
