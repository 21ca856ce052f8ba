"""Deliveries per second with ``tidings serve --workers 1`` and ``--workers 2`` on one Redis.

For each worker count: a ``redis-server`` of our own on a free port
(tests/rediskit.py; never the shared one on 6379), ``python -m tidings serve
--port 0 --workers N --broker redis://...`` (not pinned: the kernel places the
workers), ``--subscribers`` WebSocket readers of one channel (the raw clients
of _loadgen.py; the kernel spreads their connections over the workers), and a
publisher on 4 keep-alive connections. The publish rate climbs through
``--rates``; each step publishes for ``--settle`` s, then ``--window`` s are
measured: deliveries per second, the CPU of every tidings process (the
supervisor and its workers, from /proc) per delivered message, and the p50/p99
latency on ``--sample`` readers. The steps stop once the readers fall behind
(under 95 % of what was published in the window). The load generator is not
pinned either: on a 2-core machine it shares the cores with the workers, so
read the figures as a comparison, not a ceiling::

    .venv/bin/python benchmarks/workers.py
    .venv/bin/python benchmarks/workers.py --rates 100 200 400 --window 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _loadgen import (
    CLK_TCK,
    Publisher,
    Run,
    WebSocketClient,
    connect_all,
    health,
    own_cpu_seconds,
    percentile,
    raise_fd_limit,
)
from rediskit import RedisProcess, redis_missing


class Workers:
    """``tidings serve --workers N`` as a child process; its URL from the line it prints."""

    def __init__(self, count: int, broker: str) -> None:
        self.count = count  # with 1, the process serves itself (no supervisor)
        raise_fd_limit()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1", "--port", "0",
             "--workers", str(count), "--broker", broker, "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if "serving on" not in line:
            self.stop()
            raise RuntimeError(f"tidings serve --workers {count} did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def pids(self) -> list[int]:
        parent = self.process.pid
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        return [parent, *map(int, children)]

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def deployed(count: int) -> Iterator[Workers]:
    with RedisProcess() as redis:
        workers = Workers(count, redis.url)
        try:
            yield workers
        finally:
            workers.stop()


async def ladder(workers: Workers, args: argparse.Namespace) -> list[dict[str, object]]:
    run = Run("127.0.0.1", workers.port)
    sampled = min(args.sample, args.subscribers)
    clients = await connect_all(run, [partial(WebSocketClient, run, i < sampled)
                                      for i in range(args.subscribers)])
    publisher = Publisher(run, args.size)
    await publisher.connect()
    await health(run)
    loop = asyncio.get_running_loop()
    steps: list[dict[str, object]] = []
    try:
        for rate in args.rates:
            interval = 1.0 / rate
            total = round((args.settle + args.window) * rate)
            settle = round(args.settle * rate)
            begin: tuple[float, float, float, int] | None = None
            start = loop.time()
            for n in range(total):
                if n == settle:
                    run.latencies.clear()
                    run.measuring = True
                    begin = (time.monotonic(), workers.cpu_seconds(), own_cpu_seconds(),
                             sum(c.count for c in clients))
                publisher.publish()
                delay = start + (n + 1) * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif n % 50 == 49:
                    await asyncio.sleep(0)
            end = (time.monotonic(), workers.cpu_seconds(), own_cpu_seconds(),
                   sum(c.count for c in clients))
            run.measuring = False
            assert begin is not None
            seconds, cpu, own, delivered = (e - b for e, b in zip(end, begin, strict=True))
            expected = (total - settle) * args.subscribers
            step = {
                "workers": workers.count, "rate": rate,
                "deliveries_per_s": round(delivered / seconds),
                "share_delivered": round(delivered / expected, 3),
                "us_per_delivered": round(1e6 * cpu / delivered, 2) if delivered else None,
                "tidings_cpu_percent": round(100 * cpu / seconds, 1),
                "loadgen_cpu_percent": round(100 * own / seconds, 1),
                "p50_ms": round(1000 * percentile(run.latencies, 0.5), 2),
                "p99_ms": round(1000 * percentile(run.latencies, 0.99), 2),
                "errors": len(run.errors)}
            steps.append(step)
            print(json.dumps(step), flush=True)
            if delivered < 0.95 * expected or run.errors:
                break
            await asyncio.sleep(1)  # let the last step's deliveries land before the next
    finally:
        for client in clients:
            client.close()
        publisher.close()
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200, 400, 800])
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--sample", type=int, default=50)
    args = parser.parse_args(argv)
    if (reason := redis_missing()) is not None:
        print(f"workers.py: {reason}", file=sys.stderr)
        return 2
    results = []
    for count in args.workers:
        with deployed(count) as workers:
            results += uvloop.run(ladder(workers, args))
    print("\n| workers | msg/s | deliveries/s | delivered | µs/delivered (all workers) "
          "| tidings CPU | loadgen CPU | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['workers']} | {r['rate']:g} | {r['deliveries_per_s']} "
              f"| {100 * r['share_delivered']:.1f} % | {r['us_per_delivered']} "
              f"| {r['tidings_cpu_percent']} % | {r['loadgen_cpu_percent']} % "
              f"| {r['p50_ms']} | {r['p99_ms']} |")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
