"""tidings or nginx + nchan at full rate, read by a load generator in C.

nchan.py reads with Python clients on uvloop: at 200,000 deliveries/s they
take a whole core, so its fast rows measure the reader, not the server. Here
the readers are benchmarks/loadgen.c (one thread, epoll, pinned to CPU 1),
built with ``gcc -O2`` into a cache directory on first use; the server is
the same as nchan.py's (``ServerProcess`` or ``NginxProcess``, pinned to CPU 0)
and so is the publisher (Python, on CPU 1 beside the readers: a few
thousand publishes a second cost it little).

``--rate N`` publishes N messages a second; ``--rate max`` keeps
``--in-flight`` publishes outstanding (one per connection), so the server sets
the pace: the next message goes out as soon as one is answered. Prints
nchan.py's fields: deliveries/s, server CPU µs per delivered message, server
and load-generator CPU, latency p50/p99 (publish → arrival on ``--sample``
readers), messages missing (must be 0); and publishes/s. Example::

    .venv/bin/python benchmarks/cload.py websocket --server tidings --rate max

``benchmarks/full_rate.py`` runs a ladder of rates on both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loadgen import (
    PublishConnection,
    Publisher,
    Run,
    ServerProcess,
    own_cpu_seconds,
)
from nchan import (
    NchanPublishConnection,
    NchanPublisher,
    NginxProcess,
    nchan_missing,
    report,
    run_against,
    wait_subscribed,
)

SOURCE = Path(__file__).resolve().parent / "loadgen.c"
TECHNIQUES = ("websocket", "sse", "longpoll")
SERVERS = ("tidings", "nchan")
#: Longest wait, after the last publish, for readers still catching up.
DRAIN_LIMIT = 60.0
#: tidings' settings for these runs: its per-address publish rate limit (1,000/s by
#: default) off, since ``--rate max`` with few readers publishes faster; nchan has none.
TIDINGS_CONFIG: dict[str, object] = {"max_publish_rate": 1e9, "publish_burst": 1_000_000_000}


def build_loadgen() -> Path:
    """Compile loadgen.c (once per version of the source) and return the binary's path."""
    source = SOURCE.read_bytes()
    directory = Path(tempfile.gettempdir()) / "tidings-loadgen"
    binary = directory / f"loadgen-{hashlib.sha256(source).hexdigest()[:16]}"
    if not binary.exists():
        directory.mkdir(exist_ok=True)
        partial = binary.with_suffix(f".{time.monotonic_ns()}")
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(partial), str(SOURCE)],
                       check=True)
        partial.replace(binary)  # atomic: a concurrent run sees no half-written binary
    return binary


class LoadGen:
    """The C readers, driven one command line at a time (see loadgen.c)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, server: str, technique: str, port: int, readers: int, sampled: int,
                    cpu: int, pause_us: int = 0, within: float = 60.0) -> LoadGen:
        """Start the readers; return once every one is subscribed (or raise)."""
        process = await asyncio.create_subprocess_exec(
            str(build_loadgen()), server, technique, str(port), str(readers), str(sampled),
            str(cpu), str(pause_us), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        loadgen = cls(process)
        try:
            async with asyncio.timeout(within):
                answer = await loadgen.read()
        except BaseException:
            await loadgen.close()
            raise
        if answer.get("ready") != readers:
            await loadgen.close()
            raise RuntimeError(f"loadgen: {answer}")
        return loadgen

    async def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"loadgen exited with {await self.process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def command(self, text: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        return await self.read()

    async def close(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # end of input: it exits
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


# --- publishing ----------------------------------------------------------------------------


class Answered:
    """Sets :attr:`answered` whenever an answer arrives, for ``--rate max``."""

    answered: asyncio.Event

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self.answered.set()


class AnsweredPublishConnection(Answered, PublishConnection):
    pass


class AnsweredNchanPublishConnection(Answered, NchanPublishConnection):
    pass


async def connect_publisher(server: str, run: Run, size: int, connections: int,
                            answered: asyncio.Event) -> Publisher:
    """The Publisher of _loadgen.py or nchan.py, on connections that set ``answered``."""
    publisher = (NchanPublisher if server == "nchan" else Publisher)(run, size, connections)
    kind = AnsweredNchanPublishConnection if server == "nchan" else AnsweredPublishConnection
    loop = asyncio.get_running_loop()
    for _ in range(connections):
        _transport, conn = await loop.create_connection(lambda: kind(run), run.host, run.port)
        conn.answered = answered
        publisher.connections.append(conn)
    return publisher


def outstanding(publisher: Publisher) -> int:
    return sum(conn.outstanding for conn in publisher.connections)


async def publish_for(publisher: Publisher, seconds: float, rate: float | None,
                      answered: asyncio.Event) -> None:
    """Publish ``rate`` messages a second for ``seconds``; with no rate, as fast as answered."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    if rate is None:
        in_flight = len(publisher.connections)
        while loop.time() < start + seconds:
            while outstanding(publisher) < in_flight:
                publisher.publish()
            answered.clear()
            async with asyncio.timeout(30):  # a server that stops answering ends the run
                await answered.wait()
        return
    interval = 1.0 / rate
    for n in range(round(seconds * rate)):
        publisher.publish()
        delay = start + (n + 1) * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif n % 100 == 99:
            await asyncio.sleep(0)  # behind schedule: still read the publishes' answers


