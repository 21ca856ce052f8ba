"""tidings and nginx + nchan side by side: the same load, the same core, one result each.

Each run starts one server pinned to CPU 0 (``taskset -c 0``): either
``python -m tidings serve`` or nginx (Debian's ``nginx-light`` with
``libnginx-mod-nchan``, one worker process) with a generated config; the load
generator pins itself to CPU 1. Server CPU is utime + stime from ``/proc``
(nginx: master and worker). Loads (``LOAD``):

* ``idle-poll``: ``--subscribers`` interval pollers, one request a second each
  (spread over the second), nothing published: server CPU per request that
  finds nothing new (tidings ``304`` to ``If-None-Match``; nchan ``304`` to
  ``If-Modified-Since`` + ``If-None-Match``), and the share of a core.
* ``websocket``, ``sse``, ``longpoll``: ``--subscribers`` readers of one
  channel, ``--rate`` messages/s of ``--size`` bytes: server CPU per delivered
  message, latency p50/p99 (publish → arrival on ``--sample`` readers), missed
  messages (must be 0). nchan's long poll answers one message per request
  (``If-Modified-Since`` / ``If-None-Match`` from the last answer); tidings'
  answers what the log holds past ``since``.

``--server floor`` (``idle-poll`` only) runs benchmarks/_floor.py instead: a
uvloop protocol that answers every request with canned bytes, the floor below
which no Python server on uvloop goes.

Example (one line of JSON with ``--json``)::

    .venv/bin/python benchmarks/nchan.py longpoll --server nchan --subscribers 1000 --rate 50

``benchmarks/run_nchan.py`` runs the loads against both and prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loadgen import (
    CHANNEL,
    CLK_TCK,
    Client,
    LongPollClient,
    PollClient,
    PublishConnection,
    Publisher,
    Run,
    ServerProcess,
    SseClient,
    WebSocketClient,
    connect_all,
    health,
    next_response,
    own_cpu_seconds,
    percentile,
    pin_to_cpu,
    raise_fd_limit,
)
from fanout import start_profiler

LOADS = ("idle-poll", "websocket", "sse", "longpoll")
#: ``floor``: benchmarks/_floor.py, canned answers on uvloop (``idle-poll`` only).
SERVERS = ("tidings", "nchan", "floor")
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
#: Messages nchan keeps per channel (tidings' default history_size).
NCHAN_BUFFER = 1000
#: Longest wait, after the last publish, for readers still catching up.
DRAIN_LIMIT = 60.0

NGINX_CONFIG = """\
load_module {module};
worker_processes 1;
daemon off;
master_process on;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
worker_rlimit_nofile {files};
events {{ worker_connections {connections}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /pub {{
      nchan_publisher;
      nchan_channel_id $arg_id;
      nchan_message_buffer_length {buffer};
      nchan_message_timeout 1h;
    }}
    location = /sub {{ nchan_subscriber websocket eventsource longpoll; nchan_channel_id $arg_id; }}
    location = /poll {{ nchan_subscriber intervalpoll; nchan_channel_id $arg_id; }}
    location = /status {{ nchan_stub_status; }}
  }}
}}
"""


def nchan_missing() -> str | None:
    """Why nginx + nchan cannot run here, or ``None``."""
    if shutil.which("nginx") is None or not NCHAN_MODULE.exists():
        return ("nginx with the nchan module is not installed: "
                "apt-get install nginx-light libnginx-mod-nchan")
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class NginxProcess:
    """nginx + nchan, one worker, master and worker pinned to ``cpu``."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    directory: Path

    @classmethod
    def start(cls, cpu: int = 0) -> NginxProcess:
        files = raise_fd_limit()
        directory = Path(tempfile.mkdtemp(prefix="tidings-nchan-"))
        port = free_port()
        config = directory / "nginx.conf"
        config.write_text(NGINX_CONFIG.format(
            module=NCHAN_MODULE, directory=directory, port=port, buffer=NCHAN_BUFFER,
            files=files, connections=max(files - 100, 1024)))
        log = (directory / "stderr").open("wb")
        process = subprocess.Popen(["taskset", "-c", str(cpu), "nginx", "-p", str(directory),
                                    "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("nginx did not start: " + (directory / "stderr").read_text()
                                   + (directory / "error.log").read_text())
            time.sleep(0.05)
        return cls(process, "127.0.0.1", port, directory)

    def pids(self) -> list[int]:
        master = self.process.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [master, *map(int, children)]

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def user_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            total += int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11])
        return total / CLK_TCK

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


# --- nchan clients ------------------------------------------------------------------------


