"""What presence costs: CPU per join and leave, memory per member, and a storm of joins.

    .venv/bin/python benchmarks/presence.py [--members 100000] [--storm 10000]

1. **CPU per join / leave** of the presence core (``core/presence.py``), in
   process CPU time (``time.process_time``, less sensitive to a loaded
   machine than wall time): a channel nobody watches, and one whose joins and
   leaves are recorded and drained (coalesced) as the server's sweep does.
2. **Per read**, whether presence is on or not: drawing a client id, and
   writing it into a poll answer's head.
3. **Memory per member**: ``tracemalloc`` over ``--members`` members of one
   channel (the member objects, the table's entries, the client id strings).
4. **A storm on a server**: a ``tidings.Server`` (memory broker) in this
   process, one WebSocket watching joins and leaves, then ``--storm`` pollers
   that name themselves (``?client=``), 100 requests at a time over httpx.
   Printed: how long the storm took, how long until ``GET .../presence``
   counted them all, and until the watcher had been told of every join (one
   by one, or in a member list when a sweep has more than
   ``MAX_BATCH_EVENTS``); then the process's CPU time per join (HTTP
   included). Then the same joins made in one step of the loop.
5. **On Redis** (``--redis``; by default a ``redis-server`` of its own on a
   free port of 127.0.0.1, started and stopped here): two servers in this
   process sharing it; ``--storm`` joins made on node B in one step of the
   loop (as the drivers make them), then: how long until node A counts them
   all (the time to settle), the scripts (round trips) it took, CPU per join
   of this process (both nodes: the batches, the scripts' replies, the
   pub/sub payloads, the copies) and of Redis (``INFO cpu``), Redis's memory
   per member (``MEMORY USAGE`` of the channel's keys); then the same for
   leaves, and a node restart: B closed with all its members, until A counts 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import socket
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Iterator

import httpx
from websockets.asyncio.client import connect

from tidings import Server, Settings
from tidings.core.presence import Identity, Presence
from tidings.server.auth import ANONYMOUS
from tidings.server.poll import client_line
from tidings.server.presence import identify


def cpu_per_change(count: int, watched: bool) -> tuple[float, float]:
    """Microseconds of CPU per join and per leave of ``count`` distinct members."""
    presence = Presence()
    if watched:
        presence.watch("c")
    identities = [Identity(f"client-{n}", f"user-{n % 1000}") for n in range(count)]
    started = time.process_time()
    for identity in identities:
        presence.hold("c", identity, "websocket", 0)
    if watched:
        presence.drain()
    joined = time.process_time()
    for identity in identities:
        presence.release("c", identity.client, 1.0)
    if watched:
        presence.drain()
    left = time.process_time()
    return (joined - started) / count * 1e6, (left - joined) / count * 1e6


def cpu_per_poll_renewal(count: int) -> float:
    """Microseconds of CPU per poll that renews a member's lease (and the sweep's expiry)."""
    presence = Presence()
    identities = [Identity(f"client-{n}") for n in range(count)]
    for identity in identities:
        presence.touch("c", identity, "poll", 0.0, 30.0, 0)
    started = time.process_time()
    for step in range(1, 4):
        for identity in identities:
            presence.touch("c", identity, "poll", float(step), 30.0, 0)
        presence.expire(float(step))
    return (time.process_time() - started) / (3 * count) * 1e6


def per_read(count: int) -> tuple[float, float]:
    """Microseconds of CPU every read now pays with presence off: drawing its client id, and
    writing the ``Tidings-Client`` header into a poll answer."""
    started = time.process_time()
    for _ in range(count):
        identify(None, ANONYMOUS)
    drawn = time.process_time()
    for _ in range(count):
        client_line("abcdefghijklmnop")
    spliced = time.process_time()
    return (drawn - started) / count * 1e6, (spliced - drawn) / count * 1e6


def memory_per_member(count: int) -> float:
    """Bytes per member of one channel (ids like the server draws: 16 characters)."""
    identities = [Identity(f"{n:016d}") for n in range(count)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    presence = Presence()
    for identity in identities:
        presence.hold("c", identity, "websocket", 1_795_809_605_201)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert presence.count("c")[0] == count
    return (after - before) / count


async def storm(count: int) -> dict[str, float]:
    settings = Settings(host="127.0.0.1", port=0, presence=True, presence_timeout=3600.0,
                        max_publish_rate=0, max_connections=2000)
    async with Server(settings) as server:
        ws_url = server.url.replace("http", "ws") + "/channels/storm?client=watcher&presence=1"
        async with connect(ws_url, max_queue=None) as watcher, \
                httpx.AsyncClient(base_url=server.url,
                                  limits=httpx.Limits(max_connections=100)) as http:
            told: set[str] = set()

            async def listen() -> None:
                async for text in watcher:
                    frame = json.loads(text)
                    if frame.get("type") == "join":
                        told.add(frame["client"])
                    elif frame.get("type") == "presence" and frame["count"] >= count:
                        return  # a batch too large to tell one by one: the member list
                    if len(told) >= count:
                        return

            listening = asyncio.create_task(listen())
            cpu_before = time.process_time()
            started = time.monotonic()
            semaphore = asyncio.Semaphore(100)

            async def poller(number: int) -> None:
                async with semaphore:
                    response = await http.get("/channels/storm",
                                              params={"client": f"poller-{number}"})
                    response.raise_for_status()

            await asyncio.gather(*(poller(n) for n in range(count)))
            stormed = time.monotonic()
            async with asyncio.timeout(120):  # (presence_timeout is longer than any storm)
                while True:
                    body = (await http.get("/channels/storm/presence",
                                           params={"count": ""})).json()
                    if body["count"] >= count + 1:  # the pollers and the watcher
                        break
                    await asyncio.sleep(0.01)
            counted = time.monotonic() - stormed
            await asyncio.wait_for(listening, 60)
            settled = time.monotonic() - stormed
            cpu = time.process_time() - cpu_before
            result = {"storm_s": stormed - started, "counted_s": counted, "told_s": settled,
                      "cpu_us_per_join": cpu / count * 1e6}

            # The same joins as the drivers make them, all in one step of the loop (a
            # storm faster than any client here can make): how long until told.
            told.clear()
            ws_url = server.url.replace("http", "ws") + "/channels/burst?client=w&presence=1"
            async with connect(ws_url, max_queue=None) as burst_watcher:
                watcher = burst_watcher
                listening = asyncio.create_task(listen())
                await asyncio.sleep(0)
                cpu_before = time.process_time()
                started = time.monotonic()
                for number in range(count):
                    server.presence.touch(["burst"], Identity(f"burst-{number}"), "poll")
                result["burst_cpu_us_per_join"] = (time.process_time() - cpu_before) / count * 1e6
                await asyncio.wait_for(listening, 60)
                result["burst_told_s"] = time.monotonic() - started
    return result


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    """A redis-server of this run's own on 127.0.0.1 (no persistence); its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="tidings-bench-redis-")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


