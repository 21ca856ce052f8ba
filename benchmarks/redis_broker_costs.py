"""What the Redis broker costs a node's CPU: per publish, and per message it follows.

Two processes against a private redis-server (tests/rediskit.py: a free
port, never 6379):

* the publisher: ``RedisBroker.publish`` from ``--concurrency`` tasks at
  once, ``--messages`` in all; prints publishes/s and CPU µs per publish;
* the follower: another node's broker with a replica of the channel and one
  hub subscriber (which only counts); prints CPU µs per message taken from
  pub/sub, offered to the replica and handed to the hub.

    .venv/bin/python benchmarks/redis_broker_costs.py
    .venv/bin/python benchmarks/redis_broker_costs.py --concurrency 1 --messages 2000

With ``--concurrency 1`` messages come one at a time, as at low rates, and
each costs a wake-up of both processes; with many in flight they come in
bursts. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rediskit import RedisProcess
from tidings.brokers.redis import RedisBroker
from tidings.core.cursor import ORIGIN
from tidings.core.log import Gap
from tidings.core.message import Message

DATA = b'{"symbol":"ACME","price":123.45,"volume":1200,"n":1}'


class Counter:
    def __init__(self, total: int) -> None:
        self.count = 0
        self.total = total
        self.first = asyncio.Event()
        self.all = asyncio.Event()

    def deliver(self, message: Message) -> None:
        self.count += 1
        if self.count == 1:
            self.first.set()
        if self.count == self.total:
            self.all.set()

    def skip(self, gap: Gap) -> None:
        raise AssertionError(f"a gap in a benchmark: {gap}")


def run(main: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def follower(url: str, total: int, ready: Any, results: Any) -> None:
    async def main() -> None:
        broker = RedisBroker(url)
        await broker.start()
        await broker.prepare({"bench": ORIGIN})
        counter = Counter(total)
        broker.hub.subscribe("bench", counter)
        ready.set()
        await counter.first.wait()
        started = time.process_time()
        await asyncio.wait_for(counter.all.wait(), 300)
        results.put(("follow", (time.process_time() - started) / (total - 1) * 1e6))
        await broker.aclose()

    run(main())


def publisher(url: str, total: int, concurrency: int, results: Any) -> None:
    async def main() -> None:
        broker = RedisBroker(url)
        await broker.start()

        async def task(count: int) -> None:
            for _ in range(count):
                await broker.publish("bench", DATA)

        shares = [total // concurrency + (i < total % concurrency) for i in range(concurrency)]
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(task(n) for n in shares))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        results.put(("publish", (total / wall, cpu / total * 1e6)))
        await broker.aclose()

    run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with RedisProcess() as redis:
        results: Any = multiprocessing.Queue()
        ready = multiprocessing.Event()
        follow = multiprocessing.Process(target=follower,
                                         args=(redis.url, args.messages, ready, results))
        follow.start()
        if not ready.wait(30):
            raise SystemExit("the follower did not start")
        publish = multiprocessing.Process(
            target=publisher, args=(redis.url, args.messages, args.concurrency, results))
        publish.start()
        found = dict(results.get(timeout=300) for _ in range(2))
        publish.join(30)
        follow.join(30)
    rate, per_publish = found["publish"]
    print(f"{args.messages} messages, {args.concurrency} concurrent publishes")
    print(f"publisher: {rate:,.0f} publishes/s, {per_publish:.1f} µs CPU per publish")
    print(f"follower:  {found['follow']:.1f} µs CPU per message followed")


if __name__ == "__main__":
    main()