class NchanRun(Run):
    def record(self, data_json: bytes) -> None:
        """nchan delivers the published body as it is: ``{"t": ..., "p": ...}``."""
        if self.measuring:
            self.latencies.append(time.time() - json.loads(data_json)["t"])


class NchanSseClient(SseClient):
    """nchan's event stream opens with a ``: hi`` comment, then ``id:`` + ``data:`` events."""

    def send_request(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET /sub?id=%s HTTP/1.1\r\nHost: %s:%d\r\n"
                             b"Accept: text/event-stream\r\n\r\n"
                             % (CHANNEL.encode(), self.run.host.encode(), self.run.port))


class NchanWebSocketClient(WebSocketClient):
    """Each text frame is one message body; ready once upgraded."""

    def send_request(self) -> None:
        assert self.transport is not None
        key = base64.b64encode(os.urandom(16))
        self.transport.write(
            b"GET /sub?id=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (CHANNEL.encode(), self.run.host.encode(), self.run.port, key))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.fail(f"WebSocket handshake answered {buffer[:40]!r}")
                return
            self.upgraded = True
            self.ready.set_result(None)
            buffer = buffer[end + 4:]
        pos, size = 0, len(buffer)
        while size - pos >= 2:
            opcode = buffer[pos] & 0x0F
            length = buffer[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2:pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            if opcode == 0x1:
                self.count += 1
                if self.sampled:
                    self.run.record(buffer[start:end])
            elif opcode == 0x9:
                assert self.transport is not None
                self.transport.write(bytes([0x8A, 0x80 | length]) + b"\0\0\0\0"
                                     + buffer[start:end])
            elif opcode == 0x8:
                self.run.errors.append(f"WebSocket closed: {buffer[start:end]!r}")
            pos = end
        self.buffer = buffer[pos:] if pos < size else b""


class NchanHttpReader(Client):
    """Keep-alive requests to ``path``, each from the last answer's Last-Modified and Etag."""

    path = b"/sub"

    def __init__(self, run: Run, sampled: bool = False) -> None:
        super().__init__(run, sampled)
        self.buffer = b""
        self.since = b""  # the If-Modified-Since + If-None-Match header lines
        self.in_flight = False
        self.responses = 0

    def request(self) -> None:
        assert self.transport is not None
        self.in_flight = True
        self.transport.write(b"GET %s?id=%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n"
                             % (self.path, CHANNEL.encode(), self.run.host.encode(),
                                self.run.port, self.since))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (response := next_response(self)) is not None:
            self.in_flight = False
            self.responses += 1
            status = int(response[9:12])
            end = response.find(b"\r\n\r\n")
            if status == 200:
                head = response[:end]
                modified = _header(head, b"Last-Modified")
                etag = _header(head, b"Etag")
                self.since = (b"If-Modified-Since: %s\r\nIf-None-Match: %s\r\n"
                              % (modified, etag))
                self.count += 1
                if self.sampled:
                    self.run.record(response[end + 4:])
            elif status != 304:
                self.fail(f"nchan answered {response[:200]!r}")
                return
            self.answered()

    def answered(self) -> None:
        raise NotImplementedError


def _header(head: bytes, name: bytes) -> bytes:
    at = head.find(b"\r\n" + name + b": ")
    if at < 0:
        return b""
    at += len(name) + 4
    return head[at:head.find(b"\r\n", at) if head.find(b"\r\n", at) >= 0 else len(head)]


class NchanLongPollClient(NchanHttpReader):
    """Asks again as soon as an answer arrives; subscribed once the first request is out."""

    def send_request(self) -> None:
        self.request()
        self.ready.set_result(None)

    def answered(self) -> None:
        if not getattr(self, "closing", False):
            self.request()


class NchanPollClient(NchanHttpReader):
    """Polls ``/poll`` every ``interval`` seconds; never two requests at once."""

    path = b"/poll"

    def __init__(self, run: Run, sampled: bool = False, interval: float = 1.0) -> None:
        super().__init__(run, sampled)
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.next_at = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def send_request(self) -> None:
        self.request()

    def answered(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def start_polling(self, offset: float) -> None:
        self.next_at = self.loop.time() + offset
        self.timer = self.loop.call_at(self.next_at, self._tick)

    def _tick(self) -> None:
        self.next_at += self.interval
        self.timer = self.loop.call_at(self.next_at, self._tick)
        if not self.in_flight and not self.lost:
            self.request()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        super().close()


class CountingPollClient(PollClient):
    """tidings' interval poller, counting its answers."""

    def __init__(self, run: Run, sampled: bool = False, interval: float = 1.0) -> None:
        super().__init__(run, sampled, interval)
        self.responses = 0

    def on_response(self, status: int, body: bytes) -> None:
        self.responses += 1
        super().on_response(status, body)


class NchanPublishConnection(PublishConnection):
    def post(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"POST /pub?id=%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (CHANNEL.encode(), self.run.host.encode(), self.run.port, len(data), data))
        self.outstanding += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (response := next_response(self)) is not None:
            self.outstanding -= 1
            if response.startswith((b"HTTP/1.1 201", b"HTTP/1.1 202")):
                self.accepted += 1
            else:
                self.run.errors.append(f"publish answered {response[:200]!r}")


class NchanPublisher(Publisher):
    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.connections_wanted):
            _transport, conn = await loop.create_connection(
                lambda: NchanPublishConnection(self.run), self.run.host, self.run.port)
            self.connections.append(conn)


# --- one run --------------------------------------------------------------------------------


async def nchan_subscribers(run: Run) -> int:
    reader, writer = await asyncio.open_connection(run.host, run.port)
    writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    for line in data.decode().splitlines():
        if line.startswith("subscribers:"):
            return int(line.split(":")[1])
    raise RuntimeError(f"no subscriber count in {data[-300:]!r}")


async def wait_subscribed(args: argparse.Namespace, run: Run, expected: int) -> None:
    async with asyncio.timeout(60):
        while True:
            if args.server == "nchan":
                count = await nchan_subscribers(run)
            else:
                connections = (await health(run))["connections"]
                assert isinstance(connections, dict)
                count = connections["long_polls" if args.load == "longpoll" else "streams"]
            if count >= expected:
                return
            await asyncio.sleep(0.1)


def factory(args: argparse.Namespace, run: Run, sampled: bool) -> Callable[[], Client]:
    nchan = args.server == "nchan"
    if args.load == "idle-poll":
        return partial(NchanPollClient if nchan else CountingPollClient, run, sampled,
                       interval=args.poll_interval)
    if args.load == "websocket":
        return partial(NchanWebSocketClient if nchan else WebSocketClient, run, sampled)
    if args.load == "sse":
        return partial(NchanSseClient if nchan else SseClient, run, sampled)
    if nchan:
        return partial(NchanLongPollClient, run, sampled)
    return partial(LongPollClient, run, sampled, wait=30.0)


async def bench(args: argparse.Namespace, server: ServerProcess | NginxProcess
                ) -> dict[str, object]:
    if args.profile and not isinstance(server, ServerProcess):
        raise SystemExit("--profile records tidings only")
    loop = asyncio.get_running_loop()
    run = NchanRun(server.host, server.port) if args.server == "nchan" else Run(
        server.host, server.port)
    sampled = min(args.sample, args.subscribers)
    clients = await connect_all(run, [factory(args, run, i < sampled)
                                      for i in range(args.subscribers)])
    result: dict[str, object] = {"server": args.server, "load": args.load,
                                 "subscribers": args.subscribers}
    if args.load == "idle-poll":
        for client in clients:
            assert isinstance(client, (NchanPollClient, CountingPollClient))
            client.start_polling(random.uniform(0, args.poll_interval))
        await asyncio.sleep(args.warmup)
        profiler = start_profiler(args, server) if args.profile else None
        begin = (server.cpu_seconds(), own_cpu_seconds(), time.monotonic(),
                 sum(getattr(c, "responses", 0) for c in clients), server.user_seconds())
        await asyncio.sleep(args.seconds)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            await asyncio.to_thread(profiler.wait, 60)
        end = (server.cpu_seconds(), own_cpu_seconds(), time.monotonic(),
               sum(getattr(c, "responses", 0) for c in clients), server.user_seconds())
        for client in clients:
            client.close()
        cpu, own, seconds, requests, user = (e - b for e, b in zip(end, begin, strict=True))
        result.update({
            "seconds": round(seconds, 2), "requests": int(requests),
            "requests_per_s": round(requests / seconds),
            "us_per_request": round(1e6 * cpu / requests, 2) if requests else None,
            # (the server's own code; the rest, the kernel's, is the same for any server)
            "user_us_per_request": round(1e6 * user / requests, 2) if requests else None,
            "server_cpu_percent": round(100 * cpu / seconds, 1),
            "loadgen_cpu_percent": round(100 * own / seconds, 1),
            "errors": len(run.errors), "first_errors": run.errors[:3]})
        return result

    await wait_subscribed(args, run, args.subscribers)
    publisher = NchanPublisher(run, args.size) if args.server == "nchan" else Publisher(
        run, args.size)
    await publisher.connect()
    interval = 1.0 / args.rate
    total = round((args.warmup + args.seconds) * args.rate)
    warm = round(args.warmup * args.rate)
    window: dict[str, float] = {}

    def snapshot(name: str) -> None:
        window[f"{name}_cpu"] = server.cpu_seconds()
        window[f"{name}_own_cpu"] = own_cpu_seconds()
        window[f"{name}_received"] = sum(c.count for c in clients)
        window[f"{name}_time"] = time.monotonic()

    start = loop.time()
    for n in range(total):
        if n == warm:
            snapshot("begin")
            run.measuring = True
        publisher.publish()
        delay = start + (n + 1) * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif n % 100 == 99:
            await asyncio.sleep(0)  # behind schedule: still let the readers read
    await asyncio.sleep(interval)
    snapshot("end")
    run.measuring = False
    drain_start = loop.time()
    quiet_until = drain_start + 5
    received = -1
    while loop.time() < min(quiet_until, drain_start + DRAIN_LIMIT):
        if publisher.accepted == total and all(c.count >= total for c in clients):
            break
        now_received = sum(c.count for c in clients)
        if now_received != received:
            received = now_received
            quiet_until = max(quiet_until, loop.time() + 2)
        await asyncio.sleep(0.05)
    missing = sum(max(0, total - c.count) for c in clients)
    for client in clients:
        client.close()
    publisher.close()
    delivered = window["end_received"] - window["begin_received"]
    seconds = window["end_time"] - window["begin_time"]
    cpu = window["end_cpu"] - window["begin_cpu"]
    own = window["end_own_cpu"] - window["begin_own_cpu"]
    result.update({
        "rate": args.rate, "seconds": round(seconds, 2), "published": publisher.sent,
        "accepted": publisher.accepted, "delivered_in_window": int(delivered),
        "deliveries_per_s": round(delivered / seconds),
        "us_per_delivered": round(1e6 * cpu / delivered, 2) if delivered else None,
        "server_cpu_percent": round(100 * cpu / seconds, 1),
        "loadgen_cpu_percent": round(100 * own / seconds, 1),
        "latency_p50_ms": round(1000 * percentile(run.latencies, 0.50), 2),
        "latency_p99_ms": round(1000 * percentile(run.latencies, 0.99), 2),
        "missing": missing, "errors": len(run.errors), "first_errors": run.errors[:3]})
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("load", choices=LOADS)
    parser.add_argument("--server", choices=SERVERS, default="nchan")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--size", type=int, default=100, help="bytes of JSON data per message")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--sample", type=int, default=50,
                        help="readers that parse every message for latency")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print a JSON result line")
    parser.add_argument("--profile", metavar="FILE",
                        help="idle-poll on tidings: record the server with py-spy "
                             "(FILE.svg: flame graph, FILE.txt: collapsed stacks)")
    return parser.parse_args(argv)


Bench = Callable[[argparse.Namespace, "ServerProcess | NginxProcess"],
                 Coroutine[Any, Any, dict[str, object]]]


def run_against(args: argparse.Namespace, bench: Bench,
                config: dict[str, object] | None = None) -> dict[str, object]:
    """Start ``args.server`` on ``args.server_cpu`` (tidings with ``config``), pin this
    process to ``args.client_cpu``, run ``bench`` against it, stop it; the result."""
    server: ServerProcess | NginxProcess
    if args.server == "nchan":
        server = NginxProcess.start(cpu=args.server_cpu)
    elif args.server == "floor":
        server = ServerProcess.start(cpu=args.server_cpu,
                                     program=(str(Path(__file__).with_name("_floor.py")),))
    else:
        server = ServerProcess.start(cpu=args.server_cpu, config=config)
    pin_to_cpu(args.client_cpu)
    try:
        return uvloop.run(bench(args, server))
    finally:
        server.stop()


def report(result: dict[str, object], as_json: bool) -> None:
    """Print a run's result: a line of its fields, its first errors, its JSON if asked."""
    shown = {k: v for k, v in result.items() if k != "first_errors"}
    print(" ".join(f"{k}={v}" for k, v in shown.items()))
    errors = result["first_errors"]
    if isinstance(errors, list) and errors:
        print("  first errors:", *errors, sep="\n    ")
    if as_json:
        print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.server == "floor" and args.load != "idle-poll":
        print("nchan.py: the floor server answers idle-poll only", file=sys.stderr)
        return 2
    if args.server == "nchan" and (reason := nchan_missing()) is not None:
        print(f"nchan.py: {reason}", file=sys.stderr)
        return 2
    result = run_against(args, bench)
    report(result, args.json)
    return 1 if result.get("missing") or result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