# --- one run --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, server: ServerProcess | NginxProcess
                ) -> dict[str, object]:
    run = Run(server.host, server.port)
    loadgen = await LoadGen.start(args.server, args.technique, server.port, args.readers,
                                  min(args.sample, args.readers), args.client_cpu,
                                  args.read_pause_us)
    try:
        await wait_subscribed(argparse.Namespace(server=args.server, load=args.technique),
                              run, args.readers)
        answered = asyncio.Event()
        publisher = await connect_publisher(args.server, run, args.size, args.in_flight,
                                            answered)
        try:
            return await measure(args, server, run, loadgen, publisher, answered)
        finally:
            publisher.close()
    finally:
        await loadgen.close()


async def measure(args: argparse.Namespace, server: ServerProcess | NginxProcess, run: Run,
                  loadgen: LoadGen, publisher: Publisher, answered: asyncio.Event
                  ) -> dict[str, object]:
    loop = asyncio.get_running_loop()

    async def snapshot(command: str) -> dict[str, float]:
        answer = await loadgen.command(command)
        return {"time": time.monotonic(), "server_cpu": server.cpu_seconds(),
                "server_user": server.user_seconds(),
                "loadgen_cpu": answer["cpu"], "received": answer["received"],
                "reads": answer["reads"],
                "published": publisher.sent, "publisher_cpu": own_cpu_seconds()}

    await publish_for(publisher, args.warmup, args.rate, answered)
    begin = await snapshot("start")
    await publish_for(publisher, args.seconds, args.rate, answered)
    end = await snapshot("stop")

    # Wait for the last answers and the readers still catching up: until every reader has
    # every message, or neither a message nor a publish's answer has arrived for 2 s (at
    # least 5 s, at most DRAIN_LIMIT).
    drain_start = loop.time()
    quiet_until = drain_start + 5
    progress: tuple[int, int] = (-1, -1)
    while True:
        total = publisher.sent
        status = await loadgen.command(f"status {total}")
        if publisher.accepted == total and status["missing"] == 0:
            break
        if loop.time() > min(quiet_until, drain_start + DRAIN_LIMIT):
            break
        if (status["received"], publisher.accepted) != progress:
            progress = (status["received"], publisher.accepted)
            quiet_until = max(quiet_until, loop.time() + 2)
        await asyncio.sleep(0.05)
    latency = await loadgen.command("latency")

    delta = {key: end[key] - begin[key] for key in begin}
    seconds, delivered, cpu = delta["time"], int(delta["received"]), delta["server_cpu"]
    errors = status["errors"] + len(run.errors)
    return {
        "server": args.server, "technique": args.technique, "readers": args.readers,
        "read_pause_us": args.read_pause_us,
        "rate": "max" if args.rate is None else args.rate, "seconds": round(seconds, 2),
        "published": publisher.sent, "accepted": publisher.accepted,
        "publishes_per_s": round(delta["published"] / seconds),
        "delivered_in_window": delivered, "deliveries_per_s": round(delivered / seconds),
        "us_per_delivered": round(1e6 * cpu / delivered, 2) if delivered else None,
        # (the server's own code; the rest, the kernel's, is much the same for any server)
        "user_us_per_delivered": (round(1e6 * delta["server_user"] / delivered, 2)
                                  if delivered else None),
        "server_cpu_percent": round(100 * cpu / seconds, 1),
        "loadgen_cpu_percent": round(100 * delta["loadgen_cpu"] / seconds, 1),
        "publisher_cpu_percent": round(100 * delta["publisher_cpu"] / seconds, 1),
        # Several messages per read once they queue up: what makes reading cheap at full rate.
        "messages_per_read": round(delivered / delta["reads"], 2) if delta["reads"] else None,
        "latency_p50_ms": latency["p50_ms"] if latency["samples"] else None,
        "latency_p99_ms": latency["p99_ms"] if latency["samples"] else None,
        "missing": status["missing"], "duplicated": status["extra"], "errors": errors,
        "first_errors": [e for e in [status["first_error"], *run.errors[:2]] if e]}


def rate_arg(text: str) -> float | None:
    """``max``, or messages per second."""
    return None if text == "max" else float(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("technique", choices=TECHNIQUES)
    parser.add_argument("--server", choices=SERVERS, default="tidings")
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--rate", type=rate_arg, default=50.0,
                        help="messages per second, or max: as fast as the server answers")
    parser.add_argument("--in-flight", type=int, default=4,
                        help="publishes outstanding at once (one per connection)")
    parser.add_argument("--size", type=int, default=100, help="bytes of JSON data per message")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--sample", type=int, default=50,
                        help="readers that parse every message for latency")
    parser.add_argument("--read-pause-us", type=int, default=0,
                        help="the readers sleep this long before each wait (loadgen.c: "
                             "fewer wake-ups paid by the server, added latency)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print a JSON result line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.server == "nchan" and (reason := nchan_missing()) is not None:
        print(f"cload.py: {reason}", file=sys.stderr)
        return 2
    build_loadgen()  # a compile error shows before any server starts
    result = run_against(args, bench, TIDINGS_CONFIG)
    report(result, args.json)
    return 1 if result["missing"] or result["errors"] or result["duplicated"] else 0


if __name__ == "__main__":
    sys.exit(main())
