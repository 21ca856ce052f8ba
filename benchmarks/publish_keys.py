"""What an idempotency key costs a publish: CPU per publish with and without keys.

For each broker (memory, and Redis on a private redis-server from
tests/rediskit.py, never 6379), ``--messages`` publishes from
``--concurrency`` tasks, first without keys, then each with a key of its
own (a UUID, as a client would send). Prints the node's CPU µs per publish
(process time) and, for Redis, the redis-server's CPU µs per publish
(``INFO cpu``), which runs the PUBLISH script.

    .venv/bin/python benchmarks/publish_keys.py
    .venv/bin/python benchmarks/publish_keys.py --messages 20000 --concurrency 50

The broker alone: no HTTP. Results: docs/benchmarks.md, "Idempotency keys".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rediskit import RedisProcess
from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.redis import RedisBroker

DATA = b'{"symbol":"ACME","price":123.45,"volume":1200,"n":1}'


def redis_cpu(redis: RedisProcess) -> float:
    info = redis.command("INFO", "cpu")
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


async def publish_all(broker: Broker, messages: int, concurrency: int,
                      keyed: bool) -> tuple[float, float]:
    """Publish ``messages``; return the wall and the node's CPU seconds."""
    keys = [str(uuid.uuid4()) if keyed else None for _ in range(messages)]
    queue = iter(range(messages))

    async def worker() -> None:
        for n in queue:
            await broker.publish(f"bench-{n % 10}", DATA, idempotency_key=keys[n])

    wall, began = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - wall, time.process_time() - began


async def measure(kind: str, messages: int, concurrency: int) -> None:
    redis = RedisProcess() if kind == "redis" else None
    if redis is not None:
        redis.start()
    try:
        for keyed in (False, True, False, True):
            broker: Broker = (MemoryBroker() if redis is None
                              else RedisBroker(redis.url, timeout=30))
            await broker.start()
            await publish_all(broker, min(messages, 1000), concurrency, keyed)  # warm up
            server_before = redis_cpu(redis) if redis is not None else 0.0
            wall, cpu = await publish_all(broker, messages, concurrency, keyed)
            server = (redis_cpu(redis) - server_before) if redis is not None else None
            await broker.aclose()
            line = (f"{kind:6} {'keys' if keyed else 'none':5} {messages / wall:9,.0f} publishes/s"
                    f"  node {cpu / messages * 1e6:6.1f} µs/publish")
            if server is not None:
                line += f"  redis-server {server / messages * 1e6:6.1f} µs/publish"
            print(line, flush=True)
    finally:
        if redis is not None:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--broker", choices=["memory", "redis", "both"], default="both")
    args = parser.parse_args()
    for kind in (["memory", "redis"] if args.broker == "both" else [args.broker]):
        asyncio.run(measure(kind, args.messages, args.concurrency))


if __name__ == "__main__":
    main()
