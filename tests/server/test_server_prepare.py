"""Reads of channels the broker must fetch first: ``ready()`` is false, ``await prepare()``.

A broker on a shared store (Redis) keeps local replicas of the channels in
use; the server asks it ``ready(starts)`` before a synchronous read and, when
it is not, waits for ``prepare(starts)`` on four paths: poll and long poll
(server/routes.py), SSE (server/sse.py), the WebSocket upgrade and the
WebSocket ``subscribe`` command (server/websocket.py). The memory broker is
always ready, so these tests use :class:`FetchingBroker`, a memory broker
whose channels must be fetched and whose fetches the test releases, one by
one, or fails with ``BrokerError``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from unittest.mock import ANY

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from conftest import until
from tidings import Server, Settings
from tidings.brokers.memory import MemoryBroker
from tidings.core.cursor import END, ORIGIN, Start, parse_start
from tidings.errors import BrokerError
from tidings.server.websocket import WebSocketSession
from tidings.testing import (
    UNIT,
    WAIT,
    RawWebSocket,
    SseStream,
    http_client,
    poll,
    publish,
    publish_many,
    recv_json,
    ws_url,
)
from tidings.wire.websocket import OP_TEXT

T = TypeVar("T")

STORE_AWAY = "the store is away (a test)"


class Fetch:
    """One call of :meth:`FetchingBroker.prepare`, waiting to be released."""

    def __init__(self, starts: Mapping[str, Start]) -> None:
        self.starts = dict(starts)
        self.released = asyncio.Event()
        self.error: BrokerError | None = None


class FetchingBroker(MemoryBroker):
    """A memory broker that behaves like a replica of a shared store.

    A channel is not ready until a ``prepare`` that names it has completed;
    each ``prepare`` waits until the test calls :meth:`release` (or fails
    with the ``BrokerError`` given to it).
    """

    def __init__(self) -> None:
        super().__init__(Settings().retention)
        self.fetched: set[str] = set()
        #: Prepares in progress, oldest first.
        self.waiting: list[Fetch] = []
        #: The starts of every prepare so far.
        self.prepared: list[dict[str, Start]] = []
        self._changed = asyncio.Event()

    def ready(self, starts: Mapping[str, Start]) -> bool:
        return all(channel in self.fetched for channel in starts)

    async def prepare(self, starts: Mapping[str, Start]) -> None:
        fetch = Fetch(starts)
        self.prepared.append(fetch.starts)
        self.waiting.append(fetch)
        self._changed.set()
        try:
            await fetch.released.wait()
        finally:
            with contextlib.suppress(ValueError):
                self.waiting.remove(fetch)
        if fetch.error is not None:
            raise fetch.error
        self.fetched.update(starts)

    async def preparing(self, count: int = 1, within: float = 5 * UNIT) -> list[Fetch]:
        """Wait until ``count`` prepares are waiting; return them, oldest first."""
        async with asyncio.timeout(within):
            while len(self.waiting) < count:
                self._changed.clear()
                await self._changed.wait()
        return list(self.waiting)

    def release(self, error: BrokerError | None = None) -> Fetch:
        """Let the oldest waiting prepare finish, or fail with ``error``."""
        fetch = self.waiting.pop(0)
        fetch.error = error
        fetch.released.set()
        return fetch

    def release_all(self) -> None:
        while self.waiting:
            self.release()


@pytest.fixture
def broker() -> FetchingBroker:
    return FetchingBroker()


@pytest.fixture
async def server(broker: FetchingBroker) -> AsyncIterator[Server]:
    """A server on :class:`FetchingBroker` (this module's, not conftest's default one)."""
    server = Server(Settings(host="127.0.0.1", port=0), broker=broker)
    await server.start()
    yield server
    broker.release_all()  # a prepare left waiting would hold the shutdown up
    await server.aclose()


async def finished(task: Awaitable[T], within: float = 5 * UNIT) -> T:
    async with asyncio.timeout(within):
        return await task


def epoch_of(broker: MemoryBroker, channel: str) -> str:
    return broker.log(channel).epoch


async def open_websocket(url: str) -> ClientConnection:
    return await connect(url)


async def recv_frames(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [await recv_json(ws) for _ in range(count)]


def message_frame(channel: str, message_id: str, data: Any) -> dict[str, Any]:
    """A ``message`` frame as compared by these tests (``time`` left out)."""
    return {"type": "message", "channel": channel, "id": message_id, "data": data}


def without_time(frame: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in frame.items() if key != "time"}


# Each path answers once prepare is done ----------------------------------------------------------


async def test_poll_answers_once_the_channel_is_fetched(server: Server,
                                                        broker: FetchingBroker) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "a", [1, 2])
        answer = asyncio.create_task(client.get("/channels/a", params={"since": "0"}))
        (fetch,) = await broker.preparing(1)
        assert fetch.starts == {"a": ORIGIN}
        assert not answer.done()
        broker.release()
        response = await finished(answer)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [m["id"] for m in body["messages"]] == ids
        assert [m["data"] for m in body["messages"]] == [1, 2]
        assert body["next"] == ids[-1] and "gap" not in body
        assert response.headers["etag"] == f'"{ids[-1]}"'
        # Fetched now: the next poll, on the same connection, is answered at once.
        assert (await poll(client, "/channels/a", since=ids[0]))["next"] == ids[-1]
    assert broker.prepared == [{"a": ORIGIN}]


async def test_poll_of_several_channels_fetches_them_in_one_prepare(
        server: Server, broker: FetchingBroker) -> None:
    async with http_client(server) as client:
        a = await publish(client, "a", "from a")
        b = await publish(client, "b", "from b")
        answer = asyncio.create_task(client.get(
            "/subscribe", params=[("channel", "a"), ("channel", "b"), ("since", "0")]))
        (fetch,) = await broker.preparing(1)
        assert fetch.starts == {"a": ORIGIN, "b": ORIGIN}
        broker.release()
        response = await finished(answer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [m["id"] for m in body["messages"]] == [a, b]
    assert body["next"] == f"a={a},b={b}"


async def test_long_poll_answers_at_once_with_what_is_retained(
        server: Server, broker: FetchingBroker) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "a", ["x", "y"])
        answer = asyncio.create_task(client.get("/channels/a",
                                                params={"since": ids[0], "wait": "30"}))
        await broker.preparing(1)
        broker.release()
        response = await finished(answer)
    assert response.status_code == 200, response.text
    assert [m["id"] for m in response.json()["messages"]] == ids[1:]


async def test_long_poll_waits_for_the_fetch_then_for_a_message(
        server: Server, broker: FetchingBroker) -> None:
    async with http_client(server) as client:
        await publish(client, "a", "before")
        answer = asyncio.create_task(client.get("/channels/a", params={"wait": "30"}))
        (fetch,) = await broker.preparing(1)
        assert fetch.starts == {"a": END}
        broker.release()
        await until(lambda: server.statistics()["long_polls"] == 1)  # parked on the hub now
        assert not answer.done()
        message_id = await publish(client, "a", "after")
        response = await finished(answer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(m["id"], m["data"]) for m in body["messages"]] == [(message_id, "after")]
    assert body["next"] == message_id


async def test_sse_stream_starts_once_the_channel_is_fetched(
        server: Server, broker: FetchingBroker) -> None:
    async with http_client(server) as client, contextlib.AsyncExitStack() as stack:
        ids = await publish_many(client, "a", [1, 2])
        opening = asyncio.create_task(stack.enter_async_context(client.stream(
            "GET", "/channels/a", params={"since": "0"},
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(10 * UNIT, read=None))))
        (fetch,) = await broker.preparing(1)
        assert fetch.starts == {"a": ORIGIN}
        assert not opening.done()
        broker.release()
        response = await finished(opening)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseStream(response, within=WAIT)
        first = await reader.next_block()
        assert first.retry is not None and first.id == f"{epoch_of(broker, 'a')}-0"
        history = await reader.messages(2)
        assert [event.id for event in history] == ids
        live_id = await publish(client, "a", "live")
        (live,) = await reader.messages(1)
        assert live.id == live_id and live.json()["data"] == "live"
    assert broker.prepared == [{"a": ORIGIN}]


async def test_websocket_upgrade_happens_once_the_channel_is_fetched(
        server: Server, broker: FetchingBroker) -> None:
    async with http_client(server) as client:
        ids = await publish_many(client, "a", [1, 2])
        opening = asyncio.create_task(open_websocket(ws_url(server, "/channels/a?since=0")))
        (fetch,) = await broker.preparing(1)
        assert fetch.starts == {"a": ORIGIN}
        assert not opening.done()
        broker.release()
        async with await finished(opening) as ws:
            epoch = epoch_of(broker, "a")
            assert await recv_json(ws) == {"type": "subscribed", "channel": "a",
                                           "next": f"{epoch}-0", "client": ANY}
            history = [without_time(frame) for frame in await recv_frames(ws, 2)]
            assert history == [message_frame("a", ids[0], 1), message_frame("a", ids[1], 2)]
            live_id = await publish(client, "a", "live")
            assert without_time(await recv_json(ws)) == message_frame("a", live_id, "live")


async def test_websocket_subscribe_is_acked_once_the_channel_is_fetched(
        server: Server, broker: FetchingBroker) -> None:
    async with http_client(server) as client, connect(ws_url(server, "/subscribe")) as ws:
        ids = await publish_many(client, "a", [1, 2])
        await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": "a",
                                  "since": ids[0]}))
        (fetch,) = await broker.preparing(1)
        assert fetch.starts == {"a": parse_start(ids[0])}
        broker.release()
        assert await recv_json(ws) == {"type": "ack", "req": 1, "channel": "a", "next": ids[0],
                                       "client": ANY}
        assert without_time(await recv_json(ws)) == message_frame("a", ids[1], 2)
        live_id = await publish(client, "a", "live")
        assert without_time(await recv_json(ws)) == message_frame("a", live_id, "live")


async def test_websocket_commands_sent_while_a_subscription_waits_keep_their_order(
        server: Server, broker: FetchingBroker) -> None:
    def held() -> int:
        return sum(len(stream.held or ()) for stream in server.registry.streams()
                   if isinstance(stream, WebSocketSession))

    async with http_client(server) as client, connect(ws_url(server, "/subscribe")) as ws:
        first = await publish(client, "a", "retained")
        for command in ({"type": "subscribe", "req": 1, "channel": "a", "since": "0"},
                        {"type": "subscribe", "req": 2, "channel": "b", "since": "0"},
                        {"type": "publish", "req": 3, "channel": "a", "data": "x"}):
            await ws.send(json.dumps(command))
        (fetch_a,) = await broker.preparing(1)
        assert fetch_a.starts == {"a": ORIGIN}
        await until(lambda: held() == 2)
        broker.release()
        epoch_a = epoch_of(broker, "a")
        assert [without_time(frame) for frame in await recv_frames(ws, 2)] == [
            {"type": "ack", "req": 1, "channel": "a", "next": f"{epoch_a}-0", "client": ANY},
            message_frame("a", first, "retained"),
        ]
        (fetch_b,) = await broker.preparing(1)  # subscribe b waits in turn ...
        assert fetch_b.starts == {"b": ORIGIN}
        await ws.send(json.dumps({"type": "publish", "req": 4, "channel": "b", "data": "y"}))
        await until(lambda: held() == 2)  # ... and the publishes behind it
        assert len(broker.log("a")) == 1  # publish 3 has not run
        broker.release()
        epoch_b = epoch_of(broker, "b")
        frames = [without_time(frame) for frame in await recv_frames(ws, 5)]
    assert frames == [
        {"type": "ack", "req": 2, "channel": "b", "next": f"{epoch_b}-0", "client": ANY},
        message_frame("a", f"{epoch_a}-2", "x"),
        {"type": "ack", "req": 3, "channel": "a", "id": f"{epoch_a}-2"},
        message_frame("b", f"{epoch_b}-1", "y"),
        {"type": "ack", "req": 4, "channel": "b", "id": f"{epoch_b}-1"},
    ]


# Errors after prepare ----------------------------------------------------------------------------

READS = ["poll", "longpoll", "sse", "websocket"]


async def read_in_task(server: Server, client: httpx.AsyncClient, technique: str,
                       since: str) -> asyncio.Task[tuple[int, dict[str, Any]]]:
    """Start one read of channel ``a``; the task gives its status and JSON body."""

    async def http_read(params: dict[str, str], headers: dict[str, str]) -> tuple[
            int, dict[str, Any]]:
        response = await client.get("/channels/a", params=params, headers=headers)
        assert response.headers["content-type"] == "application/json", response.headers
        return response.status_code, dict(response.json())

    async def ws_read() -> tuple[int, dict[str, Any]]:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(server, f"/channels/a?since={since}")):
                pass
        response = refused.value.response
        return response.status_code, dict(json.loads(response.body))

    reads: dict[str, Callable[[], Awaitable[tuple[int, dict[str, Any]]]]] = {
        "poll": lambda: http_read({"since": since}, {}),
        "longpoll": lambda: http_read({"since": since, "wait": "30"}, {}),
        "sse": lambda: http_read({"since": since}, {"Accept": "text/event-stream"}),
        "websocket": ws_read,
    }
    return asyncio.create_task(reads[technique]())


@pytest.mark.parametrize("technique", READS)
async def test_broker_error_in_prepare_is_a_503(server: Server, broker: FetchingBroker,
                                                technique: str) -> None:
    async with http_client(server) as client:
        await publish(client, "a", 1)
        answer = await read_in_task(server, client, technique, "0")
        await broker.preparing(1)
        broker.release(BrokerError(STORE_AWAY))
        status, body = await finished(answer)
        assert (status, body) == (503, {"error": "broker_unavailable", "message": STORE_AWAY})
        assert broker.fetched == set()
        # Nothing is fetched: the next read prepares again, and this time it works.
        if technique in ("poll", "longpoll"):  # on the same connection, kept alive
            again = asyncio.create_task(client.get("/channels/a", params={"since": "0"}))
            await broker.preparing(1)
            broker.release()
            assert (await finished(again)).status_code == 200
            assert len(broker.prepared) == 2


async def test_broker_error_in_a_websocket_subscribe_is_an_error_reply(
        server: Server, broker: FetchingBroker) -> None:
    async with connect(ws_url(server, "/subscribe")) as ws:
        await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": "a"}))
        await ws.send(json.dumps({"type": "ping", "req": 2}))  # held behind it
        await broker.preparing(1)
        broker.release(BrokerError(STORE_AWAY))
        assert await recv_frames(ws, 2) == [
            {"type": "error", "req": 1, "error": "broker_unavailable", "message": STORE_AWAY},
            {"type": "ack", "req": 2},
        ]
        # The connection stays, and the subscription can be asked for again.
        await ws.send(json.dumps({"type": "subscribe", "req": 3, "channel": "a"}))
        await broker.preparing(1)
        broker.release()
        assert await recv_json(ws) == {"type": "ack", "req": 3, "channel": "a",
                                       "next": f"{epoch_of(broker, 'a')}-0", "client": ANY}


@pytest.mark.parametrize("technique", READS)
async def test_cursor_ahead_of_the_log_is_refused_after_prepare(
        server: Server, broker: FetchingBroker, technique: str) -> None:
    async with http_client(server) as client:
        first = await publish(client, "a", 1)
        ahead = first.replace("-1", "-5")
        answer = await read_in_task(server, client, technique, ahead)
        await broker.preparing(1)
        broker.release()
        status, body = await finished(answer)
    assert status == 400 and body["error"] == "invalid_cursor", body


async def test_cursor_ahead_of_the_log_in_a_websocket_subscribe_is_an_error_reply(
        server: Server, broker: FetchingBroker) -> None:
    async with http_client(server) as client, connect(ws_url(server, "/subscribe")) as ws:
        first = await publish(client, "a", 1)
        await ws.send(json.dumps({"type": "subscribe", "req": 1, "channel": "a",
                                  "since": first.replace("-1", "-5")}))
        await broker.preparing(1)
        broker.release()
        reply = await recv_json(ws)
        assert (reply["type"], reply["req"], reply["error"]) == ("error", 1, "invalid_cursor")
        await ws.send(json.dumps({"type": "ping", "req": 2}))
        assert await recv_json(ws) == {"type": "ack", "req": 2}


# A client that leaves during prepare ------------------------------------------------------------


async def send_request(server: Server, target: str, headers: str = "") -> asyncio.StreamWriter:
    """Send a GET over a socket of our own; return its writer, to close it."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{headers}\r\n"
                 .encode())
    await writer.drain()
    return writer


