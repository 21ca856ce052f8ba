"""Writes held until the end of the loop's step (server/flush.py), driven in-process.

A stream is given a transport double that records each write and, when
told the client stopped reading, keeps what it was given and pauses its
protocol past its high-water mark, as asyncio's transports do. Messages
are published with the memory broker's ``publish_nowait``, several in one
step of the loop; a marker scheduled with ``call_soon`` after them tells
when that step's flush has run. (Real sockets and clients we did not
write: tests/server/test_server_streams.py, tests/bytes/test_slow_readers.py,
and the last test here.)
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest
from websockets.asyncio.client import connect

from conftest import ServerFactory
from tidings import Server
from tidings.core.cursor import END, ORIGIN, Start
from tidings.core.message import Message
from tidings.core.presence import Identity
from tidings.server.flush import QUIET_BATCH
from tidings.server.sse import SseStream
from tidings.server.stream import Stream
from tidings.server.websocket import WebSocketSession
from tidings.session import slow
from tidings.testing import UNIT, http_client, open_sse, recv_json, server_frames, ws_url
from tidings.wire import commands, sse, websocket

CHANNEL = "c"
FILLER = "x" * 4000  # about 4 KB a message
LIMIT = 64 * 1024
TECHNIQUES = ["sse", "websocket"]


class CountingTransport(asyncio.Transport):
    """A socket double: records every write; with ``stalled`` the client reads nothing, so
    what it is given stays unread, and past the high-water mark the protocol is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.protocol: Any = None
        self.high = LIMIT
        self.low = LIMIT // 4
        self.unread = 0
        self.stalled = False
        self.paused = False
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))
        if self.stalled:
            self.unread += len(data)
            if self.unread > self.high and not self.paused:
                self.paused = True
                self.protocol.pause_writing()

    def read_all(self) -> None:
        """The client takes everything it was sent."""
        self.unread = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = LIMIT if high is None else high
        self.low = self.high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self.unread

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        """As asyncio does: the connection is lost once the client took what was left."""
        self.closed = True
        if not self.unread:
            asyncio.get_running_loop().call_soon(self._lost)

    def abort(self) -> None:
        self.closed = True
        asyncio.get_running_loop().call_soon(self._lost)

    def _lost(self) -> None:
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            protocol.connection_lost(None)

    def is_closing(self) -> bool:
        return self.closed


