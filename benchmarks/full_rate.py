"""tidings and nginx + nchan at full rate, read by the C load generator; one table.

For each technique (WebSocket, SSE, long poll) and each rate of the ladder
(fixed rates, then ``max``: as fast as the server answers), runs
``cload.py`` against tidings, then against nchan (so that a change in the
machine's load shows in both), each in a process of its own, and prints one
Markdown table like run_nchan.py's. Servers on CPU 0, readers and publisher
on CPU 1. The figures go to docs/benchmarks.md with this command::

    .venv/bin/python benchmarks/full_rate.py | tee /tmp/full_rate.md
    .venv/bin/python benchmarks/full_rate.py --quick     # ~5 minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_nchan import cell, one  # the same runner and table cells, another script

TECHNIQUES = ("websocket", "sse", "longpoll")
RATES = ("50", "200", "400", "max")
QUICK_RATES = ("200", "400", "max")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--rates", nargs="+", help="messages per second, or max")
    parser.add_argument("--techniques", nargs="+", choices=TECHNIQUES, default=TECHNIQUES)
    parser.add_argument("--read-pause-us", default="0",
                        help="cload.py's: the readers sleep this long before each wait")
    parser.add_argument("--quick", action="store_true",
                        help="4 measured seconds per run, rates 200, 400 and max")
    args = parser.parse_args(argv)
    seconds = 4.0 if args.quick else args.seconds
    warmup = 2.0 if args.quick else 3.0
    rates = args.rates or (QUICK_RATES if args.quick else RATES)
    print(f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}, {seconds:g} s measured per run, "
          f"{args.readers} readers (benchmarks/loadgen.c, read pause {args.read_pause_us} µs), "
          "100-byte messages\n")
    print("| technique | msg/s | server | µs/delivered | server CPU | deliveries/s "
          "| p50 ms | p99 ms | missing | loadgen CPU | msgs/read |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for technique in args.techniques:
        for rate in rates:
            for server in ("tidings", "nchan"):
                r = one(technique, server, script="cload.py", extra=[
                    "--readers", str(args.readers), "--rate", rate, "--seconds", f"{seconds:g}",
                    "--warmup", f"{warmup:g}", "--read-pause-us", args.read_pause_us])
                # At max the server sets the rate: show the publishes it answered per second.
                shown = f"max ({cell(r, 'publishes_per_s')})" if rate == "max" else rate
                missing = cell(r, "missing") if not r.get("errors") else (
                    f"{cell(r, 'missing')} ({r['errors']} errors)")
                print(f"| {technique} | {shown} | {server} | {cell(r, 'us_per_delivered')} "
                      f"| {cell(r, 'server_cpu_percent')} % | {cell(r, 'deliveries_per_s')} "
                      f"| {cell(r, 'latency_p50_ms')} | {cell(r, 'latency_p99_ms')} "
                      f"| {missing} | {cell(r, 'loadgen_cpu_percent')} % "
                      f"| {cell(r, 'messages_per_read')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
