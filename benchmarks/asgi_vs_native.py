"""Server CPU per delivered message: ``server.asgi`` under uvicorn beside the native listener.

Runs the fan-out benchmark (benchmarks/fanout.py: one channel, ``--subscribers``
readers, ``--rate`` publishes per second) twice per technique: against
``tidings serve`` and against uvicorn serving ``server.asgi``
(benchmarks/_asgi_app.py), each server process pinned to CPU 0 and the load
generator to CPU 1. Prints server CPU microseconds per delivered message
(utime + stime from /proc over the measured window) and the ratio. Latency is
not sampled: uvicorn sends event streams chunked, which the load generator's
latency parser does not read (its counts are unaffected). Example::

    .venv/bin/python benchmarks/asgi_vs_native.py sse websocket --subscribers 200 --rate 20
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _loadgen import CLK_TCK, ServerProcess, pin_to_cpu, raise_fd_limit  # noqa: E402
from fanout import bench  # noqa: E402
from fanout import parse_args as fanout_args  # noqa: E402


@dataclass
class UvicornProcess:
    """uvicorn serving benchmarks/_asgi_app.py, pinned to one CPU (what ``bench`` needs)."""

    process: subprocess.Popen[bytes]
    host: str
    port: int

    @classmethod
    def start(cls, cpu: int) -> UvicornProcess:
        raise_fd_limit()
        with socket.socket() as probe:  # a free port (uvicorn prints no port it picked)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = ["taskset", "-c", str(cpu), sys.executable, "-m", "uvicorn", "_asgi_app:app",
                   "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning", "--lifespan", "on", "--ws", "websockets-sansio",
                   "--no-access-log", "--backlog", "4096", "--timeout-graceful-shutdown", "2"]
        process = subprocess.Popen(command)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    return cls(process, "127.0.0.1", port)
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.1)
        process.kill()
        raise RuntimeError("uvicorn did not start")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("techniques", nargs="+", choices=["sse", "websocket"])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    options = parser.parse_args(argv)
    pin_to_cpu(1)
    failed = False
    for technique in options.techniques:
        per_delivered: dict[str, float] = {}
        for name in ("native", "asgi"):
            args = fanout_args([technique, "--subscribers", str(options.subscribers),
                                "--rate", str(options.rate), "--seconds", str(options.seconds),
                                "--warmup", str(options.warmup), "--sample", "0"])
            server: ServerProcess | UvicornProcess = (
                ServerProcess.start(cpu=0) if name == "native" else UvicornProcess.start(cpu=0))
            try:
                result = uvloop.run(bench(args, server))  # type: ignore[arg-type]
            finally:
                server.stop()
            failed = failed or bool(result["missing"] or result["errors"])
            per_delivered[name] = float(result["us_per_delivered"] or "nan")
            print(f"{technique:9} {name:6} subs={options.subscribers} rate={options.rate:g}/s: "
                  f"{result['us_per_delivered']} us/delivered (server "
                  f"{result['server_cpu_percent']}% of a core), delivered "
                  f"{result['delivered_in_window']}, missing {result['missing']}, "
                  f"errors {result['errors']}", flush=True)
            if result["first_errors"]:
                print("  first errors:", *result["first_errors"], sep="\n    ")
        print(f"{technique:9} asgi/native: {per_delivered['asgi'] / per_delivered['native']:.2f}x",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
