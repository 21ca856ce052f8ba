"""Server CPU per delivered message with Prometheus metrics on (and scraped) vs off.

Runs ``fanout.py``'s measurement (server pinned to CPU 0, load generator to
CPU 1, one channel, ``--subscribers`` readers) in interleaved rounds, each
round every variant once, in a rotating order:

* ``off``: ``metrics = false`` (no ``/metrics``; the counters a delivery
  bumps are plain integer additions, always there);
* ``on``: ``metrics = true``, and ``/metrics`` scraped every
  ``--scrape-interval`` seconds during the run (Prometheus' default is 15 s;
  1 s is harsher);
* ``before`` (with ``--before-src DIR``): the server run from another source
  tree, such as the code before metrics existed, to measure what counting costs.

With ``--workers-broker redis://HOST:PORT/DB``, it also times scrapes (wall
time, sequential) of a lone server against ``tidings serve --workers 2``, whose
scrape asks the other worker over a Unix socket (server/workermetrics.py),
in interleaved rounds.

Prints µs of server CPU (utime + stime) per delivered message for each run, the
median of each variant, and the differences. CPU time per message is used
rather than wall time because the machine may be shared. Example::

    .venv/bin/python benchmarks/metrics_cost.py --rounds 5
    git archive main src | tar -x -C /tmp/before   # the code without the counters
    .venv/bin/python benchmarks/metrics_cost.py --before-src /tmp/before/src
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loadgen import Run, ServerProcess, connect_all, pin_to_cpu
from fanout import bench, factory, wait_subscribed
from fanout import parse_args as fanout_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--technique", default="websocket",
                        choices=["websocket", "sse", "longpoll", "poll"])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--before-src", metavar="DIR",
                        help="also run a server from this source tree (its PYTHONPATH)")
    parser.add_argument("--scrapes", type=int, default=50,
                        help="scrapes timed with --subscribers idle readers open (0: skip)")
    parser.add_argument("--workers-broker", metavar="URL",
                        help="also time scrapes of a lone server vs --workers 2 on this Redis")
    parser.add_argument("--scrape-rounds", type=int, default=3,
                        help="interleaved rounds of --workers-broker's timing")
    parser.add_argument("--json", action="store_true", help="also print a JSON result line")
    return parser.parse_args(argv)


async def scrape_cost(args: argparse.Namespace) -> float:
    """Server CPU seconds per scrape of /metrics with ``--subscribers`` idle readers open."""
    server = ServerProcess.start(cpu=0)
    try:
        run = Run(server.host, server.port)
        fanout = fanout_args([args.technique, "--subscribers", str(args.subscribers)])
        clients = await connect_all(run, [factory(fanout, run, False)
                                          for _ in range(args.subscribers)])
        await wait_subscribed(run, args.technique, args.subscribers)
        async with httpx.AsyncClient(timeout=10) as http:
            (await http.get(f"{server.url}/metrics")).raise_for_status()  # imports, caches
            idle = server.cpu_seconds()
            await asyncio.sleep(1.0)
            idle = server.cpu_seconds() - idle  # the housekeeping's own CPU per second
            began, started = server.cpu_seconds(), asyncio.get_running_loop().time()
            for _ in range(args.scrapes):
                (await http.get(f"{server.url}/metrics")).raise_for_status()
            elapsed = asyncio.get_running_loop().time() - started
            spent = server.cpu_seconds() - began - idle * elapsed
        for client in clients:
            client.close()
    finally:
        server.stop()
    return spent / args.scrapes


async def scrape_latencies(url: str, count: int) -> list[float]:
    """Seconds of ``count`` sequential scrapes, each on a new connection (as Prometheus
    scrapes: under --workers, the kernel hands each to either worker)."""
    seconds = []
    loop = asyncio.get_running_loop()
    for _ in range(count):
        async with httpx.AsyncClient(timeout=10) as http:
            began = loop.time()
            (await http.get(f"{url}/metrics")).raise_for_status()
            seconds.append(loop.time() - began)
    return seconds


async def workers_scrapes(args: argparse.Namespace) -> dict[str, float]:
    """Median ms per scrape: a lone server vs ``--workers 2`` (interleaved rounds)."""
    found: dict[str, list[float]] = {"lone": [], "workers": []}
    for _round in range(args.scrape_rounds):
        for variant in ("lone", "workers"):
            extra = ("--workers", "2") if variant == "workers" else ()
            server = ServerProcess.start(cpu=0, config={"broker": args.workers_broker},
                                         extra=extra)
            try:
                await scrape_latencies(server.url, 5)  # imports, caches
                found[variant] += await scrape_latencies(server.url, max(args.scrapes, 10))
            finally:
                server.stop()
    return {variant: 1000 * statistics.median(seconds) for variant, seconds in found.items()}


async def scraping(url: str, interval: float, counts: list[int]) -> None:
    """GET /metrics every ``interval`` seconds until cancelled; count the scrapes."""
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            response = await http.get(f"{url}/metrics")
            response.raise_for_status()
            counts[0] += 1
            await asyncio.sleep(interval)


async def one_run(args: argparse.Namespace, variant: str) -> dict[str, object]:
    config: dict[str, object] = {}
    environment = dict(os.environ)
    if variant == "before":
        os.environ["PYTHONPATH"] = str(args.before_src)
    else:
        config["metrics"] = variant == "on"
    try:
        server = ServerProcess.start(cpu=0, config=config)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    scrapes = [0]
    scraper = None
    if variant == "on":
        scraper = asyncio.ensure_future(scraping(server.url, args.scrape_interval, scrapes))
    try:
        fanout = fanout_args([args.technique, "--subscribers", str(args.subscribers),
                              "--rate", str(args.rate), "--seconds", str(args.seconds)])
        result = await bench(fanout, server)
    finally:
        if scraper is not None:
            scraper.cancel()
            await asyncio.gather(scraper, return_exceptions=True)
        server.stop()
    result["variant"] = variant
    result["scrapes"] = scrapes[0]
    return result


async def main_async(args: argparse.Namespace) -> list[dict[str, object]]:
    variants = ["off", "on"] + (["before"] if args.before_src else [])
    results = []
    for round_number in range(args.rounds):
        shift = round_number % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            result = await one_run(args, variant)
            results.append(result)
            print(f"round {round_number + 1} {variant:6}: {result['us_per_delivered']} "
                  f"µs/delivered, server {result['server_cpu_percent']}% of a core, "
                  f"{result['scrapes']} scrapes, missing {result['missing']}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin_to_cpu(1)
    results = uvloop.run(main_async(args))
    medians: dict[str, float] = {}
    for variant in dict.fromkeys(str(r["variant"]) for r in results):
        values = [float(r["us_per_delivered"]) for r in results  # type: ignore[arg-type]
                  if r["variant"] == variant and r["us_per_delivered"] is not None]
        medians[variant] = statistics.median(values)
        print(f"{variant:6} median {medians[variant]:.2f} µs/delivered "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")
    if medians:  # --rounds 0: only the scrapes
        print(f"on vs off: {100 * (medians['on'] / medians['off'] - 1):+.1f} %")
    if "before" in medians:
        print(f"off vs before: {100 * (medians['off'] / medians['before'] - 1):+.1f} %")
        print(f"on vs before: {100 * (medians['on'] / medians['before'] - 1):+.1f} %")
    per_scrape = None
    if args.scrapes:
        per_scrape = uvloop.run(scrape_cost(args))
        print(f"one scrape with {args.subscribers} {args.technique} readers open: "
              f"{1000 * per_scrape:.2f} ms of server CPU")
    scrapes = None
    if args.workers_broker:
        scrapes = uvloop.run(workers_scrapes(args))
        print(f"one scrape, median wall time: lone server {scrapes['lone']:.2f} ms, "
              f"--workers 2 {scrapes['workers']:.2f} ms")
    if args.json:
        print(json.dumps({"medians": medians, "scrape_cpu_s": per_scrape,
                          "workers_scrape_ms": scrapes, "runs": results}))
    return 1 if any(r["missing"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
