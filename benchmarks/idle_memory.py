"""Server memory per idle connection, per technique.

For each technique, starts a fresh ``python -m tidings serve`` pinned to
CPU 0, opens and closes a few connections of that kind (so one-time costs
such as lazy imports are not counted), reads the server's RSS (VmRSS in
/proc), opens ``--connections`` idle connections, waits until the RSS is
stable, and prints the growth divided by the connections:

* ``sse``: open event streams;
* ``websocket``: open WebSockets, subscribed to a channel;
* ``longpoll``: requests parked with ``?wait=600`` (the server's ``max_wait``
  is raised to 600 s for the run);
* ``keepalive``: keep-alive connections idle after one poll.

With ``--idle-cpu SECONDS``, it also reads the server's CPU time over that
many seconds while the connections are open and nothing happens: what they
cost when idle, in ms per second (the housekeeping sweep: heartbeats are
every 600 s here, see ``SERVER_CONFIG``).

Example::

    .venv/bin/python benchmarks/idle_memory.py --connections 1000 10000
    .venv/bin/python benchmarks/idle_memory.py --connections 15000 --kinds sse --idle-cpu 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loadgen import (
    Client,
    KeepAliveClient,
    LongPollClient,
    Run,
    ServerProcess,
    SseClient,
    WebSocketClient,
    connect_all,
    health,
    pin_to_cpu,
)

KINDS = ("sse", "websocket", "longpoll", "keepalive")
WARMUP_CONNECTIONS = 200

#: Long enough that nothing times out while connections are counted.
SERVER_CONFIG = {"max_wait": 600, "keep_alive_timeout": 600, "heartbeat_interval": 600}


class ParkedLongPoll(LongPollClient):
    """Starts with a long poll straight away (from the end of the log) and stays parked."""

    def send_request(self) -> None:
        self.request(b"?wait=%s" % self.wait)
        self.ready.set_result(None)


def factory(kind: str, run: Run) -> Callable[[], Client]:
    if kind == "sse":
        return partial(SseClient, run)
    if kind == "websocket":
        return partial(WebSocketClient, run)
    if kind == "longpoll":
        return partial(ParkedLongPoll, run, wait=600)
    return partial(KeepAliveClient, run)


async def counted(run: Run, kind: str) -> int:
    """The server's own count of connections of ``kind``."""
    connections = (await health(run))["connections"]
    assert isinstance(connections, dict)
    key = {"sse": "streams", "websocket": "streams", "longpoll": "long_polls"}.get(kind, "http")
    value: int = connections[key]
    return value - 1 if key == "http" else value  # minus the /healthz connection itself


async def wait_count(run: Run, kind: str, expected: int) -> None:
    async with asyncio.timeout(60):
        while True:  # the server is another process: ask it again
            if await counted(run, kind) == expected:
                return
            await asyncio.sleep(0.1)


async def settled_rss(server: ServerProcess, seconds: float = 1.0) -> int:
    """RSS once two readings ``seconds`` apart differ by less than 0.5 % (at most 15 s)."""
    previous = server.rss_kb()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        await asyncio.sleep(seconds)
        current = server.rss_kb()
        if abs(current - previous) <= previous * 0.005:
            return current
        previous = current
    return previous


async def idle_cpu_ms_per_second(server: ServerProcess, seconds: float) -> float:
    """The server's CPU time over ``seconds`` of nothing happening, in ms per second."""
    cpu, began = server.cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return (server.cpu_seconds() - cpu) / (time.monotonic() - began) * 1000


async def measure(kind: str, count: int, server: ServerProcess,
                  idle_cpu: float = 0.0) -> dict[str, object]:
    run = Run(server.host, server.port)
    warm = await connect_all(run, [factory(kind, run) for _ in range(WARMUP_CONNECTIONS)])
    await wait_count(run, kind, WARMUP_CONNECTIONS)
    for client in warm:
        client.close()
    await wait_count(run, kind, 0)
    before = await settled_rss(server)
    started = time.monotonic()
    clients = await connect_all(run, [factory(kind, run) for _ in range(count)])
    await wait_count(run, kind, count)
    connect_seconds = time.monotonic() - started
    after = await settled_rss(server)
    idle_ms = await idle_cpu_ms_per_second(server, idle_cpu) if idle_cpu else None
    still_open = sum(not c.lost for c in clients)
    for client in clients:
        client.close()
    return {
        "kind": kind,
        "connections": count,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "kb_per_connection": round((after - before) / count, 2),
        "still_open": still_open,
        "errors": len(run.errors),
        "connect_seconds": round(connect_seconds, 2),
        "idle_cpu_ms_per_second": None if idle_ms is None else round(idle_ms, 2),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print JSON result lines")
    parser.add_argument("--idle-cpu", type=float, default=0.0, metavar="SECONDS",
                        help="also read the server's CPU time over SECONDS with the "
                             "connections open and idle")
    args = parser.parse_args(argv)
    failed = False
    for count in args.connections:
        for kind in args.kinds:
            server = ServerProcess.start(cpu=args.server_cpu, config=SERVER_CONFIG)
            pin_to_cpu(args.client_cpu)
            try:
                result = uvloop.run(measure(kind, count, server, args.idle_cpu))
            finally:
                server.stop()
            print(f"{kind:9} {count:>6} idle connections: {result['kb_per_connection']} KB each "
                  f"(RSS {result['rss_before_kb']} -> {result['rss_after_kb']} KB, "
                  f"open {result['still_open']}, errors {result['errors']})"
                  + ("" if result["idle_cpu_ms_per_second"] is None else
                     f"; idle CPU {result['idle_cpu_ms_per_second']} ms per second"),
                  flush=True)
            if args.json:
                print(json.dumps(result), flush=True)
            failed = failed or result["still_open"] != count or bool(result["errors"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
