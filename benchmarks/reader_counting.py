"""CPU per delivery through the hub and the reader, in-process: this tree vs another.

What metrics add to a delivery is two integer additions in ``Reader.deliver``
(messages and bytes written). An end-to-end run (``metrics_cost.py``) cannot
resolve a 1 % change on a shared machine, so this measures the delivery path
alone: ``Hub.publish`` to ``--readers`` readers of one channel (WebSocket
frames, single channel, the common case), each writing to a sink that drops
the bytes. No socket is written, so the counters' share here is an upper
bound of their share of a real delivery (which adds a ``write`` system call).

Each variant runs in its own process (``--other-src``: another source tree,
such as the code before metrics), interleaved for ``--rounds``; the time is
``time.process_time`` (CPU), so other load on the machine matters less.
Example::

    git archive main src | tar -x -C /tmp/before
    .venv/bin/python benchmarks/reader_counting.py --other-src /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src"

_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from tidings.brokers.memory import MemoryBroker
from tidings.session.reader import Reader
from tidings.wire import commands

class Sink:
    __slots__ = ()
    def write(self, data):
        pass

readers, messages = int(sys.argv[2]), int(sys.argv[3])

async def main():
    broker = MemoryBroker()
    await broker.start()
    hub = broker.hub
    for _ in range(readers):
        hub.subscribe("c", Reader(broker, commands.FRAMES, Sink()))  # live: nothing owed
    published = [await broker.publish("c", b'{"n":%d}' % n) for n in range(messages)]
    # Only the fan-out is timed: the messages are published (and logged) first.
    for message in published[:10]:
        hub.publish(message)  # warm-up: encodings cached, code paths hot
    began = time.process_time()
    for message in published:
        hub.publish(message)
    spent = time.process_time() - began
    await broker.aclose()
    print(json.dumps({"ns_per_delivery": 1e9 * spent / (readers * messages)}))

import asyncio
asyncio.run(main())
"""


def run(src: Path, readers: int, messages: int) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(readers), str(messages)],
                         check=True, capture_output=True, text=True).stdout
    result: float = json.loads(out)["ns_per_delivery"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other-src", type=Path, required=True,
                        help="the src directory of the tree to compare with")
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    results: dict[str, list[float]] = {"this": [], "other": []}
    for _ in range(args.rounds):
        for name, src in (("this", HERE), ("other", args.other_src)):
            results[name].append(run(src, args.readers, args.messages))
    for name, values in results.items():
        print(f"{name:5} median {statistics.median(values):.1f} ns/delivery "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
    change = statistics.median(results["this"]) / statistics.median(results["other"]) - 1
    print(f"this vs other: {100 * change:+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
