"""Fan-out across nodes over Redis: pub/sub or blocking stream reads, measured side by side.

A tidings node that follows C channels must learn of every message published
to them on any node. This compares the three ways of doing it with Redis:

* **spublish**: the publish script does ``XADD`` then ``SPUBLISH`` of the new
  id and payload; the node ``SSUBSCRIBE``s to every channel on one connection.
* **publish**: the same with plain ``PUBLISH`` / ``SUBSCRIBE``.
* **xread**: the script only does ``XADD``; the node loops
  ``XREAD BLOCK 1000 COUNT 100 STREAMS k1..kC id1..idC`` on one connection,
  sending every key and its last id on each call.

For each mode and each ``--channels`` count it starts, on a Redis of its own
(tests/rediskit.py, a free port, never 6379), one reader process (the node)
and one publisher process that runs the publish script (``EVALSHA``) at
``--rate`` messages/s round robin over the channels for ``--seconds``. It
prints delivered messages/s, publish-to-delivery latency p50/p99 (the
publisher's ``time.monotonic_ns()`` is in the payload), the reader's CPU
(``time.process_time()`` in its own process) and Redis's CPU (``INFO cpu``,
``used_cpu_sys + used_cpu_user``) per 1,000 messages, and messages missing.

The reader and publisher talk to Redis through a bare redis-py asyncio
``Connection`` (hiredis parser, RESP2, on uvloop); ``--high-level`` makes the
reader use redis-py's ``PubSub.get_message`` and ``Redis.xread`` instead, to
show what that layer costs. Example (about 40 s; ``--quick`` takes a few)::

    .venv/bin/python benchmarks/redis_fanout_choice.py --channels 1 100 1000 --rate 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import redis.asyncio
import uvloop
from redis.asyncio.connection import Connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from rediskit import RedisProcess, redis_missing

MODES = ("spublish", "publish", "xread")

#: KEYS[1] is the channel's stream and also its pub/sub channel name (one hash
#: tag, so in a cluster both are on one slot). ARGV: payload, mode, history size.
PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[1])
if ARGV[2] == 'spublish' then
  redis.call('SPUBLISH', KEYS[1], id .. ' ' .. ARGV[1])
elseif ARGV[2] == 'publish' then
  redis.call('PUBLISH', KEYS[1], id .. ' ' .. ARGV[1])
end
return id
"""

#: Stream entries kept per channel (XADD MAXLEN ~).
HISTORY = 1000
#: XREAD BLOCK milliseconds and COUNT per stream, as a node would use them.
XREAD_BLOCK_MS = 1000
XREAD_COUNT = 100
#: Most publish scripts sent in one write when the publisher has fallen behind.
MAX_BATCH = 200
#: Seconds the reader may take, after the last publish, to receive everything.
DRAIN_LIMIT = 15.0
#: Seconds a child process may take to connect, subscribe and say it is ready.
READY_LIMIT = 30.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[1, 100, 1000],
                        help="channel counts the reader follows (one run each)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="messages per second, over all channels")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of publishing")
    parser.add_argument("--size", type=int, default=100, help="bytes of payload per message")
    parser.add_argument("--high-level", action="store_true",
                        help="reader uses redis-py's PubSub and Redis.xread")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds: 100 channels, 500 msg/s, 1 s per mode")
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.rate, args.seconds = [100], 500.0, 1.0
    return args


def channel_keys(count: int) -> list[str]:
    return [f"bench:{{c{i}}}" for i in range(count)]


def connection(port: int) -> Connection:
    return Connection(host="127.0.0.1", port=port, protocol=2, socket_timeout=None)


# --- the reader: one node following every channel --------------------------------------


@dataclass
class Tally:
    """What the reader has received; ``done`` is set once ``expected`` are in."""

    expected: float = math.inf
    received: int = 0
    reads: int = 0  #: XREAD calls that returned messages
    last_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, sent_ns: int, now_ns: int) -> None:
        self.received += 1
        self.last_ns = now_ns
        self.latencies_ns.append(now_ns - sent_ns)
        if self.received >= self.expected:
            self.done.set()


async def read_pubsub(port: int, mode: str, keys: list[str], tally: Tally,
                      ready: asyncio.Event) -> None:
    conn = connection(port)
    await conn.connect()
    await conn.send_command("SSUBSCRIBE" if mode == "spublish" else "SUBSCRIBE", *keys)
    for _ in keys:  # one confirmation per channel
        await conn.read_response(timeout=math.inf)
    ready.set()
    while True:
        message = await conn.read_response(timeout=math.inf)  # [kind, channel, "id payload"]
        tally.record(int(message[2].split(b" ", 2)[1]), time.monotonic_ns())