async def redis_run(url: str, count: int) -> dict[str, float]:
    """Joins and leaves of ``count`` readers on node B, seen from node A (section 5)."""
    import redis.asyncio as redis_client

    from tidings.brokers.redis.presence import SharedPresence, presence_keys

    async def redis_cpu() -> float:
        info = await direct.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    direct = redis_client.from_url(url)
    await direct.flushdb()
    settings = Settings(host="127.0.0.1", port=0, presence=True, presence_timeout=60.0,
                        broker=url)
    result: dict[str, float] = {}
    async with Server(settings) as a, Server(settings) as b:
        table = b.presence.table
        assert isinstance(table, SharedPresence)
        async with httpx.AsyncClient(base_url=a.url) as http:
            # A serves the channel (a copy loaded), as it would for any reader of it.
            assert (await http.get("/channels/storm/presence")).json()["count"] == 0

            async def settled(wanted: int) -> None:
                async with asyncio.timeout(120):
                    while True:
                        if a.presence.table.count("storm")[0] == wanted:
                            return
                        await asyncio.sleep(0.005)

            identities = [Identity(f"{n:016d}", f"user-{n % 1000}") for n in range(count)]
            for phase in ("join", "leave"):
                scripts, cpu, redis_before = table.scripts, time.process_time(), await redis_cpu()
                started = time.monotonic()
                for identity in identities:
                    if phase == "join":
                        b.presence.hold(["storm"], identity, "websocket")
                    else:
                        b.presence.release(["storm"], identity.client)
                await settled(count if phase == "join" else 0)
                result[f"{phase}_settle_s"] = time.monotonic() - started
                result[f"{phase}_cpu_us"] = (time.process_time() - cpu) / count * 1e6
                result[f"{phase}_redis_cpu_us"] = (await redis_cpu() - redis_before) / count * 1e6
                result[f"{phase}_scripts"] = table.scripts - scripts
                if phase == "join":
                    used = 0
                    for key in presence_keys("storm"):
                        used += await direct.memory_usage(key) or 0
                    result["redis_bytes_per_member"] = used / count
            for identity in identities:
                b.presence.hold(["storm"], identity, "websocket")
            await settled(count)
            started = time.monotonic()
            await b.aclose()  # a restart: every member of B leaves at once
            await settled(0)
            result["restart_settle_s"] = time.monotonic() - started
    await direct.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--storm", type=int, default=10_000)
    parser.add_argument("--redis", default="own", help="a redis:// URL on 127.0.0.1 (its "
                        "database is emptied), 'own' (default: start one) or 'none'")
    parser.add_argument("--only-redis", action="store_true",
                        help="run section 5 (Redis) only")
    args = parser.parse_args()
    if not args.only_redis:
        memory_sections(args)
    if args.redis == "none":
        return
    redis_section(args)