async def leave(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
           "Sec-WebSocket-Version: 13\r\n")


@pytest.mark.parametrize("path", ["poll", "longpoll", "sse", "websocket", "ws-subscribe"])
async def test_client_leaving_during_prepare_leaves_nothing_behind(
        server: Server, broker: FetchingBroker, caplog: pytest.LogCaptureFixture,
        path: str) -> None:
    caplog.set_level(logging.WARNING)
    raw: RawWebSocket | None = None
    writer: asyncio.StreamWriter | None = None
    if path == "poll":
        writer = await send_request(server, "/channels/a?since=0")
    elif path == "longpoll":
        writer = await send_request(server, "/channels/a?wait=30")
    elif path == "sse":
        writer = await send_request(server, "/channels/a", "Accept: text/event-stream\r\n")
    elif path == "websocket":
        writer = await send_request(server, "/channels/a", UPGRADE)
    else:
        raw = await RawWebSocket.connect(server, "/subscribe")
        raw.send_frame(OP_TEXT, b'{"type":"subscribe","req":1,"channel":"a"}')
    await broker.preparing(1)
    if raw is not None:
        await raw.aclose()
    else:
        assert writer is not None
        await leave(writer)
    await until(lambda: not server.statistics()["peers"])  # the server saw the client go
    broker.release()
    async with http_client(server) as client:
        # The server goes on serving (and has run what followed the prepare by then).
        assert (await poll(client, "/channels/a", since="0"))["messages"] == []
        assert not server.statistics()["streams"]
        assert not server.statistics()["long_polls"]
        assert broker.hub.subscribers("a") == 0
        await publish_many(client, "a", list(range(8)))  # nobody may write to the gone client
        assert not server.statistics()["streams"]
    problems = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert problems == [], [record.getMessage() for record in problems]


# Shutdown while a read waits for the broker ----------------------------------------------------


@pytest.mark.parametrize("headers", ["Accept: text/event-stream\r\n", UPGRADE],
                         ids=["sse", "websocket"])
async def test_shutdown_during_prepare_refuses_the_stream(broker: FetchingBroker,
                                                          headers: str) -> None:
    """A stream whose fetch ends while the server closes is refused, not started after aclose."""
    server = Server(Settings(host="127.0.0.1", port=0), broker=broker)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /channels/a HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    await broker.preparing(1)
    closing = asyncio.create_task(server.aclose())
    await until(lambda: server.closing)
    broker.release()
    await finished(closing)
    async with asyncio.timeout(5 * UNIT):
        answer = await reader.read()  # to EOF: the server closed the connection
    await leave(writer)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "shutdown"
    assert not server.statistics()["streams"]
