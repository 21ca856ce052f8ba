"""In-process: CPU of the server's thread per delivered message, with N messages per loop step.

One process: a tidings ``Server`` (memory broker, uvloop) in the main
thread, ``--subscribers`` WebSocket or SSE readers of one channel over
loopback sockets, read by a second thread that only drains them (so its
work is not counted). Each step of the loop publishes ``--burst`` messages
with the broker's ``publish_nowait`` (several publishes landing in one step,
as at full load), ``--rate`` steps a second. Counted: ``time.thread_time()``
of the server's thread over ``--steps`` steps (utime + stime, so the write
system calls count) divided by the messages delivered, and the bytes the
readers received (must be all of them). Run two builds interleaved with
``--baseline OTHER/src`` (``git -C /work/main archive main src | tar -x -C
/tmp/base``)::

    .venv/bin/python benchmarks/fanout_cpu.py websocket --burst 1 4 --baseline /tmp/base/src

CPU time of one thread depends little on what else the machine runs, so
this stays comparable on a loaded machine (wall-clock rates do not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time

REQUESTS = {
    "sse": b"GET /channels/bench HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    "websocket": (b"GET /channels/bench HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n"),
}


class Drainer(threading.Thread):
    """Reads every client socket and counts the bytes, nothing else."""

    def __init__(self, socks: list[socket.socket]) -> None:
        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
        self.received = 0
        self.stop = False

    def run(self) -> None:
        if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
            os.sched_setaffinity(0, {1})  # this thread only: the server's keeps CPU 0
        while not self.stop:
            for key, _ in self.selector.select(0.1):
                try:
                    data = key.fileobj.recv(1 << 18)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                self.received += len(data)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    from tidings import Server, Settings

    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {0})  # the server's thread (the drainer moves to CPU 1)

    server = Server(Settings(host="127.0.0.1", port=0, output_buffer_limit=16 << 20))
    await server.start()
    loop = asyncio.get_running_loop()
    socks = []
    for _ in range(args.subscribers):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, REQUESTS[args.technique])
        socks.append(sock)
    for sock in socks:  # each answered: subscribed
        await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
    await asyncio.sleep(0.2)
    assert server.broker.hub.subscribers("bench") == args.subscribers
    for sock in socks:  # the head, the opening
        try:
            while sock.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
    drainer = Drainer(socks)
    drainer.start()
    data = json.dumps({"p": "x" * max(0, args.size - 10)}).encode()
    broker = server.broker
    period = 1.0 / args.rate

    async def steps(count: int) -> float:
        began = time.thread_time()
        due = loop.time()
        for _ in range(count):
            for _ in range(args.burst):
                broker.publish_nowait("bench", data)  # type: ignore[attr-defined]
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))
        return time.thread_time() - began

    await steps(args.steps // 5)  # warm up
    sent_before = drainer.received
    cpu = await steps(args.steps)
    delivered = args.steps * args.burst * args.subscribers
    await asyncio.sleep(0.5)
    received = drainer.received - sent_before
    drainer.stop = True
    drainer.join()
    await server.aclose()
    for sock in socks:
        sock.close()
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
    args = parser.parse_args(argv)
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
