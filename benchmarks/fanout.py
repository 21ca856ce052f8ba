"""Server CPU per delivered message, and delivery latency, for one reading technique.

Starts ``python -m tidings serve`` pinned to CPU 0, pins itself (the load
generator) to CPU 1, connects ``--subscribers`` subscribers to one channel,
and publishes ``--rate`` messages per second of ``--size`` bytes: first for
``--warmup`` seconds, then for ``--seconds`` measured seconds.

Prints server CPU time (utime + stime from /proc) over the measured window
divided by the messages subscribers received in that window, latency p50/p99
(publish → arrival, on ``--sample`` subscribers), and how many messages any
subscriber missed (must be 0). Example::

    .venv/bin/python benchmarks/fanout.py websocket --subscribers 1000 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loadgen import (
    TECHNIQUES,
    Client,
    LongPollClient,
    PollClient,
    Publisher,
    Run,
    ServerProcess,
    SseClient,
    WebSocketClient,
    connect_all,
    health,
    own_cpu_seconds,
    percentile,
    pin_to_cpu,
)

#: Longest wait, after the last publish, for subscribers still catching up.
DRAIN_LIMIT = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("technique", choices=TECHNIQUES)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--size", type=int, default=100, help="bytes of JSON data per message")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds published first")
    parser.add_argument("--sample", type=int, default=50,
                        help="subscribers that parse every message for latency")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--deflate", action="store_true",
                        help="WebSocket subscribers offer permessage-deflate")
    parser.add_argument("--feed", action="store_true",
                        help="publish the demo's price ticks instead of --size bytes of filler")
    parser.add_argument("--json", action="store_true", help="also print a JSON result line")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the server with py-spy over the measured window "
                             "(FILE.svg: flame graph, FILE.txt: collapsed stacks)")
    return parser.parse_args(argv)


def factory(args: argparse.Namespace, run: Run, sampled: bool) -> Callable[[], Client]:
    if args.technique == "websocket":
        return partial(WebSocketClient, run, sampled, args.deflate)
    if args.technique == "sse":
        return partial(SseClient, run, sampled)
    if args.technique == "longpoll":
        return partial(LongPollClient, run, sampled, wait=30.0)
    return partial(PollClient, run, sampled, interval=args.poll_interval)


async def wait_subscribed(run: Run, technique: str, expected: int) -> None:
    """Until the server counts every subscriber (a long poll may still be on its way)."""
    key = {"websocket": "streams", "sse": "streams", "longpoll": "long_polls"}.get(technique)
    if key is None:
        return
    async with asyncio.timeout(30):
        while True:
            connections = (await health(run))["connections"]
            assert isinstance(connections, dict)
            if connections[key] >= expected:
                return
            await asyncio.sleep(0.1)


async def bench(args: argparse.Namespace, server: ServerProcess) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    run = Run(server.host, server.port)
    sampled = min(args.sample, args.subscribers)
    factories = [factory(args, run, i < sampled) for i in range(args.subscribers)]
    t0 = time.monotonic()
    clients = await connect_all(run, factories)
    connect_seconds = time.monotonic() - t0
    await wait_subscribed(run, args.technique, args.subscribers)
    if args.technique == "poll":
        for client in clients:
            assert isinstance(client, PollClient)
            client.start_polling(random.uniform(0, args.poll_interval))

    publisher = Publisher(run, args.size, feed=args.feed)
    await publisher.connect()

    interval = 1.0 / args.rate
    total = round((args.warmup + args.seconds) * args.rate)
    warm = round(args.warmup * args.rate)
    window: dict[str, float] = {}

    profiler: subprocess.Popen[bytes] | None = None

    def snapshot(name: str) -> None:
        window[f"{name}_cpu"] = server.cpu_seconds()
        window[f"{name}_own_cpu"] = own_cpu_seconds()
        window[f"{name}_received"] = sum(c.count for c in clients)
        window[f"{name}_time"] = time.monotonic()

    start = loop.time()
    for n in range(total):
        if n == warm:
            if args.profile:
                profiler = start_profiler(args, server)
            snapshot("begin")
            run.measuring = True
        publisher.publish()
        delay = start + (n + 1) * interval - loop.time()
        await asyncio.sleep(max(0.0, delay))
    # The last message's deliveries are still in flight: give them one more interval.
    await asyncio.sleep(interval)
    snapshot("end")
    run.measuring = False
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await asyncio.to_thread(profiler.wait, 60)

    # Drain: every subscriber should reach every message. A saturated server may
    # still be catching up, so wait while counts move (at most DRAIN_LIMIT seconds).
    drain_start = loop.time()
    quiet_until = drain_start + 5 + (args.poll_interval if args.technique == "poll" else 0)
    received = -1
    while loop.time() < min(quiet_until, drain_start + DRAIN_LIMIT):
        if publisher.accepted == total and all(c.count >= total for c in clients):
            break
        now_received = sum(c.count for c in clients)
        if now_received != received:
            received = now_received
            quiet_until = max(quiet_until, loop.time() + 2)
        await asyncio.sleep(0.05)
    drain_seconds = loop.time() - drain_start
    missing = sum(max(0, total - c.count) for c in clients)
    extra = sum(max(0, c.count - total) for c in clients)
    for client in clients:
        client.close()
    publisher.close()

    delivered = window["end_received"] - window["begin_received"]
    seconds = window["end_time"] - window["begin_time"]
    server_cpu = window["end_cpu"] - window["begin_cpu"]
    own_cpu = window["end_own_cpu"] - window["begin_own_cpu"]
    return {
        "technique": args.technique,
        "subscribers": args.subscribers,
        "rate": args.rate,
        "size": args.size,
        "seconds": round(seconds, 2),
        "published": publisher.sent,
        "accepted": publisher.accepted,
        "delivered_in_window": int(delivered),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_percent": round(100 * server_cpu / seconds, 1),
        "us_per_delivered": round(1e6 * server_cpu / delivered, 2) if delivered else None,
        "loadgen_cpu_percent": round(100 * own_cpu / seconds, 1),
        "latency_p50_ms": round(1000 * percentile(run.latencies, 0.50), 2),
        "latency_p99_ms": round(1000 * percentile(run.latencies, 0.99), 2),
        "latency_samples": len(run.latencies),
        "missing": missing,
        "duplicates": extra,
        "errors": len(run.errors),
        "first_errors": run.errors[:3],
        "deflate": args.deflate,
        "feed": args.feed,
        "ws_bytes_per_delivered": round(sum(getattr(c, "frame_bytes", 0) for c in clients)
                                        / max(1, sum(c.count for c in clients)), 1)
        if args.technique == "websocket" else None,
        "connect_seconds": round(connect_seconds, 2),
        "drain_seconds": round(drain_seconds, 2),
        "poll_interval": args.poll_interval if args.technique == "poll" else None,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def start_profiler(args: argparse.Namespace, server: ServerProcess) -> subprocess.Popen[bytes]:
    """py-spy on the load generator's CPU, so that it does not steal the server's."""
    py_spy = Path(sys.executable).with_name("py-spy")
    out = Path(args.profile)
    fmt, suffix = ("raw", ".txt") if out.suffix == ".txt" else ("flamegraph", ".svg")
    return subprocess.Popen(
        ["taskset", "-c", str(args.client_cpu), str(py_spy), "record", "--pid",
         str(server.process.pid), "--format", fmt, "--output", str(out.with_suffix(suffix)),
         "--rate", "200", *(["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = ServerProcess.start(cpu=args.server_cpu)
    pin_to_cpu(args.client_cpu)
    try:
        result = uvloop.run(bench(args, server))
    finally:
        server.stop()
    payload = "feed" if result["feed"] else f"{result['size']}B"
    extras = " deflate" if result["deflate"] else ""
    frames = (f", {result['ws_bytes_per_delivered']} B/delivered"
              if result["ws_bytes_per_delivered"] is not None else "")
    print(
        f"{result['technique']:9} subs={result['subscribers']:<6} rate={result['rate']:g}/s "
        f"size={payload}{extras}: {result['us_per_delivered']} us/delivered{frames} "
        f"(server {result['server_cpu_percent']}% of a core, "
        f"loadgen {result['loadgen_cpu_percent']}%), "
        f"latency p50 {result['latency_p50_ms']} ms p99 {result['latency_p99_ms']} ms, "
        f"delivered {result['delivered_in_window']}, missing {result['missing']}, "
        f"duplicates {result['duplicates']}, errors {result['errors']}, "
        f"caught up {result['drain_seconds']} s after the last publish"
    )
    if result["first_errors"]:
        print("  first errors:", *result["first_errors"], sep="\n    ")
    if args.json:
        print(json.dumps(result))
    return 1 if result["missing"] or result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
