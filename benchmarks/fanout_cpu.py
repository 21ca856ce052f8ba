"""In-process: server CPU per delivered message, with N messages per loop step.

A tidings ``Server`` (memory broker, uvloop) in this process, pinned to CPU
0; ``--subscribers`` WebSocket or SSE readers of one channel over loopback
sockets, in a process of their own on CPU 1 that only reads and counts
bytes (so their work is not counted). Each step of the loop publishes
``--burst`` messages with the broker's ``publish_nowait`` (several
publishes landing in one step, as at full load), ``--rate`` steps a second.
Counted: the server's CPU over ``--steps`` steps (``time.process_time()``:
utime + stime, so the write system calls count) divided by the messages
delivered, and the bytes the readers received per delivery (the same for
both builds: nothing missing). Run two builds interleaved with
``--baseline OTHER/src`` (``git -C /work/main archive main src | tar -x -C
/tmp/base``)::

    .venv/bin/python benchmarks/fanout_cpu.py websocket --burst 1 4 --baseline /tmp/base/src

CPU time depends less than wall-clock rates on what else the machine runs,
and the builds alternate run by run, so the comparison holds on a loaded
machine; the absolute figures are still those of a loaded machine then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time

REQUESTS = {
    "sse": b"GET /channels/bench HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    "websocket": (b"GET /channels/bench HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n"),
}


def drain(port: int, technique: str, subscribers: int) -> None:
    """The readers (``--drain``, a process of their own on CPU 1): connect, say ``ready``
    once each is subscribed, then read and count bytes until stdin closes; print the count."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    selector = selectors.DefaultSelector()
    socks = []
    for _ in range(subscribers):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(REQUESTS[technique])
        socks.append(sock)
    for sock in socks:
        sock.recv(1 << 16)  # the head: subscribed
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    received = 0
    counting = False
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                line = sys.stdin.readline()
                if line.strip() == "count":  # from here on
                    received, counting = 0, True
                    continue
                print(received if counting else 0, flush=True)
                return
            with contextlib.suppress(BlockingIOError):
                received += len(key.fileobj.recv(1 << 18))  # type: ignore[union-attr]


async def measure(args: argparse.Namespace) -> dict[str, object]:
    from tidings import Server, Settings

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    server = Server(Settings(host="127.0.0.1", port=0, output_buffer_limit=16 << 20))
    await server.start()
    loop = asyncio.get_running_loop()
    readers = await asyncio.create_subprocess_exec(
        sys.executable, __file__, args.technique, "--subscribers", str(args.subscribers),
        "--drain", str(server.port), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    assert readers.stdin is not None and readers.stdout is not None
    line = await asyncio.wait_for(readers.stdout.readline(), 120)
    assert line.strip() == b"ready", line
    assert server.broker.hub.subscribers("bench") == args.subscribers
    data = json.dumps({"p": "x" * max(0, args.size - 10)}).encode()
    broker = server.broker
    period = 1.0 / args.rate

    async def steps(count: int) -> float:
        began = time.process_time()
        due = loop.time()
        for _ in range(count):
            for _ in range(args.burst):
                broker.publish_nowait("bench", data)  # type: ignore[attr-defined]
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))
        return time.process_time() - began

    await steps(args.steps // 5)  # warm up
    await asyncio.sleep(0.5)
    readers.stdin.write(b"count\n")
    cpu = await steps(args.steps)
    delivered = args.steps * args.burst * args.subscribers
    await asyncio.sleep(1.0)  # the readers take the last ones
    readers.stdin.write(b"stop\n")
    received = int(await asyncio.wait_for(readers.stdout.readline(), 60))
    await readers.wait()
    await server.aclose()
    return {"technique": args.technique, "burst": args.burst,
            "us_per_delivered": round(cpu / delivered * 1e6, 3),
            "received_bytes_per_delivery": round(received / delivered, 1)}


def run_build(build: str, baseline: str | None, argv: list[str]) -> dict[str, object]:
    env = dict(os.environ)
    if build == "old" and baseline:
        env["PYTHONPATH"] = baseline
    out = subprocess.run([sys.executable, __file__, *argv, "--one"], env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
    result: dict[str, object] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("technique", choices=sorted(REQUESTS))
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--burst", type=int, nargs="+", default=[1, 4],
                        help="messages published per loop step")
    parser.add_argument("--rate", type=float, default=50.0, help="steps per second")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--size", type=int, default=100, help="bytes of JSON data per message")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="the other build's src directory (interleaved A/B)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drain", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drain:
        drain(args.drain, args.technique, args.subscribers)
        return 0
    if args.one:
        import uvloop

        args.burst = args.burst[0]
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(measure(args))
        print(json.dumps(result))
        return 0
    builds = ["old", "new"] if args.baseline else ["new"]
    print("| burst | build | round | µs/delivered (server thread CPU) | bytes received/delivery |")
    print("|---:|---|---:|---:|---:|")
    medians = []
    for burst in args.burst:
        runs: dict[str, list[float]] = {build: [] for build in builds}
        for round_ in range(1, args.rounds + 1):
            for build in builds:
                one = [args.technique, "--subscribers", str(args.subscribers), "--burst",
                       str(burst), "--rate", str(args.rate), "--steps", str(args.steps),
                       "--size", str(args.size)]
                result = run_build(build, args.baseline, one)
                runs[build].append(float(result["us_per_delivered"]))  # type: ignore[arg-type]
                print(f"| {burst} | {build} | {round_} | {result['us_per_delivered']} | "
                      f"{result['received_bytes_per_delivery']} |", flush=True)
        for build in builds:
            medians.append(f"| {burst} | {build} | median | {statistics.median(runs[build])} | |")
    print("\n".join(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
