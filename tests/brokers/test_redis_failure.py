"""Redis goes away under a running tidings node, and comes back.

Each test has a Redis of its own (``redis_process``) that it stops, restarts
empty, pauses or starts late. Clients are ``httpx`` and ``websockets``
against in-process servers; the promises checked are the ones of issue 5 and
docs/topics/redis.md:

* publishes answer ``503 broker_unavailable`` (HTTP) or an error reply
  (WebSocket), promptly when Redis refuses connections and within the broker
  timeout when it does not answer;
* subscribers stay connected while Redis is away and are told (``status``
  notices); when it returns, what was published meanwhile is delivered, a
  lost log is an ``epoch`` gap and a log trimmed meanwhile an ``expired`` one;
* a node started without Redis serves anyway and connects when Redis comes;
* a channel the node does not hold yet cannot be read: ``503``;
* a node that only serves subscribers notices by itself that Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from brokerkit import Recorder, read_ready
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from conftest import UNIT, ServerFactory, until
from rediskit import RedisProcess
from tidings import Server, Settings
from tidings.brokers.redis import RedisBroker
from tidings.brokers.redis import pubsub as pubsub_module
from tidings.core.cursor import ORIGIN
from tidings.errors import BrokerError, BrokerUnanswered
from tidings.testing import SseBlock, SseStream, epoch_of, publish, seq_of

NodeFactory = Callable[..., Awaitable[Server]]

#: Well under the broker's timeout: how long a refused connection may take to become a 503.
PROMPT = 1.0 * UNIT


# clients -----------------------------------------------------------------------


def http_client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(10 * UNIT))


def ws_url(server: Server, path: str) -> str:
    return "ws" + server.url.removeprefix("http") + path


async def post(client: httpx.AsyncClient, channel: str, value: Any) -> httpx.Response:
    return await client.post(f"/channels/{channel}", content=json.dumps(value),
                             headers={"Content-Type": "application/json"})


def assert_unavailable(response: httpx.Response) -> None:
    """A ``503`` whose JSON body says the broker is unavailable, in words too."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == "broker_unavailable", body
    assert isinstance(body["message"], str) and "Redis" in body["message"], body


class Inbox:
    """What one subscriber receives, as dicts with a ``type``, read with timeouts.

    ``status`` notices (the broker went away or came back) may come between
    any two other items; :meth:`next` sets them aside in :attr:`statuses`,
    and :meth:`wait_status` waits for one.
    """

    def __init__(self) -> None:
        #: The ``broker`` field of each status notice, in order.
        self.statuses: list[str] = []
        self._early: list[dict[str, Any]] = []

    async def _receive(self) -> dict[str, Any]:
        raise NotImplementedError

    async def _next_any(self, within: float) -> dict[str, Any]:
        async with asyncio.timeout(within):
            item = await self._receive()
        if item["type"] == "status":
            assert set(item) == {"type", "broker", "message"}, item
            assert item["broker"] in ("ok", "unavailable") and item["message"], item
            self.statuses.append(item["broker"])
        return item

    async def next(self, within: float = 5 * UNIT) -> dict[str, Any]:
        """The next message, gap or other item that is not a status notice."""
        if self._early:
            return self._early.pop(0)
        while (item := await self._next_any(within))["type"] == "status":
            pass
        return item

    async def wait_status(self, broker: str, within: float = 5 * UNIT) -> None:
        """Wait for a status notice saying ``broker`` (other items are kept for :meth:`next`)."""
        async with asyncio.timeout(within):
            while broker not in self.statuses:
                item = await self._next_any(within)
                if item["type"] != "status":
                    self._early.append(item)