async def read_streams(port: int, keys: list[str], tally: Tally, ready: asyncio.Event) -> None:
    conn = connection(port)
    await conn.connect()
    # The streams are empty when the reader starts: from 0, nothing published is skipped.
    last_ids: list[bytes | str] = ["0"] * len(keys)
    index = {key.encode(): i for i, key in enumerate(keys)}
    head = ("XREAD", "BLOCK", XREAD_BLOCK_MS, "COUNT", XREAD_COUNT, "STREAMS", *keys)
    ready.set()
    while True:
        await conn.send_command(*head, *last_ids)
        reply = await conn.read_response(timeout=math.inf)
        if reply is None:  # BLOCK timed out
            continue
        now_ns = time.monotonic_ns()
        tally.reads += 1
        for key, entries in reply:
            for _entry_id, fields in entries:
                tally.record(int(fields[1].split(b" ", 1)[0]), now_ns)
            last_ids[index[key]] = entries[-1][0]


async def read_pubsub_high_level(port: int, mode: str, keys: list[str], tally: Tally,
                                 ready: asyncio.Event) -> None:
    client = redis.asyncio.Redis(port=port, protocol=2, socket_timeout=None)
    pubsub = client.pubsub()
    if mode == "spublish":
        await pubsub.ssubscribe(*keys)
    else:
        await pubsub.subscribe(*keys)
    confirmed = 0
    while confirmed < len(keys):
        message = await pubsub.get_message(timeout=READY_LIMIT)
        if message is not None and message["type"] in ("subscribe", "ssubscribe"):
            confirmed += 1
    ready.set()
    while True:
        message = await pubsub.get_message(timeout=None)
        if message is not None:
            tally.record(int(message["data"].split(b" ", 2)[1]), time.monotonic_ns())


async def read_streams_high_level(port: int, keys: list[str], tally: Tally,
                                  ready: asyncio.Event) -> None:
    client = redis.asyncio.Redis(port=port, protocol=2, socket_timeout=None)
    last_ids: dict[str, bytes | str] = dict.fromkeys(keys, "0")
    ready.set()
    while True:
        reply = await client.xread(last_ids, count=XREAD_COUNT, block=XREAD_BLOCK_MS)
        now_ns = time.monotonic_ns()
        tally.reads += bool(reply)
        for key, entries in reply:
            for _entry_id, fields in entries:
                tally.record(int(fields[b"d"].split(b" ", 1)[0]), now_ns)
            last_ids[key.decode()] = entries[-1][0]


