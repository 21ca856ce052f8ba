"""Lean load generation for the benchmarks: raw asyncio protocols on uvloop.

One protocol object per connection, hand-written HTTP/1.1 requests and a
minimal WebSocket client (handshake, unmasked server frames, masked pongs),
so that one Python process on one core can drive 10,000 subscribers. Full
clients (httpx, websockets) cost too much per connection for that.

Every subscriber counts the messages it receives with a cheap substring
count. Only *sampled* subscribers parse each message to measure latency:
the publisher puts its ``time.time()`` in the data as ``"t"``.

Also here: starting the server as a subprocess pinned to one CPU, reading
its CPU time and RSS from ``/proc``, and raising the open-files limit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tidings.demo.feed import Market
from tidings.wire import jsonvalue

CHANNEL = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TECHNIQUES = ("websocket", "sse", "longpoll", "poll")


# --- process plumbing -----------------------------------------------------------------------


def raise_fd_limit(wanted: int = 200_000) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (wanted, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(limit, soft), max(limit, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_to_cpu(cpu: int) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {cpu})


@dataclass
class ServerProcess:
    """``python -m tidings serve`` on a free port, pinned to one CPU."""

    process: subprocess.Popen[bytes]
    url: str
    host: str
    port: int
    config_path: Path

    @classmethod
    def start(cls, cpu: int = 0, config: dict[str, object] | None = None,
              extra: Sequence[str] = (),
              program: Sequence[str] = ("-m", "tidings", "serve")) -> ServerProcess:
        """``extra``: more arguments of ``tidings serve`` (``--workers 2``); ``program``:
        what Python runs instead (``benchmarks/_floor.py``), given the same arguments."""
        raise_fd_limit()  # inherited by the child
        lines = ["[server]"] + [f"{k} = {json.dumps(v)}" for k, v in (config or {}).items()]
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write("\n".join(lines) + "\n")
            config_path = Path(f.name)
        command = ["taskset", "-c", str(cpu), sys.executable, *program,
                   "--host", "127.0.0.1", "--port", "0", "--config", str(config_path),
                   "--log-level", "warning", *extra]
        # Its stderr (log lines, "shutting down") goes to a file, shown only if it fails.
        log = config_path.with_suffix(".log")
        with log.open("wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if "serving on" not in line:
            process.kill()
            raise RuntimeError(f"server did not start: {line!r} {log.read_text()[-2000:]}")
        url = line.rsplit(" ", 1)[1].strip()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        return cls(process, url, host, int(port), config_path)

    def cpu_seconds(self) -> float:
        """utime + stime of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def user_seconds(self) -> float:
        """utime of the server process so far: its own code, without the kernel's share."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()  # read for its "serving on" line only
        self.config_path.unlink(missing_ok=True)
        log = self.config_path.with_suffix(".log")
        if self.process.returncode not in (0, -15):
            print(f"server exited with {self.process.returncode}:", log.read_text()[-2000:],
                  file=sys.stderr)
        log.unlink(missing_ok=True)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- shared state ---------------------------------------------------------------------------


@dataclass
class Run:
    """What every client of one run shares."""

    host: str
    port: int
    measuring: bool = False
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, data_json: bytes) -> None:
        """A sampled subscriber got the message object ``data_json``; record its latency."""
        if self.measuring:
            now = time.time()
            self.latencies.append(now - json.loads(data_json)["data"]["t"])


class Client(asyncio.Protocol):
    """A connection of the benchmark; :attr:`ready` is set once it is subscribed."""

    def __init__(self, run: Run, sampled: bool = False) -> None:
        self.run = run
        self.sampled = sampled
        self.transport: asyncio.Transport | None = None
        self.count = 0  # messages received
        self.ready = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send_request()

    def send_request(self) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"lost before ready: {exc}"))
        elif not getattr(self, "closing", False):
            self.run.errors.append(f"{type(self).__name__} lost: {exc}")

    def fail(self, text: str) -> None:
        self.run.errors.append(text)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(text))
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


def _host_header(run: Run) -> bytes:
    return b"Host: %s:%d\r\n" % (run.host.encode(), run.port)


# --- Server-Sent Events ---------------------------------------------------------------------

_SSE_DATA = b"\ndata: "


class SseClient(Client):
    def __init__(self, run: Run, sampled: bool = False) -> None:
        super().__init__(run, sampled)
        self.head = b""
        self.tail = b""  # last bytes of the previous chunk, for matches across chunks
        self.pending = b""  # sampled: an incomplete event

    def send_request(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET /channels/%s HTTP/1.1\r\n%sAccept: text/event-stream\r\n\r\n"
                             % (CHANNEL.encode(), _host_header(self.run)))

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200"):
                self.fail(f"SSE answered {self.head[:40]!r}")
                return
            opened = self.head.find(b"\n\n", end + 4)
            if opened < 0:
                return
            data = self.head[opened + 2:]
            self.head = b""
            self.ready.set_result(None)
            if not data:
                return
        if self.sampled:
            events = (self.pending + data).split(b"\n\n")
            self.pending = events.pop()
            for event in events:
                start = event.find(b"data: ")
                if start >= 0 and event.startswith(b"id: "):
                    self.count += 1
                    self.run.record(event[start + 6:])
            return
        chunk = self.tail + data
        self.count += chunk.count(_SSE_DATA)
        self.tail = chunk[-6:]


# --- WebSocket ------------------------------------------------------------------------------

_WS_MESSAGE = b'{"type":"message"'
_PONG_EMPTY = b"\x8a\x80\x00\x00\x00\x00"  # masked, empty pong with a zero mask key


class WebSocketClient(Client):
    """With ``deflate``, it offers permessage-deflate as browsers do, and counts the
    compressed message frames (RSV1) it gets; the sampled ones are inflated."""

    def __init__(self, run: Run, sampled: bool = False, deflate: bool = False) -> None:
        super().__init__(run, sampled)
        self.buffer = b""
        self.upgraded = False
        self.deflate = deflate
        #: Bytes of frames received after the handshake (heads included).
        self.frame_bytes = 0

    def send_request(self) -> None:
        assert self.transport is not None
        key = base64.b64encode(os.urandom(16))
        offer = (b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                 if self.deflate else b"")
        self.transport.write(
            b"GET /channels/%s HTTP/1.1\r\n%sUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (CHANNEL.encode(), _host_header(self.run), key, offer))

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
            self.frame_bytes += end - pos
            if opcode == 0x1 and buffer[pos] & 0x40:  # compressed: only message frames are
                self.count += 1
                if self.sampled:
                    inflated = zlib.decompressobj(-15).decompress(
                        buffer[start:end] + b"\x00\x00\xff\xff")
                    self.run.record(b"{" + inflated[len(_WS_MESSAGE) + 1:])
            elif opcode == 0x1:
                if buffer.startswith(_WS_MESSAGE, start):
                    self.count += 1
                    if self.sampled:
                        self.run.record(b"{" + buffer[start + len(_WS_MESSAGE) + 1:end])
                elif not self.ready.done() and buffer.startswith(b'{"type":"subscribed"', start):
                    self.ready.set_result(None)
                else:
                    self.run.errors.append(f"WebSocket frame {buffer[start:end][:80]!r}")
            elif opcode == 0x9:
                assert self.transport is not None
                if length == 0:
                    self.transport.write(_PONG_EMPTY)
                else:  # a zero mask key leaves the payload as it is
                    self.transport.write(bytes([0x8A, 0x80 | length]) + b"\0\0\0\0"
                                         + buffer[start:end])
            elif opcode == 0x8:
                self.run.errors.append(f"WebSocket closed: {buffer[start:end]!r}")
            pos = end
        self.buffer = buffer[pos:] if pos < size else b""


# --- plain HTTP: long poll and poll ---------------------------------------------------------

_MESSAGE_START = b'{"channel":'


class HttpReader(Client):
    """A keep-alive HTTP/1.1 client that reads ``Content-Length`` responses one by one."""

    def __init__(self, run: Run, sampled: bool = False) -> None:
        super().__init__(run, sampled)
        self.buffer = b""
        self.cursor = ""
        self.in_flight = False

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            status = int(buffer[9:12])
            length = 0
            at = buffer.find(b"Content-Length: ", 0, end)
            if at >= 0:
                length = int(buffer[at + 16:buffer.find(b"\r\n", at)])
            if len(buffer) < end + 4 + length:
                break
            body = buffer[end + 4:end + 4 + length]
            buffer = buffer[end + 4 + length:]
            self.in_flight = False
            self.on_response(status, body)
        self.buffer = buffer

    def take(self, status: int, body: bytes) -> bool:
        """Count the messages of a poll answer and move the cursor; ``False`` on an error."""
        if status == 304:
            return True
        if status != 200:
            self.fail(f"{type(self).__name__} got {status}: {body[:100]!r}")
            return False
        at = body.rfind(b'"next":"') + 8
        self.cursor = body[at:body.index(b'"', at)].decode()
        if self.sampled:
            for message in json.loads(body)["messages"]:
                self.count += 1
                if self.run.measuring:
                    self.run.latencies.append(time.time() - message["data"]["t"])
        else:
            self.count += body.count(_MESSAGE_START)
        if b'"gap":true' in body:
            self.run.errors.append(f"gap: {body[-300:]!r}")
        return True

    def request(self, query: bytes, extra: bytes = b"") -> None:
        assert self.transport is not None
        self.in_flight = True
        self.transport.write(b"GET /channels/%s%s HTTP/1.1\r\n%s%s\r\n"
                             % (CHANNEL.encode(), query, _host_header(self.run), extra))

    def send_request(self) -> None:
        self.request(b"")  # a plain poll from the end of the log: gives the starting cursor

    def on_response(self, status: int, body: bytes) -> None:
        raise NotImplementedError


class LongPollClient(HttpReader):
    """Asks again as soon as an answer arrives, from the ``next`` cursor."""

    def __init__(self, run: Run, sampled: bool = False, wait: float = 30.0) -> None:
        super().__init__(run, sampled)
        self.wait = b"%g" % wait
        self.stopped = False

    def on_response(self, status: int, body: bytes) -> None:
        if not self.take(status, body):
            return
        if not self.ready.done():
            self.ready.set_result(None)
        if not self.stopped:
            self.request(b"?since=%s&wait=%s" % (self.cursor.encode(), self.wait))


class PollClient(HttpReader):
    """Polls every ``interval`` seconds with ``If-None-Match``; never two requests at once."""

    def __init__(self, run: Run, sampled: bool = False, interval: float = 1.0) -> None:
        super().__init__(run, sampled)
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.next_at = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def on_response(self, status: int, body: bytes) -> None:
        if self.take(status, body) and not self.ready.done():
            self.ready.set_result(None)

    def start_polling(self, offset: float) -> None:
        self.next_at = self.loop.time() + offset
        self.timer = self.loop.call_at(self.next_at, self._tick)

    def _tick(self) -> None:
        self.next_at += self.interval
        self.timer = self.loop.call_at(self.next_at, self._tick)
        if not self.in_flight and not self.lost:
            cursor = self.cursor.encode()
            self.request(b"?since=%s" % cursor, b'If-None-Match: "%s"\r\n' % cursor)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        super().close()


class KeepAliveClient(HttpReader):
    """One poll, then an idle keep-alive connection (for the idle-memory benchmark)."""

    def on_response(self, status: int, body: bytes) -> None:
        if self.take(status, body) and not self.ready.done():
            self.ready.set_result(None)


# --- publisher ------------------------------------------------------------------------------


class Buffered(Protocol):
    buffer: bytes


def next_response(conn: Buffered) -> bytes | None:
    """Take one whole HTTP response (head and ``Content-Length`` body) off ``conn.buffer``."""
    buffer = conn.buffer
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end].lower()  # uvicorn and other ASGI servers send lower-case names
    at = head.find(b"content-length: ")
    length = int(head[at + 16:head.find(b"\r\n", at) if b"\r\n" in head[at:] else end]) \
        if at >= 0 else 0
    if len(buffer) < end + 4 + length:
        return None
    conn.buffer = buffer[end + 4 + length:]
    return buffer[:end + 4 + length]


class PublishConnection(asyncio.Protocol):
    """POSTs messages on one keep-alive connection; counts the ``201`` answers."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.outstanding = 0
        self.accepted = 0
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def post(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"POST /channels/%s HTTP/1.1\r\n%sContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (CHANNEL.encode(), _host_header(self.run), len(data), data))
        self.outstanding += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (response := next_response(self)) is not None:
            self.outstanding -= 1
            if response.startswith(b"HTTP/1.1 201"):
                self.accepted += 1
            else:
                self.run.errors.append(f"publish answered {response[:200]!r}")


class Publisher:
    """Publishes on a few keep-alive connections, each message on a free one.

    One connection would serialize the publishes behind each other (the
    server answers a connection's requests in order), which adds queueing
    delay to the latency measured, not fan-out cost.
    """

    def __init__(self, run: Run, size: int, connections: int = 4, *,
                 feed: bool = False) -> None:
        self.run = run
        self.size = size
        #: Publish the demo's price ticks (tidings.demo.feed) instead of filler.
        self.market = Market(seed=1) if feed else None
        self.connections_wanted = connections
        self.connections: list[PublishConnection] = []
        self.sent = 0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.connections_wanted):
            _transport, conn = await loop.create_connection(
                lambda: PublishConnection(self.run), self.run.host, self.run.port)
            self.connections.append(conn)

    @property
    def accepted(self) -> int:
        return sum(c.accepted for c in self.connections)

    def publish(self) -> None:
        if self.market is not None:
            data = b'{"t":%.6f,' % time.time() + jsonvalue.encode(self.market.tick())[1:]
        else:
            data = b'{"t":%.6f,"p":"' % time.time()
            data += b"x" * max(0, self.size - len(data) - 2) + b'"}'
        # Round robin (so that no connection idles into the server's timeout),
        # skipping connections that still wait for an answer when one is free.
        count = len(self.connections)
        for step in range(count):
            conn = self.connections[(self.sent + step) % count]
            if conn.outstanding == 0:
                break
        else:
            conn = self.connections[self.sent % count]
        conn.post(data)
        self.sent += 1

    def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()


# --- connecting many --------------------------------------------------------------------------


async def connect_all(run: Run, factories: list[Callable[[], Client]],
                      concurrency: int = 200) -> list[Client]:
    """Open one connection per factory, ``concurrency`` at a time; wait until each is ready."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(concurrency)
    clients: list[Client] = []

    async def one(factory: Callable[[], Client]) -> None:
        async with limit:
            _transport, client = await loop.create_connection(factory, run.host, run.port)
            clients.append(client)
            async with asyncio.timeout(30):
                await client.ready

    async with asyncio.TaskGroup() as group:
        for factory in factories:
            group.create_task(one(factory))
    return clients


async def health(run: Run) -> dict[str, object]:
    """``GET /healthz`` on a fresh connection."""
    reader, writer = await asyncio.open_connection(run.host, run.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n%sConnection: close\r\n\r\n" % _host_header(run))
    data = await reader.read()
    writer.close()
    result: dict[str, object] = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return result


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
