"""Run the loads of benchmarks/nchan.py against tidings and nginx + nchan; print one table.

Each row runs tidings, then nchan, one after the other (so that a change in
the machine's load shows in both): interval polling that finds nothing at
``--pollers`` pollers, then a ladder of publish rates at ``--subscribers``
readers on WebSocket, SSE and long poll. Both servers on CPU 0, the load
generator on CPU 1. The figures go to docs/benchmarks.md with this command::

    .venv/bin/python benchmarks/run_nchan.py | tee /tmp/nchan.md
    .venv/bin/python benchmarks/run_nchan.py --quick     # a short version: ~3 minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TECHNIQUES = ("websocket", "sse", "longpoll")
RATES = (50.0, 100.0, 200.0, 400.0)
QUICK_RATES = (50.0, 200.0)


def one(load: str, server: str, extra: list[str], script: str = "nchan.py"
        ) -> dict[str, object]:
    """Run ``script LOAD --server SERVER --json EXTRA`` in a process of its own; its result."""
    command = [sys.executable, str(HERE / script), load, "--server", server, "--json", *extra]
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    sys.stderr.write(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": f"exit status {done.returncode}"}
    result: dict[str, object] = json.loads(lines[-1])
    return result


def cell(result: dict[str, object], key: str) -> str:
    value = result.get(key)
    return "—" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--pollers", type=int, default=10_000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rates", type=float, nargs="+")
    parser.add_argument("--quick", action="store_true",
                        help="5 measured seconds per run, rates 50 and 200")
    args = parser.parse_args(argv)
    seconds = 5.0 if args.quick else args.seconds
    rates = args.rates or (QUICK_RATES if args.quick else RATES)
    print(f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}, {seconds:g} s measured per run\n")

    print("Interval polls that find nothing (one request per poller per second):\n")
    print("| pollers | server | µs/request | server CPU | requests/s | loadgen CPU | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for server in ("tidings", "nchan"):
        r = one("idle-poll", server, ["--subscribers", str(args.pollers),
                                      "--seconds", f"{seconds:g}"])
        print(f"| {args.pollers} | {server} | {cell(r, 'us_per_request')} "
              f"| {cell(r, 'server_cpu_percent')} % | {cell(r, 'requests_per_s')} "
              f"| {cell(r, 'loadgen_cpu_percent')} % | {cell(r, 'errors')} |", flush=True)

    print(f"\nReaders of one channel ({args.subscribers}), 100-byte messages:\n")
    print("| technique | msg/s | server | µs/delivered | server CPU | deliveries/s "
          "| p50 ms | p99 ms | missing | loadgen CPU |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for technique in TECHNIQUES:
        for rate in rates:
            for server in ("tidings", "nchan"):
                r = one(technique, server, ["--subscribers", str(args.subscribers),
                                            "--rate", f"{rate:g}", "--seconds", f"{seconds:g}"])
                print(f"| {technique} | {rate:g} | {server} | {cell(r, 'us_per_delivered')} "
                      f"| {cell(r, 'server_cpu_percent')} % | {cell(r, 'deliveries_per_s')} "
                      f"| {cell(r, 'latency_p50_ms')} | {cell(r, 'latency_p99_ms')} "
                      f"| {cell(r, 'missing')} | {cell(r, 'loadgen_cpu_percent')} % |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