async def reader_main(pipe: Pipe, port: int, mode: str, channels: int, high_level: bool) -> None:
    keys = channel_keys(channels)
    tally = Tally()
    ready = asyncio.Event()
    if mode == "xread":
        reading = (read_streams_high_level if high_level else read_streams)(
            port, keys, tally, ready)
    else:
        reading = (read_pubsub_high_level if high_level else read_pubsub)(
            port, mode, keys, tally, ready)
    task = asyncio.create_task(reading)
    try:
        async with asyncio.timeout(READY_LIMIT):
            await asyncio.wait([task, asyncio.create_task(ready.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what ended it
        cpu_start = time.process_time()
        pipe.send("ready")
        tally.expected = await asyncio.to_thread(pipe.recv)  # sent once the publisher is done
        if tally.received >= tally.expected:
            tally.done.set()
        try:
            async with asyncio.timeout(DRAIN_LIMIT):
                await tally.done.wait()
        except TimeoutError:
            pass
        cpu = time.process_time() - cpu_start
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lat = sorted(tally.latencies_ns)
    pipe.send({"received": tally.received, "reads": tally.reads,
               "last_ns": tally.last_ns, "cpu": cpu,
               "p50_ms": percentile(lat, 0.50) / 1e6, "p99_ms": percentile(lat, 0.99) / 1e6})


def percentile(ordered: list[int], fraction: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the publisher: the publish script at a steady rate -------------------------------


async def publisher_main(pipe: Pipe, port: int, mode: str, channels: int, rate: float,
                         seconds: float, size: int) -> None:
    keys = channel_keys(channels)
    conn = connection(port)
    await conn.connect()
    await conn.send_command("SCRIPT", "LOAD", PUBLISH_SCRIPT)
    sha = await conn.read_response()
    pipe.send("ready")
    await asyncio.to_thread(pipe.recv)  # go
    total = round(rate * seconds)
    sent = 0
    start = time.monotonic()
    start_ns = time.monotonic_ns()
    while sent < total:
        due = min(total, sent + MAX_BATCH, int((time.monotonic() - start) * rate) + 1)
        commands = []
        for seq in range(sent, due):
            payload = b"%d %d " % (time.monotonic_ns(), seq)
            payload += b"x" * (size - len(payload))
            commands.append(("EVALSHA", sha, 1, keys[seq % channels], payload, mode, HISTORY))
        await conn.send_packed_command(conn.pack_commands(commands))
        for _ in commands:
            await conn.read_response()
        sent = due
        await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    pipe.send({"sent": sent, "start_ns": start_ns, "seconds": time.monotonic() - start})


def run_in_loop(main: Any, *args: Any) -> None:
    uvloop.run(main(*args))


# --- the driver -------------------------------------------------------------------------


def redis_cpu(redis: RedisProcess) -> float:
    info = redis.command("INFO", "cpu")
    assert isinstance(info, bytes)
    fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


def receive(pipe: Pipe, within: float, what: str) -> Any:
    if not pipe.poll(within):
        raise TimeoutError(f"no answer from the {what} within {within:.0f} s")
    return pipe.recv()


def measure(redis: RedisProcess, args: argparse.Namespace, mode: str,
            channels: int) -> dict[str, Any]:
    redis.command("FLUSHALL")
    ctx = multiprocessing.get_context("fork")  # the driver has no event loop or threads
    reader_pipe, reader_end = ctx.Pipe()
    publisher_pipe, publisher_end = ctx.Pipe()
    reader = ctx.Process(target=run_in_loop, args=(
        reader_main, reader_end, redis.port, mode, channels, args.high_level))
    publisher = ctx.Process(target=run_in_loop, args=(
        publisher_main, publisher_end, redis.port, mode, channels, args.rate, args.seconds,
        args.size))
    try:
        reader.start()
        receive(reader_pipe, READY_LIMIT, "reader")
        publisher.start()
        receive(publisher_pipe, READY_LIMIT, "publisher")
        cpu_before = redis_cpu(redis)
        publisher_pipe.send("go")
        published = receive(publisher_pipe, args.seconds * 3 + READY_LIMIT, "publisher")
        reader_pipe.send(published["sent"])
        read = receive(reader_pipe, DRAIN_LIMIT + READY_LIMIT, "reader")
        cpu_after = redis_cpu(redis)
    finally:
        for process in (publisher, reader):
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
    received = read["received"]
    span = (read["last_ns"] - published["start_ns"]) / 1e9 if received else math.nan
    per_k = 1000 / received if received else math.nan
    return {
        "mode": mode, "channels": channels, "sent": published["sent"],
        "publish_per_s": published["sent"] / published["seconds"],
        "delivered_per_s": received / span if received else 0.0,
        "p50_ms": read["p50_ms"], "p99_ms": read["p99_ms"],
        "reader_s_per_1k": read["cpu"] * per_k,
        "redis_s_per_1k": (cpu_after - cpu_before) * per_k,
        "missing": published["sent"] - received,
        "per_read": f"{received / read['reads']:.1f}" if read["reads"] else "-",
    }


HEADER = ("| mode | channels | published/s | delivered/s | p50 ms | p99 ms "
          "| reader CPU s/1k msgs | Redis CPU s/1k msgs | msgs/XREAD | missing |")


def row(result: dict[str, Any]) -> str:
    return ("| {mode} | {channels} | {publish_per_s:.0f} | {delivered_per_s:.0f} "
            "| {p50_ms:.2f} | {p99_ms:.2f} | {reader_s_per_1k:.4f} | {redis_s_per_1k:.4f} "
            "| {per_read} | {missing} |").format(**result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = redis_missing()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    client = "redis-py PubSub / Redis.xread" if args.high_level else "redis-py Connection"
    print(f"rate {args.rate:.0f} msg/s over the channels, {args.seconds:g} s per run, "
          f"{args.size}-byte payloads, reader: {client}\n")
    print(HEADER)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with RedisProcess() as redis:
        for channels in args.channels:
            for mode in args.modes:
                print(row(measure(redis, args, mode, channels)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