def open_stream(server: Server, technique: str, start: Start = END, *,
                stalled: bool = False) -> tuple[Stream, CountingTransport]:
    """A stream of ``CHANNEL`` from ``start`` (its head written)."""
    transport = CountingTransport()
    transport.stalled = stalled
    identity = Identity(f"{technique}-client")
    stream: Stream
    if technique == "sse":
        stream = SseStream(server, transport, False, identity)
        stream.start({CHANNEL: start}, [])
    else:
        stream = session = WebSocketSession(server, transport, identity)
        session.start(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", {CHANNEL: start}, b"")
    return stream, transport


async def next_step(server: Server, *, after_burst: bool) -> None:
    """End this step, and start the next as the flusher would after a step with a burst
    (every write held) or without one (a stream's first write at once)."""
    await end_of_step()
    server.flusher.busy = after_burst


async def end_of_step() -> None:
    """Return once what was held in this step has been flushed: the flush was scheduled
    (``call_soon``) before this marker, and callbacks run in order."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    async with asyncio.timeout(UNIT):
        await done


def publish_now(server: Server, count: int, data: Any = "m") -> list[Message]:
    """Publish ``count`` messages in this step of the loop (no await in between)."""
    body = json.dumps(data).encode()
    return [server.broker.publish_nowait(CHANNEL, body) for _ in range(count)]  # type: ignore[attr-defined]


def shared_bytes(technique: str, message: Message) -> bytes:
    """The pre-encoded bytes every reader of ``message`` gets (encoded once)."""
    key = sse.EVENTS.key if technique == "sse" else commands.FRAMES.key
    return message.encoded[key]


def items_of(technique: str, data: bytes) -> list[dict[str, Any]]:
    """The messages, gaps and closing in what a stream wrote after its head, in order."""
    found: list[dict[str, Any]] = []
    if technique == "sse":
        for block in data.split(b"\n\n"):
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            kind = fields.get(b"event", b"message").decode()
            if b"data" in fields:
                found.append({"type": kind, **json.loads(fields[b"data"])})
        return found
    frames, taken = server_frames(data)
    assert taken == len(data)
    for opcode, payload in frames:
        if opcode == websocket.OP_CLOSE:
            (code,) = struct.unpack("!H", payload[:2])
            found.append({"type": "close", "code": code, "reason": payload[2:].decode()})
        elif opcode == 0x1:
            found.append(json.loads(payload))
    return found


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, as a client must)."""
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    return (bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_messages_of_one_step_leave_in_one_write(make_server: ServerFactory,
                                                       technique: str) -> None:
    server = await make_server()
    stream, transport = open_stream(server, technique)
    await next_step(server, after_burst=False)
    transport.writes.clear()

    messages = publish_now(server, 5)
    assert transport.writes == []  # held until the end of the step
    assert server.flusher.busy  # a second message for the stream: a burst
    await end_of_step()
    assert transport.writes == [b"".join(shared_bytes(technique, m) for m in messages)]
    assert stream.reader.sent == 5


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_lone_message_leaves_at_the_end_of_its_step(make_server: ServerFactory,
                                                           technique: str) -> None:
    server = await make_server()
    _stream, transport = open_stream(server, technique)
    await next_step(server, after_burst=False)
    transport.writes.clear()
    for _ in range(3):  # one message a step: one write each, in the step it was published
        (message,) = publish_now(server, 1)
        assert transport.writes == []
        await end_of_step()
        assert transport.writes == [shared_bytes(technique, message)]
        transport.writes.clear()
    assert not server.flusher.busy


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_quiet_step_writes_as_the_fan_out_goes_and_a_burst_holds(
        make_server: ServerFactory, technique: str) -> None:
    """A lone message does not wait for the fan-out's pass over every reader: in a quiet
    step the streams are written QUIET_BATCH at a time. A second message in the step
    makes it a burst: it and the next step are held to their end, one write a stream."""
    server = await make_server()
    opened = [open_stream(server, technique) for _ in range(2 * QUIET_BATCH + 1)]
    transports = [transport for _stream, transport in opened]
    await next_step(server, after_burst=False)
    for transport in transports:
        transport.writes.clear()

    first, second = publish_now(server, 2)
    # The first message reached the first two batches as the fan-out went; the last
    # stream's waits for the end of the step, with the second message (a burst).
    for transport in transports[:-1]:
        assert transport.writes == [shared_bytes(technique, first)]
    assert transports[-1].writes == []
    await end_of_step()
    assert server.flusher.busy
    for transport in transports[:-1]:
        assert transport.writes == [shared_bytes(technique, first),
                                    shared_bytes(technique, second)]
    assert transports[-1].writes == [shared_bytes(technique, first)
                                     + shared_bytes(technique, second)]

    # The step after a burst holds everything to its end: one write a stream.
    for transport in transports:
        transport.writes.clear()
    then = publish_now(server, 3)
    assert all(transport.writes == [] for transport in transports)
    await end_of_step()
    joined = b"".join(shared_bytes(technique, m) for m in then)
    assert all(transport.writes == [joined] for transport in transports)

    # A step without a burst makes the next quiet again.
    publish_now(server, 1)
    await end_of_step()
    assert not server.flusher.busy


async def test_sse_heartbeats_and_notices_keep_their_place(make_server: ServerFactory) -> None:
    server = await make_server()
    stream, transport = open_stream(server, "sse")
    await next_step(server, after_burst=True)
    transport.writes.clear()

    (first,) = publish_now(server, 1)
    stream.heartbeat(server.loop.time())
    (second,) = publish_now(server, 1)
    stream.notice({"state": "test"})
    (third,) = publish_now(server, 1)
    await end_of_step()

    assert transport.writes == [shared_bytes("sse", first) + sse.HEARTBEAT
                                + shared_bytes("sse", second) + sse.status_event({"state": "test"})
                                + shared_bytes("sse", third)]


async def test_websocket_pings_pongs_and_replies_keep_their_place(
        make_server: ServerFactory) -> None:
    server = await make_server()
    stream, transport = open_stream(server, "websocket")
    await next_step(server, after_burst=True)
    transport.writes.clear()

    (first,) = publish_now(server, 1)
    stream.heartbeat(server.loop.time())  # a ping
    (second,) = publish_now(server, 1)
    stream.data_received(masked(websocket.OP_PING, b"hi"))  # answered with a pong
    (third,) = publish_now(server, 1)
    stream.data_received(masked(0x1, b'{"type": "ping", "req": 7}'))  # a command's reply
    (fourth,) = publish_now(server, 1)
    await end_of_step()

    assert transport.writes == [
        shared_bytes("websocket", first) + websocket.PING
        + shared_bytes("websocket", second) + websocket.frame(websocket.OP_PONG, b"hi")
        + shared_bytes("websocket", third) + commands.ack_frame(7)
        + shared_bytes("websocket", fourth)]


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_close_frame_follows_what_was_held(make_server: ServerFactory,
                                                    technique: str) -> None:
    server = await make_server()
    stream, transport = open_stream(server, technique)
    await next_step(server, after_burst=True)
    transport.writes.clear()

    messages = publish_now(server, 3)
    stream.token_expired()  # closes the stream in this step
    assert transport.closed
    (data,) = transport.writes  # the messages held, the error and the close: one write
    held = b"".join(shared_bytes(technique, m) for m in messages)
    assert data.startswith(held)
    assert items_of(technique, data[len(held):])[-1]["type"] == "close"
    publish_now(server, 1)  # unsubscribed: nothing more, and no write after the close
    await end_of_step()
    assert b"".join(transport.writes) == data


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_burst_past_the_limit_cuts_off_within_it(make_server: ServerFactory,
                                                         technique: str) -> None:
    """``disconnect``: what is held counts toward the limit, so a burst in one step is handed
    to the socket as soon as held + unread bytes pass it, and the stream is cut off there,
    not at the end of the step."""
    server = await make_server(output_buffer_limit=LIMIT)
    stream, transport = open_stream(server, technique)
    await next_step(server, after_burst=True)
    transport.stalled = True
    transport.writes.clear()

    messages = publish_now(server, 40, {"filler": FILLER})  # 160 KB in one step
    assert stream.closed
    assert server.health()["slow_consumers_cut_off"] == 1
    *burst, last = transport.writes
    assert len(burst) == 1  # the messages up to the limit, joined
    got = items_of(technique, burst[0])
    assert [item["id"] for item in got] == [m.id for m in messages[:len(got)]]
    assert LIMIT < len(burst[0]) <= LIMIT + len(shared_bytes(technique, messages[0]))
    (closing,) = items_of(technique, last)
    assert "slow_consumer" in json.dumps(closing)
    await end_of_step()
    assert transport.writes == [*burst, last]


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("policy", [slow.SKIP, slow.LATEST])
async def test_a_burst_past_the_limit_skips_ahead(make_server: ServerFactory, technique: str,
                                                  policy: str) -> None:
    """``skip`` and ``latest``: the stream stops writing where held + unread bytes pass the
    limit, and once the client has read, it gets one gap counting the rest of the burst
    (with ``latest``, the newest message after it), then live messages, one write a step."""
    server = await make_server(output_buffer_limit=LIMIT, slow_reader=policy)
    stream, transport = open_stream(server, technique)
    await next_step(server, after_burst=True)
    transport.stalled = True
    transport.writes.clear()

    messages = publish_now(server, 40, {"filler": FILLER})
    await end_of_step()
    assert not stream.closed
    (burst,) = transport.writes
    got = [item["id"] for item in items_of(technique, burst)]
    assert got == [m.id for m in messages[:len(got)]]
    assert LIMIT < len(burst) <= LIMIT + len(shared_bytes(technique, messages[0]))

    transport.stalled = False
    transport.writes.clear()
    transport.read_all()  # resume_writing: the gap (and the newest message) at once
    live = publish_now(server, 2)
    await end_of_step()
    items = items_of(technique, b"".join(transport.writes))
    gap = items[0]
    assert gap["type"] == "gap"
    assert gap["reason"] == slow.GAP_REASONS[policy]
    newest = [messages[-1].id] if policy == slow.LATEST else []
    skipped = len(messages) - len(got) - len(newest)
    assert gap["missed"] == skipped
    assert [item["id"] for item in items[1:]] == [*newest, *(m.id for m in live)]
    assert transport.writes[-1] == b"".join(shared_bytes(technique, m) for m in live)


async def test_a_burst_reaches_clients_we_did_not_write(server: Server) -> None:
    """Real sockets: a burst published in one step reaches the ``websockets`` package and
    httpx in order, each message once."""
    async with (http_client(server) as client, open_sse(client, f"/channels/{CHANNEL}") as
                events, connect(ws_url(server, f"/channels/{CHANNEL}")) as ws):
        await events.next_block()  # the opening
        assert (await recv_json(ws))["type"] == "subscribed"
        messages = publish_now(server, 50, {"n": 1})
        ids = [m.id for m in messages]
        got_ws = [(await recv_json(ws))["id"] for _ in ids]
        got_sse = [event.id for event in await events.messages(len(ids))]
        assert got_ws == ids
        assert got_sse == ids


@pytest.mark.parametrize("technique", TECHNIQUES)
async def test_a_last_pull_that_fills_the_socket_waits(make_server: ServerFactory,
                                                       technique: str) -> None:
    """A backlog's last pull passes the lowered high-water mark: the pause that follows means
    "wait for the socket", as for every pull, not "cut off" (the pull has finished the backlog
    by the time its bytes reach the transport)."""
    server = await make_server(output_buffer_limit=LIMIT)
    messages = publish_now(server, 16, {"filler": FILLER})  # two pulls of 8 (LIMIT // 2 each)
    stream, transport = open_stream(server, technique, ORIGIN, stalled=True)
    assert transport.paused  # the first pull filled the socket
    transport.read_all()  # the second, last pull fills it again
    assert transport.paused
    assert not stream.closed
    assert server.health()["slow_consumers_cut_off"] == 0
    transport.read_all()
    (live,) = publish_now(server, 1)
    await end_of_step()
    ids = [item["id"] for item in items_of(technique, b"".join(transport.writes[1:]))
           if "id" in item and item.get("type", "message") == "message"]
    assert ids == [m.id for m in [*messages, live]]