def memory_sections(args: argparse.Namespace) -> None:
    for watched in (False, True):
        join, leave = cpu_per_change(args.members, watched)
        label = "watched (recorded, coalesced)" if watched else "nobody watching"
        print(f"core, {label}: {join:.2f} µs CPU per join, {leave:.2f} µs per leave")
    print(f"core, a poll renewing its lease (with the sweep): "
          f"{cpu_per_poll_renewal(args.members):.2f} µs CPU")
    drawn, spliced = per_read(args.members)
    print(f"every read, presence on or off: {drawn:.2f} µs CPU to draw a client id, "
          f"{spliced:.2f} µs to write the Tidings-Client header of a poll answer")
    print(f"memory per member: {memory_per_member(args.members):.0f} bytes "
          f"({args.members:,} members of one channel)")
    result = asyncio.run(storm(args.storm))
    print(f"storm of {args.storm:,} pollers over HTTP: requests done in "
          f"{result['storm_s']:.2f} s; after the last one, all counted by GET .../presence "
          f"in {result['counted_s']:.2f} s and every join told to a watching WebSocket in "
          f"{result['told_s']:.2f} s; {result['cpu_us_per_join']:.0f} µs of the process's "
          "CPU per join (httpx client, server and presence together)")
    print(f"burst of {args.storm:,} joins in one step of the loop: "
          f"{result['burst_cpu_us_per_join']:.2f} µs CPU per join; every join told to a "
          f"watching WebSocket in {result['burst_told_s']:.2f} s (one sweep, about a second)")


def redis_section(args: argparse.Namespace) -> None:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(own_redis()) if args.redis == "own" else args.redis
        if not url.startswith("redis://127.0.0.1"):
            raise SystemExit("--redis must be on 127.0.0.1")
        found = asyncio.run(redis_run(url, args.storm))
    for phase in ("join", "leave"):
        print(f"Redis, {args.storm:,} {phase}s on node B in one step of the loop: node A's "
              f"count settles after {found[phase + '_settle_s']:.2f} s; "
              f"{found[phase + '_scripts']:.0f} scripts (round trips); "
              f"{found[phase + '_cpu_us']:.1f} µs CPU per {phase} in the nodes' process "
              f"(both nodes), {found[phase + '_redis_cpu_us']:.1f} µs in Redis")
    print(f"Redis memory per member: {found['redis_bytes_per_member']:.0f} bytes "
          "(MEMORY USAGE of the channel's members hash and nodes set)")
    print(f"Redis, node B closed with {args.storm:,} members (a restart): node A counts 0 "
          f"after {found['restart_settle_s']:.2f} s")


if __name__ == "__main__":
    main()
