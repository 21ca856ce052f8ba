"""How long ``server.subscribe_user`` takes to reach a live stream: memory, and two Redis nodes.

``--streams`` SSE streams of ``/subscribe`` (no channel), one per user, are
opened on node *two* (users named by a cookie through ``on_connect``). Then,
``--rounds`` times, node *one* subscribes every user to a new channel, one
call after the other, and the time from each call to its stream's
``event: subscribed`` is recorded, as is the call's own time. With the memory
broker both nodes are one server; with ``--redis`` they are two servers on a
``redis-server`` of our own (tests/rediskit.py; never the shared one on
6379), so the change crosses Redis pub/sub. Everything runs on 127.0.0.1, in
one process and event loop (client and servers share a core: read the
figures as a comparison)::

    .venv/bin/python benchmarks/user_channels.py
    .venv/bin/python benchmarks/user_channels.py --streams 200 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import tidings
from rediskit import RedisProcess


def make_server(broker: str) -> tidings.Server:
    server = tidings.Server(tidings.Settings(host="127.0.0.1", port=0, broker=broker,
                                             max_connections=10_000))

    @server.on_connect
    async def on_connect(request: tidings.ConnectRequest) -> tidings.Identity:
        return tidings.Identity(request.cookies.get("user"))

    return server


class Announced:
    """When each user's stream announced each channel."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, str], float] = {}
        self._changed = asyncio.Condition()

    async def record(self, user: str, channel: str) -> None:
        self.times[user, channel] = time.perf_counter()
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, users: list[str], channel: str) -> None:
        async with self._changed:
            await self._changed.wait_for(
                lambda: all((user, channel) in self.times for user in users))


async def read_stream(http: httpx.AsyncClient, user: str, opened: asyncio.Event,
                      announced: Announced) -> None:
    async with http.stream("GET", "/subscribe", headers={
            "Accept": "text/event-stream", "Cookie": f"user={user}"}) as response:
        opened.set()
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "subscribed":
                await announced.record(user, json.loads(line[6:])["channel"])
            elif not line:
                event = ""


async def run(broker: str, streams: int, rounds: int) -> dict[str, float]:
    one = make_server(broker)
    two = make_server(broker) if broker != "memory" else one
    async with Servers(one, two):
        limits = httpx.Limits(max_connections=streams + 10)
        async with httpx.AsyncClient(base_url=two.url, limits=limits, timeout=30) as http:
            announced = Announced()
            opened = [asyncio.Event() for _ in range(streams)]
            readers = [asyncio.create_task(read_stream(http, f"u{n}", opened[n], announced))
                       for n in range(streams)]
            for event in opened:
                await event.wait()
            await asyncio.sleep(0.5)  # the opening events are read; each stream follows
            latencies: list[float] = []
            calls: list[float] = []
            for round_ in range(rounds):
                channel = f"bench-{round_}-{time.time_ns()}"
                sent: dict[str, float] = {}
                for n in range(streams):
                    began = time.perf_counter()
                    await one.subscribe_user(f"u{n}", channel)
                    calls.append(time.perf_counter() - began)
                    sent[f"u{n}"] = began
                async with asyncio.timeout(30):
                    await announced.wait(list(sent), channel)
                latencies += [announced.times[user, channel] - began
                              for user, began in sent.items()]
                for n in range(streams):
                    await one.unsubscribe_user(f"u{n}", channel)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return {"call_p50_ms": 1000 * statistics.median(calls),
            "call_p99_ms": 1000 * statistics.quantiles(calls, n=100)[98],
            "announce_p50_ms": 1000 * statistics.median(latencies),
            "announce_p99_ms": 1000 * statistics.quantiles(latencies, n=100)[98]}


class Servers:
    """Start and stop one or two servers together."""

    def __init__(self, one: tidings.Server, two: tidings.Server) -> None:
        self.servers = [one] if one is two else [one, two]

    async def __aenter__(self) -> None:
        for server in self.servers:
            await server.start()

    async def __aexit__(self, *exc: object) -> None:
        for server in self.servers:
            await server.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.streams <= 2000 or not 1 <= args.rounds <= 20:
        parser.error("--streams 1..2000, --rounds 1..20")
    print(f"{args.streams} SSE streams, {args.rounds} rounds of subscribe_user per stream")
    print(f"{'broker':<14}{'call p50':>10}{'call p99':>10}{'announce p50':>14}"
          f"{'announce p99':>14}  (ms)")
    with RedisProcess() as redis:
        for name, broker in (("memory", "memory"), ("redis, 2 nodes", redis.url)):
            figures = asyncio.run(run(broker, args.streams, args.rounds))
            print(f"{name:<14}{figures['call_p50_ms']:>10.2f}{figures['call_p99_ms']:>10.2f}"
                  f"{figures['announce_p50_ms']:>14.2f}{figures['announce_p99_ms']:>14.2f}")


if __name__ == "__main__":
    main()
