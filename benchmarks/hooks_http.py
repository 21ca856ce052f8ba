"""What ``[hooks]`` over HTTP costs a poll: tidings with and without connect and subscribe
hooks answered by a Starlette application under uvicorn, in interleaved rounds.

``--connections`` keep-alive clients each poll again as soon as an answer arrives
(``?since=NEXT``: an empty ``200``), for ``--seconds`` per round, alternating the
two servers for ``--rounds`` rounds so that a change in the machine's load hits
both. Prints per case: polls per second, latency p50/p99 (ms), tidings CPU µs per
poll and the application's CPU µs per poll (each poll is two hook calls)::

    .venv/bin/python benchmarks/hooks_http.py
    .venv/bin/python benchmarks/hooks_http.py --connections 20 --seconds 3 --rounds 4 --json

tidings runs pinned to CPU 0; the application and this load generator share CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import uvloop

from _loadgen import CLK_TCK, HttpReader, Run, ServerProcess, percentile, pin_to_cpu

HERE = Path(__file__).resolve().parent
COOKIE = b"Cookie: session=s-bench\r\n"


class Poller(HttpReader):
    """Polls again as soon as an answer arrives (a closed loop); records each latency."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.sent_at = 0.0
        self.stopped = False
        self.polls = 0

    def send_request(self) -> None:
        self.sent_at = time.perf_counter()
        self.request(b"", COOKIE)

    def on_response(self, status: int, body: bytes) -> None:
        if not self.take(status, body):
            return
        if not self.ready.done():
            self.ready.set_result(None)
        if self.run.measuring:
            self.polls += 1
            self.run.latencies.append(time.perf_counter() - self.sent_at)
        if not self.stopped:
            self.sent_at = time.perf_counter()
            self.request(b"?since=%s" % self.cursor.encode(), COOKIE)


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_application() -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn serving _hooks_app.py on a socket bound here (port 0), on CPU 1."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it: uvicorn, given a socket, would otherwise wait for
    # delayed ACKs between the head and the body of each answer (40 ms a call).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    process = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-m", "uvicorn", "_hooks_app:app",
         "--fd", str(sock.fileno()), "--log-level", "warning", "--no-access-log"],
        cwd=HERE, pass_fds=[sock.fileno()])
    sock.close()
    return process, f"http://127.0.0.1:{port}"


async def measure(server: ServerProcess, app_pid: int, connections: int,
                  seconds: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    run = Run(server.host, server.port)
    pollers = []
    for _ in range(connections):
        _transport, poller = await loop.create_connection(lambda: Poller(run), server.host,
                                                          server.port)
        pollers.append(poller)
    await asyncio.wait_for(asyncio.gather(*(p.ready for p in pollers)), 30)
    cpu, app_cpu, began = server.cpu_seconds(), process_cpu(app_pid), time.perf_counter()
    run.measuring = True
    await asyncio.sleep(seconds)
    run.measuring = False
    elapsed = time.perf_counter() - began
    cpu, app_cpu = server.cpu_seconds() - cpu, process_cpu(app_pid) - app_cpu
    for poller in pollers:
        poller.stopped = True
        poller.close()
    if run.errors:
        raise RuntimeError(run.errors[:3])
    polls = sum(p.polls for p in pollers)
    return {"polls": polls, "seconds": elapsed, "cpu": cpu, "app_cpu": app_cpu,
            "latencies": run.latencies}  # type: ignore[dict-item]


async def main_async(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    pin_to_cpu(1)
    with ExitStack() as stack:
        application, app_url = start_application()
        stack.callback(application.terminate)
        await asyncio.sleep(0)  # the application binds nothing: its socket already listens
        servers = {"no hooks": ServerProcess.start(0)}
        stack.callback(servers["no hooks"].stop)
        os.environ.update(TIDINGS_HOOKS_CONNECT_URL=f"{app_url}/connect",
                          TIDINGS_HOOKS_SUBSCRIBE_URL=f"{app_url}/subscribe",
                          TIDINGS_HOOKS_FORWARD_COOKIES="session")
        try:
            servers["[hooks] over HTTP"] = ServerProcess.start(0)
        finally:
            for name in ("CONNECT_URL", "SUBSCRIBE_URL", "FORWARD_COOKIES"):
                del os.environ[f"TIDINGS_HOOKS_{name}"]
        stack.callback(servers["[hooks] over HTTP"].stop)
        totals: dict[str, dict[str, list[float] | float]] = {
            name: {"polls": 0.0, "seconds": 0.0, "cpu": 0.0, "app_cpu": 0.0, "latencies": []}
            for name in servers}
        for _round in range(args.rounds):
            for name, server in servers.items():
                result = await measure(server, application.pid, args.connections, args.seconds)
                total = totals[name]
                for key in ("polls", "seconds", "cpu", "app_cpu"):
                    total[key] += result[key]  # type: ignore[operator]
                total["latencies"].extend(result["latencies"])  # type: ignore[union-attr, arg-type]
        report = {}
        for name, total in totals.items():
            polls = float(total["polls"])  # type: ignore[arg-type]
            latencies = sorted(total["latencies"])  # type: ignore[type-var, arg-type]
            report[name] = {
                "polls_per_second": round(polls / float(total["seconds"])),  # type: ignore[arg-type]
                "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
                "tidings_cpu_us_per_poll": round(float(total["cpu"]) / polls * 1e6, 1),  # type: ignore[arg-type]
                "app_cpu_us_per_poll": round(float(total["app_cpu"]) / polls * 1e6, 1),  # type: ignore[arg-type]
            }
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = uvloop.run(main_async(args))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'':20} {'polls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'tidings µs/poll':>16} "
          f"{'app µs/poll':>12}")
    for name, row in report.items():
        print(f"{name:20} {row['polls_per_second']:>8} {row['p50_ms']:>7} {row['p99_ms']:>7} "
              f"{row['tidings_cpu_us_per_poll']:>16} {row['app_cpu_us_per_poll']:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
