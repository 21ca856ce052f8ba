"""The C load generator of the full-rate benchmarks (benchmarks/loadgen.c, cload.py).

First against scripted servers that imitate tidings and nchan on each
technique and send their bytes a few at a time: every message must be
counted once, whether a read holds several or a part of one, the requests
must carry the cursors of the last answer, and what the load generator must
report as an error (a close frame) is reported. The load generator answers
a command only after the bytes written before it were read (loopback writes
are delivered at once, and it reads its sockets and stdin in one loop), so
the pieces do arrive one per read.

Then against a real ``tidings serve``: 20 readers for about a second on
each technique, publishing as fast as the server answers, nothing missing.
No nginx needed: nchan's side is covered by the scripted server only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from conftest import UNIT

sys.path.append(str(Path(__file__).resolve().parents[2] / "benchmarks"))

import cload
from _loadgen import ServerProcess

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "asyncio.Future[cload.LoadGen]"],
                  Awaitable[tuple[int, int]]]


def payload(n: int) -> bytes:
    """The publisher's data: its time first; from n = 3 on, longer than 125 bytes."""
    return b'{"t":%.6f,"p":"%s"}' % (time.time(), b"x" * (n * 40))


def tidings_message(n: int) -> bytes:
    return b'{"channel":"bench","id":"a-%d","data":%s,"time":1}' % (n, payload(n))


def frame(data: bytes, opcode: int = 0x1) -> bytes:
    """An unmasked server frame."""
    if len(data) < 126:
        return bytes([0x80 | opcode, len(data)]) + data
    return bytes([0x80 | opcode, 126]) + len(data).to_bytes(2, "big") + data


def response(body: bytes, head: bytes = b"Content-Type: application/json\r\n") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)


async def dribble(writer: asyncio.StreamWriter, data: bytes, loadgen: cload.LoadGen) -> None:
    """Write ``data`` 7 bytes at a time, each read by the load generator before the next."""
    for at in range(0, len(data), 7):
        writer.write(data[at:at + 7])
        await writer.drain()
        await loadgen.command("status 0")


async def tidings_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            started: asyncio.Future[cload.LoadGen]) -> tuple[int, int]:
    request = await reader.readuntil(b"\r\n\r\n")
    assert request.startswith(b"GET /channels/bench HTTP/1.1\r\n")
    assert b"Upgrade: websocket\r\n" in request
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
                 + frame(b'{"type":"subscribed","channel":"bench","next":"a-0"}'))
    loadgen = await started
    messages = [frame(b'{"type":"message",' + tidings_message(n)[1:]) for n in range(1, 6)]
    await dribble(writer, b"".join(messages[:3]) + frame(b"hi", 0x9)
                  + frame(b'{"type":"status","broker":"ok"}') + b"".join(messages[3:]), loadgen)
    assert await reader.readexactly(8) == b"\x8a\x82\0\0\0\0hi"  # the pong, zero mask
    return 5, 0


async def nchan_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          started: asyncio.Future[cload.LoadGen]) -> tuple[int, int]:
    request = await reader.readuntil(b"\r\n\r\n")
    assert request.startswith(b"GET /sub?id=bench HTTP/1.1\r\n")
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    loadgen = await started
    await dribble(writer, b"".join(frame(payload(n)) for n in range(1, 6)), loadgen)
    return 5, 0


