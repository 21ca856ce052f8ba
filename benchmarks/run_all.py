"""Run every benchmark of docs/benchmarks.md and print its tables (Markdown).

Fan-out: each technique at 1,000 subscribers x 50 messages/s and at 10,000
subscribers x 5 messages/s (the same 50,000 deliveries per second; see the
doc for why). Idle memory: each kind of connection at 1,000 and 10,000.
Takes about ten minutes. Example::

    .venv/bin/python benchmarks/run_all.py | tee /tmp/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FANOUT_RUNS = [(1000, 50.0), (10000, 5.0)]
TECHNIQUES = ("websocket", "sse", "longpoll", "poll")


def json_lines(command: list[str]) -> list[dict[str, object]]:
    print("$", " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    sys.stderr.write(done.stdout)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    python = sys.executable
    print(f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}\n")
    print("| technique | subscribers | msg/s | µs/delivered | server CPU | loadgen CPU "
          "| p50 ms | p99 ms | missing |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for subscribers, rate in FANOUT_RUNS:
        for technique in TECHNIQUES:
            for r in json_lines([python, str(HERE / "fanout.py"), technique, "--subscribers",
                                 str(subscribers), "--rate", f"{rate:g}", "--seconds",
                                 f"{args.seconds:g}", "--json"]):
                print(f"| {r['technique']} | {r['subscribers']} | {r['rate']:g} "
                      f"| {r['us_per_delivered']} | {r['server_cpu_percent']} % "
                      f"| {r['loadgen_cpu_percent']} % | {r['latency_p50_ms']} "
                      f"| {r['latency_p99_ms']} | {r['missing']} |", flush=True)
    if args.skip_memory:
        return 0
    print("\n| connection | count | KB each | RSS before → after (KB) |")
    print("|---|---:|---:|---|")
    for r in json_lines([python, str(HERE / "idle_memory.py"), "--connections", "1000",
                         "10000", "--json"]):
        print(f"| {r['kind']} | {r['connections']} | {r['kb_per_connection']} "
              f"| {r['rss_before_kb']} → {r['rss_after_kb']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