class SseInbox(Inbox):
    """An event stream; ``ids`` has the ``id:`` of each gap and message event."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__()
        self._stream = SseStream(response.aiter_bytes())
        self.ids: list[str | None] = []

    async def opening(self) -> SseBlock:
        async with asyncio.timeout(5 * UNIT):
            block = await self._stream.next_block()
        assert block.retry is not None and block.id is not None and block.event == "client", block
        return block

    async def _receive(self) -> dict[str, Any]:
        block = await self._stream.next_event()
        kind = block.event or "message"
        if kind != "status":
            self.ids.append(block.id)
        else:
            assert block.id is None, block  # a notice does not move the cursor
        return {"type": kind, **json.loads(block.data or "")}


class WsInbox(Inbox):
    def __init__(self, ws: ClientConnection) -> None:
        super().__init__()
        self.ws = ws

    async def _receive(self) -> dict[str, Any]:
        frame = await self.ws.recv()
        assert isinstance(frame, str), frame
        return dict(json.loads(frame))

    async def reply(self, **fields: Any) -> dict[str, Any]:
        """Send a command; return the frame that answers its ``req``."""
        await self.ws.send(json.dumps(fields))
        frame = await self.next()
        assert frame.get("req") == fields["req"], frame
        return frame

    async def still_open(self) -> None:
        """The WebSocket answers a ping: the server kept it."""
        pong = await self.ws.ping()
        async with asyncio.timeout(5 * UNIT):
            await pong


@contextlib.asynccontextmanager
async def open_sse(client: httpx.AsyncClient, path: str) -> AsyncIterator[SseInbox]:
    """An event stream whose opening block was read: it is subscribed when this yields."""
    async with client.stream("GET", path, headers={"Accept": "text/event-stream"},
                             timeout=httpx.Timeout(10 * UNIT, read=None)) as response:
        assert response.status_code == 200, await response.aread()
        inbox = SseInbox(response)
        await inbox.opening()
        yield inbox


@contextlib.asynccontextmanager
async def open_ws(server: Server, path: str) -> AsyncIterator[WsInbox]:
    async with connect(ws_url(server, path), open_timeout=5 * UNIT) as ws:
        yield WsInbox(ws)


# nodes -----------------------------------------------------------------------


@pytest.fixture
async def node() -> AsyncIterator[NodeFactory]:
    """Start tidings servers on a Redis with a chosen broker timeout: ``await node(url, 1.0)``."""
    servers: list[Server] = []

    async def factory(url: str, broker_timeout: float = 5.0, **changes: Any) -> Server:
        settings = Settings(host="127.0.0.1", port=0, broker=url).replace(**changes)
        broker = RedisBroker(url, settings.retention, timeout=broker_timeout)
        server = Server(settings, broker=broker)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.aclose()


def broker_health(server: Server) -> dict[str, Any]:
    return server.broker.health()


def links_connected(server: Server) -> int:
    links = broker_health(server)["links"]
    assert isinstance(links, dict)
    return int(links["connected"])


# 1. Redis stopped ----------------------------------------------------------------


async def test_publishes_answer_503_at_once_when_redis_is_stopped(
    redis_process: RedisProcess, make_server: ServerFactory,
) -> None:
    server = await make_server(broker=redis_process.url)
    async with http_client(server) as client, open_ws(server, "/subscribe") as ws:
        await publish(client, "news", "before")
        ack = await ws.reply(type="publish", req=1, channel="news", data="before too")
        assert ack["type"] == "ack", ack
        health = (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["broker"]["status"] == "ok", health

        await asyncio.to_thread(redis_process.stop)

        began = time.monotonic()
        response = await post(client, "news", "while away")
        assert time.monotonic() - began < PROMPT  # refused at once: no waiting for a timeout
        assert_unavailable(response)

        began = time.monotonic()
        reply = await ws.reply(type="publish", req="p2", channel="news", data="by ws")
        assert time.monotonic() - began < PROMPT
        assert reply["type"] == "error", reply
        assert reply["error"] == "broker_unavailable", reply
        assert "Redis" in reply["message"], reply
        await ws.still_open()  # a failed publish does not cost the connection
        assert ws.statuses == ["unavailable"]  # told once, when the failure was first seen

        health = (await client.get("/healthz")).json()
        assert health["status"] == "degraded", health
        assert health["broker"]["kind"] == "redis"
        assert health["broker"]["status"] == "unavailable"
        assert health["broker"]["last_error"], health


async def test_a_publish_whose_connection_broke_after_it_was_sent_may_be_stored(
        redis_process: RedisProcess) -> None:
    # Redis may have run a script whose answer was lost: the error must not say
    # "not published" (a retry without an idempotency key may then store it twice).
    broker = RedisBroker(redis_process.url, timeout=5 * UNIT)
    await broker.start()
    try:
        await broker.publish("news", b'"before"')
        redis_process.pause()  # the next publish is sent, and waits for its answer
        pending = asyncio.create_task(broker.publish("news", b'"in flight"'))
        await asyncio.sleep(0)  # let it be written to the socket
        assert redis_process.process is not None
        redis_process.process.kill()  # SIGKILL, frozen: the connection breaks unanswered
        await asyncio.to_thread(redis_process.stop)
        with pytest.raises(BrokerUnanswered, match="may or may not be stored"):
            await pending
    finally:
        await broker.aclose()


# 2. subscribers through an outage that loses the log --------------------------------


@pytest.mark.parametrize("publisher", ["this node", "another node"])
async def test_subscribers_stay_connected_and_get_an_epoch_gap_when_redis_returns_empty(
    redis_process: RedisProcess, make_server: ServerFactory, publisher: str,
) -> None:
    server = await make_server(broker=redis_process.url)
    other = await make_server(broker=redis_process.url)
    publishing = server if publisher == "this node" else other
    async with http_client(server) as client, http_client(publishing) as publisher_client:
        before = await publish(client, "news", "before")
        async with open_sse(client, "/channels/news") as sse, \
                open_ws(server, "/channels/news") as ws:
            assert await ws.next() == {"type": "subscribed", "channel": "news", "next": before,
                                       "client": ANY}
            long_poll = asyncio.create_task(
                client.get("/channels/news", params={"since": before, "wait": 30}))
            await until(lambda: server.statistics()["long_polls"] == 1)

            await asyncio.to_thread(redis_process.stop)
            # Streams are told, and nobody is disconnected.
            await sse.wait_status("unavailable")
            await ws.wait_status("unavailable")
            assert broker_health(server)["status"] == "unavailable"
            assert_unavailable(await post(client, "news", "while away"))
            await ws.still_open()
            assert server.statistics()["streams"] == 2 and server.statistics()["long_polls"] == 1
            assert not long_poll.done()

            await asyncio.to_thread(redis_process.restart)  # same port, nothing in it
            after = await publish(publisher_client, "news", "after")
            assert epoch_of(after) != epoch_of(before) and seq_of(after) == 1
            resume = f"{epoch_of(after)}-0"
            expected_gap = {"channel": "news", "from": before, "to": resume,
                            "reason": "epoch", "missed": None}

            assert await sse.next() == {"type": "gap", **expected_gap}
            event = await sse.next()
            assert (event["type"], event["id"], event["data"]) == ("message", after, "after")
            assert sse.ids == [resume, after]  # the gap's id moves the cursor past it

            assert await ws.next() == {"type": "gap", **expected_gap}
            frame = await ws.next()
            assert (frame["type"], frame["id"], frame["data"]) == ("message", after, "after")

            async with asyncio.timeout(5 * UNIT):
                answer = (await long_poll).json()
            # The gap answers the long poll; the next poll from past it gets the message.
            assert answer == {"messages": [], "next": resume, "gap": True,
                              "gaps": [expected_gap]}
            answer = (await client.get("/channels/news", params={"since": resume})).json()
            assert [m["id"] for m in answer["messages"]] == [after]

            later = await publish(publisher_client, "news", "later")
            assert (await sse.next())["id"] == later
            assert (await ws.next())["id"] == later
            await sse.wait_status("ok")
            await ws.wait_status("ok")
            assert sse.statuses == ws.statuses == ["unavailable", "ok"]
    assert broker_health(server)["status"] == "ok"


# 3. Redis frozen ---------------------------------------------------------------------


async def test_a_frozen_redis_gives_503_within_the_timeout_then_nothing_is_missed(
    redis_process: RedisProcess, node: NodeFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeout = 1.0 * UNIT
    # Node A reconnects a dropped link only after a while, so node B's messages are
    # published while A follows nothing: they reach A by the sync after its reconnection.
    monkeypatch.setattr(pubsub_module, "RECONNECT_DELAYS", (1.5 * UNIT, 1.5 * UNIT))
    a = await node(redis_process.url, timeout)
    b = await node(redis_process.url, timeout)
    async with http_client(a) as client_a, http_client(b) as client_b:
        first = await publish(client_b, "news", 1)
        async with open_sse(client_a, f"/channels/news?since={first}") as sse, \
                open_ws(a, f"/channels/news?since={first}") as ws:
            assert (await ws.next())["type"] == "subscribed"

            redis_process.pause()
            began = time.monotonic()
            response = await post(client_a, "news", "during the pause")
            assert time.monotonic() - began < timeout + PROMPT
            assert_unavailable(response)
            assert "did not answer" in response.json()["message"]
            await sse.wait_status("unavailable")
            await ws.wait_status("unavailable")

            # A's link to the frozen Redis is silent: A drops it (as it would after
            # LINK_SILENCE_SECONDS; made short here so the test need not wait).
            with monkeypatch.context() as short:
                short.setattr(pubsub_module, "LINK_PING_SECONDS", 0.0)
                short.setattr(pubsub_module, "LINK_SILENCE_SECONDS", 0.0)
                a.broker.maintain()
            await until(lambda: links_connected(a) == 0)
            await ws.still_open()
            assert a.statistics()["streams"] == 2

            redis_process.resume()
            published = [await publish(client_b, "news", value) for value in (2, 3, 4)]
            assert links_connected(a) == 0, "A reconnected before B published: too slow here"

            async def received(inbox: Inbox) -> list[str]:
                ids: list[str] = []
                while published[-1] not in ids:
                    item = await inbox.next(within=10 * UNIT)
                    assert item["type"] == "message", item  # no gap
                    ids.append(item["id"])
                return ids

            got_sse, got_ws = await asyncio.gather(received(sse), received(ws))
            await sse.wait_status("ok")
            await ws.wait_status("ok")
            # A's own publishes work again, on the connection that timed out or a new one.
            own = await publish(client_a, "news", 5)
            assert (await sse.next())["id"] == own and (await ws.next())["id"] == own
            assert seq_of(own) == seq_of(published[-1]) + 1
    # The publish that timed out may or may not have been stored (Redis ran it
    # when it woke up); either way every stored message arrived once, in order.
    stored = [f"{epoch_of(first)}-{seq}" for seq in range(2, seq_of(published[-1]) + 1)]
    assert seq_of(published[0]) in (2, 3)
    assert got_sse == stored and got_ws == stored
    assert broker_health(a)["status"] == "ok" and links_connected(a) == 1


# 4. Redis late -----------------------------------------------------------------------


async def test_a_node_started_before_redis_serves_and_connects_when_it_comes(
    redis_process: RedisProcess, make_server: ServerFactory,
) -> None:
    await asyncio.to_thread(redis_process.stop)
    server = await make_server(broker=redis_process.url)
    async with http_client(server) as client:
        health = (await client.get("/healthz")).json()
        assert health["status"] == "degraded" and health["broker"]["status"] == "unavailable"
        began = time.monotonic()
        assert_unavailable(await post(client, "news", "too early"))
        assert time.monotonic() - began < PROMPT

        await asyncio.to_thread(redis_process.restart)  # the same port, as configured
        # The broker retries in the background (at most RECONNECT_DELAYS[1] apart).
        deadline = time.monotonic() + pubsub_module.RECONNECT_DELAYS[1] + 5 * UNIT
        while (response := await post(client, "news", "on time")).status_code != 201:
            assert_unavailable(response)
            assert time.monotonic() < deadline, "the broker never connected to Redis"
            await asyncio.sleep(0.02)
        first = str(response.json()["id"])
        assert seq_of(first) == 1
        health = (await client.get("/healthz")).json()
        assert health["status"] == "ok" and health["broker"]["status"] == "ok", health

        answer = (await client.get("/channels/news", params={"since": "0"})).json()
        assert [m["id"] for m in answer["messages"]] == [first]


# 5. new readers while Redis is away ---------------------------------------------------


async def test_reading_a_channel_the_node_does_not_hold_answers_503_while_redis_is_away(
    redis_process: RedisProcess, make_server: ServerFactory,
) -> None:
    server = await make_server(broker=redis_process.url)
    async with http_client(server) as client:
        held = await publish(client, "held", "x")
        await publish(client, "other", "y")
        answer = (await client.get("/channels/held", params={"since": "0"})).json()
        assert [m["id"] for m in answer["messages"]] == [held]  # "held" is loaded here

        await asyncio.to_thread(redis_process.stop)
        await until(lambda: links_connected(server) == 0)

        reads: list[tuple[str, dict[str, Any]]] = [
            ("/channels/other", {"since": "0"}),                           # poll
            ("/channels/other", {"wait": "5"}),                            # long poll
            ("/subscribe", {"channel": ["held", "other"], "since": "0"}),  # one of two
        ]
        for path, params in reads:
            began = time.monotonic()
            assert_unavailable(await client.get(path, params=params))
            assert time.monotonic() - began < PROMPT

        began = time.monotonic()
        response = await client.get("/channels/other", headers={"Accept": "text/event-stream"})
        assert time.monotonic() - began < PROMPT
        assert_unavailable(response)

        began = time.monotonic()
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(server, "/channels/other"), open_timeout=5 * UNIT):
                pass
        assert time.monotonic() - began < PROMPT
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body or b"")["error"] == "broker_unavailable"

        async with open_ws(server, "/subscribe") as ws:
            reply = await ws.reply(type="subscribe", req=1, channel="other", since="0")
            assert (reply["type"], reply["error"]) == ("error", "broker_unavailable"), reply
            # A channel the node holds is still served from its replica.
            reply = await ws.reply(type="subscribe", req=2, channel="held", since="0")
            assert reply["type"] == "ack", reply
            frame = await ws.next()
            assert (frame["type"], frame["id"]) == ("message", held)

        answer = (await client.get("/channels/held", params={"since": "0"})).json()
        assert [m["id"] for m in answer["messages"]] == [held]


# 6. a link lost while the log moved on past the retention -------------------------------


async def test_a_node_whose_link_was_away_while_the_log_was_trimmed_signals_the_exact_gap(
    redis_process: RedisProcess, node: NodeFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pubsub_module, "RECONNECT_DELAYS", (1.0 * UNIT, 1.0 * UNIT))
    a = await node(redis_process.url, history_size=3)
    b = await node(redis_process.url, history_size=3)
    async with http_client(a) as client_a, http_client(b) as client_b:
        first = await publish(client_b, "news", 1)
        async with open_sse(client_a, f"/channels/news?since={first}") as sse, \
                open_ws(a, f"/channels/news?since={first}") as ws:
            assert (await ws.next())["type"] == "subscribed"
            # Redis drops A's pub/sub connection (as after a network cut); Redis stays up.
            killed = redis_process.command("CLIENT", "KILL", "TYPE", "pubsub")
            assert killed == 1
            await sse.wait_status("unavailable")
            await ws.wait_status("unavailable")

            published = [await publish(client_b, "news", value) for value in (2, 3, 4, 5, 6)]
            assert links_connected(a) == 0, "A reconnected before B published: too slow here"
            epoch = epoch_of(first)
            expected_gap = {"channel": "news", "from": first, "to": f"{epoch}-3",
                            "reason": "expired", "missed": 2}
            for inbox in (sse, ws):
                assert await inbox.next(within=10 * UNIT) == {"type": "gap", **expected_gap}
                got = [(await inbox.next())["id"] for _ in published[2:]]
                assert got == published[2:]
                await inbox.wait_status("ok")
            assert sse.ids == [f"{epoch}-3", *published[2:]]


# 7. a short freeze: the node sees Redis is back without publishing itself ----------------


async def test_after_a_short_freeze_a_node_that_only_serves_subscribers_says_ok_again(
    redis_process: RedisProcess, node: NodeFactory,
) -> None:
    timeout = 0.5 * UNIT
    a = await node(redis_process.url, timeout)
    b = await node(redis_process.url, timeout)
    async with http_client(a) as client_a, http_client(b) as client_b:
        first = await publish(client_b, "news", 1)
        async with open_ws(a, f"/channels/news?since={first}") as ws:
            assert (await ws.next())["type"] == "subscribed"
            redis_process.pause()
            assert_unavailable(await post(client_a, "news", "during the pause"))
            await ws.wait_status("unavailable")
            # A channel A does not hold cannot be loaded from a frozen Redis either.
            began = time.monotonic()
            assert_unavailable(await client_a.get("/channels/fresh", params={"since": "0"}))
            assert time.monotonic() - began < timeout + PROMPT
            redis_process.resume()
            # The link to Redis never broke; A publishes nothing more. It must find out
            # by itself that Redis answers again (its housekeeping runs every second).
            await ws.wait_status("ok", within=3 * UNIT + 2 * timeout)
            assert broker_health(a)["status"] == "ok"
            assert (await client_a.get("/healthz")).json()["status"] == "ok"
            later = await publish(client_b, "news", "later")
            ids = [(await ws.next())["id"]]
            while ids[-1] != later:  # after the one published in the pause, if it was stored
                ids.append((await ws.next())["id"])
            assert [seq_of(i) for i in ids] == list(range(2, seq_of(later) + 1))
            # The link's replies from the freeze (a subscription given up) left it sound.
            fresh = await publish(client_b, "fresh", "f")
            answer = (await client_a.get("/channels/fresh", params={"since": "0"})).json()
            assert [m["id"] for m in answer["messages"]] == [fresh]
            assert links_connected(a) == 1


async def test_a_channel_given_up_during_a_freeze_loads_at_once_after_it(
    redis_process: RedisProcess,
) -> None:
    # Loading "fresh" timed out during the freeze, and was given up (SUNSUBSCRIBE).
    # Read again as soon as Redis wakes, it is subscribed anew before Redis has
    # answered the old commands: their answers must not be taken for a slot move.
    broker = RedisBroker(redis_process.url, timeout=0.5 * UNIT)
    statuses: list[bool] = []
    broker.on_status = lambda available, detail: statuses.append(available)
    await broker.start()
    try:
        await broker.publish("held", b"1")
        await read_ready(broker, "held", ORIGIN)
        live = Recorder()
        broker.hub.subscribe("held", live)
        redis_process.pause()
        with pytest.raises(BrokerError):
            await broker.prepare({"fresh": ORIGIN})
        redis_process.resume()
        read = await read_ready(broker, "fresh", ORIGIN)
        assert read.messages == [] and read.gap is None
        message = await broker.publish("held", b"2")
        assert [m.id for m in await live.wait_for(1)] == [message.id]
        assert statuses == [False, True]  # the link was never dropped
        assert broker.health()["links"] == {"connected": 1, "total": 1}
    finally:
        await broker.aclose()