async def tidings_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         started: asyncio.Future[cload.LoadGen]) -> tuple[int, int]:
    """A close frame after one message: one message and one error."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
                 + frame(b'{"type":"subscribed","channel":"bench","next":"a-0"}'))
    loadgen = await started
    await dribble(writer, frame(b'{"type":"message",' + tidings_message(1)[1:])
                  + frame(b"\x03\xf0slow reader", 0x8), loadgen)
    return 1, 1


async def tidings_sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      started: asyncio.Future[cload.LoadGen]) -> tuple[int, int]:
    request = await reader.readuntil(b"\r\n\r\n")
    assert request.startswith(b"GET /channels/bench HTTP/1.1\r\n")
    assert b"Accept: text/event-stream\r\n" in request
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                 b'retry: 2000\nevent: client\nid: a-0\ndata: {"client":"c","user":null}\n\n')
    loadgen = await started
    events = [b"id: a-%d\ndata: %s\n\n" % (n, tidings_message(n)) for n in range(1, 6)]
    await dribble(writer, b"".join(events[:2]) + b": keepalive\n\n"
                  + b'event: status\ndata: {"broker":"ok"}\n\n' + b"".join(events[2:]), loadgen)
    return 5, 0


async def nchan_sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    started: asyncio.Future[cload.LoadGen]) -> tuple[int, int]:
    request = await reader.readuntil(b"\r\n\r\n")
    assert request.startswith(b"GET /sub?id=bench HTTP/1.1\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\r\n"
                 b": hi\n\n")
    loadgen = await started
    await dribble(writer, b"".join(b"id: 1:%d\ndata: %s\n\n" % (n, payload(n))
                                   for n in range(1, 6)), loadgen)
    return 5, 0


async def tidings_longpoll(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           started: asyncio.Future[cload.LoadGen]) -> tuple[int, int]:
    request = await reader.readuntil(b"\r\n\r\n")
    assert request.startswith(b"GET /channels/bench HTTP/1.1\r\n")  # a plain poll first
    writer.write(response(b'{"messages":[],"next":"a-0"}'))
    loadgen = await started
    cursor, n = b"a-0", 0
    for count in (3, 2):  # several messages per answer
        request = await reader.readuntil(b"\r\n\r\n")
        assert request.startswith(b"GET /channels/bench?since=%s&wait=30 HTTP/1.1\r\n" % cursor)
        messages = [tidings_message(n + i) for i in range(1, count + 1)]
        n += count
        cursor = b"a-%d" % n
        await dribble(writer, response(b'{"messages":[%s],"next":"%s"}'
                                       % (b",".join(messages), cursor)), loadgen)
    request = await reader.readuntil(b"\r\n\r\n")  # and parks the next
    assert b"?since=a-5&" in request
    return 5, 0


async def nchan_longpoll(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         started: asyncio.Future[cload.LoadGen]) -> tuple[int, int]:
    since = b""
    for n in range(1, 5):
        request = await reader.readuntil(b"\r\n\r\n")
        assert request == (b"GET /sub?id=bench HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
                           % (writer.get_extra_info("sockname")[1], since))
        loadgen = await started
        if n == 2:  # nothing new: asked again with the same headers
            await dribble(writer, b"HTTP/1.1 304 Not Modified\r\nEtag: 0\r\n\r\n", loadgen)
            continue
        modified = b"Tue, 01 Dec 2026 23:36:%02d GMT" % n
        await dribble(writer, response(payload(n), b"Last-Modified: %s\r\nEtag: %d\r\n"
                                       % (modified, n)), loadgen)
        since = b"If-Modified-Since: %s\r\nIf-None-Match: %d\r\n" % (modified, n)
    await reader.readuntil(b"\r\n\r\n")
    return 3, 0


#: name: (server imitated, technique, script, the readers' pause before each wait in µs)
SCRIPTS: dict[str, tuple[str, str, Script, int]] = {
    "tidings-websocket": ("tidings", "websocket", tidings_websocket, 0),
    "nchan-websocket": ("nchan", "websocket", nchan_websocket, 0),
    "tidings-websocket-closed": ("tidings", "websocket", tidings_closed, 0),
    "tidings-sse": ("tidings", "sse", tidings_sse, 0),
    "tidings-sse-paused": ("tidings", "sse", tidings_sse, 1000),
    "nchan-sse": ("nchan", "sse", nchan_sse, 0),
    "tidings-longpoll": ("tidings", "longpoll", tidings_longpoll, 0),
    "nchan-longpoll": ("nchan", "longpoll", nchan_longpoll, 0),
}


@pytest.mark.parametrize("case", list(SCRIPTS))
async def test_loadgen_counts_messages_split_across_reads(case: str) -> None:
    kind, technique, script, pause_us = SCRIPTS[case]
    started: asyncio.Future[cload.LoadGen] = asyncio.get_running_loop().create_future()
    outcome: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            outcome.set_result(await script(reader, writer, started))
        except Exception as exc:  # shown by the test, not lost in the server's task
            outcome.set_exception(exc)
        await reader.read()  # until the load generator goes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, asyncio.timeout(10 * UNIT):
        loadgen = await cload.LoadGen.start(kind, technique, port, readers=1, sampled=1, cpu=1,
                                            pause_us=pause_us)
        try:
            await loadgen.command("start")
            started.set_result(loadgen)
            messages, errors = await outcome
            status = await loadgen.command(f"status {messages}")
            latency = await loadgen.command("latency")
        finally:
            await loadgen.close()
    assert (status["received"], status["missing"], status["extra"], status["errors"]) == (
        messages, 0, 0, errors)
    assert ("closed" in status["first_error"]) == bool(errors)
    assert latency["samples"] == messages
    assert 0 <= latency["p50_ms"] <= latency["p99_ms"] < 10_000 * UNIT


@pytest.fixture
def tidings_server() -> Iterator[ServerProcess]:
    # A history long enough that a reader late by a second (a busy CI machine) finds no gap.
    server = ServerProcess.start(config={**cload.TIDINGS_CONFIG, "history_size": 1_000_000})
    yield server
    server.stop()
    assert server.process.stdout is not None
    server.process.stdout.close()  # stop() leaves the pipe of its "serving on" line open


@pytest.mark.parametrize("technique", cload.TECHNIQUES)
async def test_cload_reads_a_tidings_server(tidings_server: ServerProcess, technique: str
                                            ) -> None:
    args = cload.parse_args([technique, "--readers", "20", "--rate", "max", "--seconds", "1",
                             "--warmup", "0.2", "--sample", "5"])
    async with asyncio.timeout(20 * UNIT):
        result = await cload.bench(args, tidings_server)
    shown = json.dumps(result)
    assert (result["missing"], result["duplicated"], result["errors"]) == (0, 0, 0), shown
    assert isinstance(result["published"], int) and result["published"] > 10, shown
    assert result["deliveries_per_s"] and result["latency_p99_ms"] is not None, shown
