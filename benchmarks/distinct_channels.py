"""What channels nobody publishes to cost the memory broker: memory and upkeep.

Runs a :class:`MemoryBroker` in this process (no server, no sockets), in a
fresh child process per phase so that one phase's freed memory does not hide
the next one's growth:

* ``read``: reads ``--channels`` distinct channel names once each, as polls
  of ``GET /channels/NAME`` by someone trying names would; prints the RSS
  growth (``/proc/self/statm``) per channel, the time per read, the channels
  held afterwards and the time of one :meth:`MemoryBroker.maintain` call;
* ``publish``: publishes one message to each of ``--channels`` distinct
  channels; prints the same. Nothing is due to expire yet, so maintain()
  has nothing to do; what it costs is its cost per idle channel.

    .venv/bin/python benchmarks/distinct_channels.py
    .venv/bin/python benchmarks/distinct_channels.py --channels 1000000 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import sys
import time
from typing import Any

from tidings.brokers.memory import MemoryBroker
from tidings.core.cursor import END
from tidings.settings import Settings

PHASES = ("read", "publish")
DATA = b'{"n":1}'


def rss_bytes() -> int:
    """This process's resident set size now (not its peak, as getrusage would give)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(phase: str, count: int) -> dict[str, Any]:
    names = [f"bench-{i:09d}" for i in range(count)]  # made before the first RSS reading
    broker = MemoryBroker(Settings().retention)
    broker.read("warm-up", END, 100)
    broker.publish_nowait("warm-up", DATA)
    broker.maintain()
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    if phase == "read":
        for name in names:
            broker.read(name, END, 100)
    else:
        for name in names:
            broker.publish_nowait(name, DATA)
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    started = time.perf_counter()
    broker.maintain()
    maintain = time.perf_counter() - started
    return {
        "benchmark": "distinct_channels",
        "phase": phase,
        "channels": count,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "bytes_per_channel": round((after - before) / count),
        "us_per_operation": round(elapsed / count * 1e6, 2),
        "channels_held": broker.channels(),
        "maintain_ms": round(maintain * 1000, 3),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _child(phase: str, count: int, results: multiprocessing.Queue[dict[str, Any]]) -> None:
    results.put(measure(phase, count))


def run_isolated(phase: str, count: int) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter, so every phase starts from the same RSS."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[dict[str, Any]] = context.Queue()
    child = context.Process(target=_child, args=(phase, count, results))
    child.start()
    try:
        return results.get(timeout=600)
    finally:
        child.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=200_000)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--json", action="store_true", help="also print JSON result lines")
    args = parser.parse_args(argv)
    for phase in args.phases:
        result = run_isolated(phase, args.channels)
        print(f"{phase:7} {args.channels} distinct channels: "
              f"RSS +{result['rss_after_mb'] - result['rss_before_mb']:.1f} MB "
              f"({result['bytes_per_channel']} B each), "
              f"{result['us_per_operation']} µs each, "
              f"{result['channels_held']} logs held, "
              f"one maintain() {result['maintain_ms']} ms", flush=True)
        if args.json:
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
