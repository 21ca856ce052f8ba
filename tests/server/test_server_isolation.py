"""A failure stays with its client: bad requests pipelined behind parked ones.

An attacker sends a request that parks (a long poll, a publish, a long poll
whose token is about to expire) and, in the same write, a bad request. The
parked one is answered from elsewhere (the fan-out of a publish, the
publish's task, the sweep), and the bad request must then get its own error
answer without reaching that code: honest subscribers on all four
techniques get every message once, in order; the publisher gets its 201;
the sweep keeps running.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from conftest import until
from tidings import Server
from tidings.server.websocket import WebSocketSession
from tidings.session.reader import Reader
from tidings.settings import AuthSettings
from tidings.testing import UNIT, http_client, open_sse, poll, publish, recv_json, ws_url

SECRET = "test-secret-of-at-least-32-bytes-length"
#: Access control on (tokens are verified and expire) with channels open to everyone.
AUTH = AuthSettings(jwt_hs256_secret=SECRET, default_subscribe="anyone",
                    default_publish="anyone")


def hs256(payload: str) -> str:
    """A JWT over ``payload`` exactly as written (``jwt.encode`` cannot write 10**400)."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(payload.encode())
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


def get(target: str, *headers: str) -> bytes:
    lines = "".join(f"{header}\r\n" for header in headers)
    return f"GET {target} HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()


def post(target: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


#: Bad requests, each with the error it must get (status, code).
BAD_REQUESTS: dict[str, tuple[bytes, int, str]] = {
    "superscript-limit": (get("/channels/pc?limit=%C2%B2"), 400, "invalid_limit"),
    "huge-limit": (get("/channels/pc?limit=" + "9" * 4400), 400, "invalid_limit"),
    "underscore-wait": (get("/channels/pc?wait=1_0"), 400, "invalid_wait"),
    "infinite-json": (post("/channels/pc", b"1e400"), 400, "invalid_json"),
    "huge-integer": (post("/channels/pc", b"9" * 5000), 400, "invalid_json"),
    "huge-exp": (get("/channels/pc?since=0", "Authorization: Bearer " + hs256(
        '{"sub":"x","exp":1' + "0" * 400 + "}")), 401, "invalid_token"),
    "form-publish": (post("/channels/pc", b"1", "text/plain"), 415, "unsupported_media_type"),
}


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, Any]]:
    """``count`` HTTP responses with Content-Length bodies: (status, JSON body or None)."""
    answers = []
    async with asyncio.timeout(10 * UNIT):
        for _ in range(count):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            answers.append((status, json.loads(body) if body else None))
    return answers


class Honest:
    """One subscriber per technique on ``channel``, each recording the data it receives."""

    def __init__(self, server: Server, client: httpx.AsyncClient, channel: str) -> None:
        self.server, self.client, self.channel = server, client, channel
        self.received: dict[str, list[Any]] = {t: [] for t in
                                               ("sse", "websocket", "longpoll", "poll")}
        self.ready = asyncio.Event()
        self._started: set[str] = set()
        #: The close frame the server sent the WebSocket subscriber, if it closed it.
        self.closed: Close | None = None

    def _started_one(self, technique: str) -> None:
        self._started.add(technique)
        if len(self._started) == 4:
            self.ready.set()

    async def sse(self) -> None:
        async with open_sse(self.client, f"/channels/{self.channel}") as reader:
            await reader.next_block()  # the opening: subscribed from here
            self._started_one("sse")
            while True:
                event = await reader.next_event(within=60 * UNIT)
                self.received["sse"].append(event.json()["data"])

    async def websocket(self) -> None:
        async with connect(ws_url(self.server, f"/channels/{self.channel}")) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            self._started_one("websocket")
            try:
                while True:
                    frame = await recv_json(ws, within=60 * UNIT)
                    assert frame["type"] == "message", frame
                    self.received["websocket"].append(frame["data"])
            except ConnectionClosed as closed:
                self.closed = closed.rcvd

    async def longpoll(self) -> None:
        since = (await poll(self.client, f"/channels/{self.channel}"))["next"]
        self._started_one("longpoll")
        while True:
            answer = await poll(self.client, f"/channels/{self.channel}", since=since,
                                wait=round(30 * UNIT, 3))
            assert "gap" not in answer, answer
            self.received["longpoll"] += [m["data"] for m in answer["messages"]]
            since = answer["next"]

    async def poll(self) -> None:
        since = (await poll(self.client, f"/channels/{self.channel}"))["next"]
        self._started_one("poll")
        while True:
            answer = await poll(self.client, f"/channels/{self.channel}", since=since)
            assert "gap" not in answer, answer
            self.received["poll"] += [m["data"] for m in answer["messages"]]
            since = answer["next"]
            await asyncio.sleep(0.02 * UNIT)  # a regular poller's interval

    async def all_received(self, expected: list[Any]) -> None:
        await until(lambda: all(len(got) >= len(expected) for got in self.received.values()),
                    within=10 * UNIT)
        for technique, got in self.received.items():
            assert got == expected, technique


@asynccontextmanager
async def honest_subscribers(server: Server, channel: str) -> AsyncIterator[Honest]:
    async with http_client(server) as client:
        honest = Honest(server, client, channel)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run()) for run in
                     (honest.sse, honest.websocket, honest.longpoll, honest.poll)]
            async with asyncio.timeout(5 * UNIT):
                await honest.ready.wait()
            try:
                yield honest
            finally:
                for task in tasks:
                    task.cancel()


@asynccontextmanager
async def attacker(server: Server, data: bytes) -> AsyncIterator[asyncio.StreamReader]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    try:
        yield reader
    finally:
        writer.close()


def no_failures(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing but the bad requests' own answers: no task died, no delivery failed."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.parametrize("bad", list(BAD_REQUESTS))
async def test_a_bad_request_behind_a_long_poll_stays_with_its_client(
        make_server: Any, caplog: pytest.LogCaptureFixture, bad: str) -> None:
    server = await make_server(auth=AUTH)
    data, status, code = BAD_REQUESTS[bad]
    async with honest_subscribers(server, "pc") as honest, \
            attacker(server, get("/channels/pc?wait=30") + data) as reader, \
            http_client(server) as client:
        await until(lambda: server.statistics()["long_polls"] >= 2)  # honest one + attacker's
        ids = [await publish(client, "pc", n) for n in range(3)]  # each answered 201
        [(first_status, first), (bad_status, error)] = await read_responses(reader, 2)
        assert first_status == 200 and first["messages"][0]["id"] == ids[0]
        assert (bad_status, error["error"]) == (status, code), error
        await honest.all_received([0, 1, 2])
    no_failures(caplog)


@pytest.mark.parametrize("bad", list(BAD_REQUESTS))
async def test_a_bad_request_behind_a_publish_stays_with_its_client(
        make_server: Any, caplog: pytest.LogCaptureFixture, bad: str) -> None:
    server = await make_server(auth=AUTH)
    data, status, code = BAD_REQUESTS[bad]
    async with honest_subscribers(server, "pc") as honest:
        async with attacker(server, post("/channels/pc", b'"first"') + data) as reader:
            [(first_status, first), (bad_status, error)] = await read_responses(reader, 2)
        assert first_status == 201 and first["channel"] == "pc"
        assert (bad_status, error["error"]) == (status, code), error
        async with http_client(server) as client:
            await publish(client, "pc", "second")
        await honest.all_received(["first", "second"])
    no_failures(caplog)


@pytest.mark.parametrize("bad", list(BAD_REQUESTS))
async def test_a_bad_request_behind_an_expiring_token_leaves_the_sweep_running(
        make_server: Any, caplog: pytest.LogCaptureFixture, bad: str) -> None:
    """The sweep answers the long poll (401) and must not run the bad request itself."""
    server = await make_server(auth=AUTH)
    data, status, code = BAD_REQUESTS[bad]

    def expiring(seconds: float) -> str:
        return "Authorization: Bearer " + hs256(json.dumps(
            {"sub": "x", "exp": int(time.time() + seconds) + 1}))

    async with honest_subscribers(server, "pc") as honest:
        async with attacker(server, get("/channels/pc?wait=30", expiring(0)) + data) as reader:
            [(first_status, first), (bad_status, error)] = await read_responses(reader, 2)
        assert (first_status, first["error"]) == (401, "token_expired")
        assert (bad_status, error["error"]) == (status, code), error
        # The sweep still runs: another expiring long poll is ended on time.
        async with attacker(server, get("/channels/pc?wait=30", expiring(0))) as reader:
            [(again, body)] = await read_responses(reader, 1)
        assert (again, body["error"]) == (401, "token_expired")
        async with http_client(server) as client:
            for n in range(3):
                await publish(client, "pc", n)
        await honest.all_received([0, 1, 2])
    no_failures(caplog)


async def test_an_exception_in_one_delivery_reaches_no_one_else(
        make_server: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A subscriber whose delivery raises is closed; the others and the publisher go on."""
    server = await make_server()
    async with honest_subscribers(server, "pc") as honest:
        [broken] = [s for s in server.registry.streams() if isinstance(s, WebSocketSession)]
        deliver = Reader.deliver

        def boom(reader: Reader, message: Any) -> None:
            if reader is broken.reader:
                raise ZeroDivisionError("a bug in one delivery")
            deliver(reader, message)

        monkeypatch.setattr(Reader, "deliver", boom)
        async with http_client(server) as client:
            for n in range(3):
                assert await publish(client, "pc", n)  # the publisher is answered
        await until(lambda: honest.closed is not None)
        assert honest.closed is not None and honest.closed.code == 1011
        assert honest.received.pop("websocket") == []
        await honest.all_received([0, 1, 2])  # the three others
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "delivery" in errors[0].getMessage()


# Parameters take ASCII digits only; a few answers the protocol was missing ------------------


@pytest.mark.parametrize(("query", "code"), [
    ("limit=%C2%B2", "invalid_limit"), ("limit=%D9%A3", "invalid_limit"),
    ("limit=" + "1" * 4400, "invalid_limit"), ("limit=+5", "invalid_limit"),
    ("wait=1_0", "invalid_wait"), ("wait=1e1", "invalid_wait"), ("wait=%D9%A3", "invalid_wait"),
    ("wait=-1", "invalid_wait"), ("wait=inf", "invalid_wait"), ("wait=nan", "invalid_wait"),
])
async def test_parameters_take_ascii_digits_only(server: Server, query: str, code: str) -> None:
    async with http_client(server) as client:
        response = await client.get(f"/channels/a?{query}")
    assert response.status_code == 400
    assert response.json()["error"] == code


async def test_head_healthz_answers_the_head_of_get(server: Server) -> None:
    async with http_client(server) as client:
        response = await client.head("/healthz")
        assert response.status_code == 200
        assert response.content == b""
        assert int(response.headers["content-length"]) > 0
        assert (await client.get("/healthz")).status_code == 200  # the connection goes on


@pytest.mark.parametrize("begun", [b"G", b"GET /chan", b"GET /channels/a HTTP/1.1\r\n"])
async def test_a_request_begun_then_silence_gets_408(make_server: Any, begun: bytes) -> None:
    """However little of the next request arrived on a kept-alive connection."""
    server = await make_server(header_timeout=0.4 * UNIT)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(get("/healthz") + begun)
    try:
        [(first, _), (status, body)] = await read_responses(reader, 2)
    finally:
        writer.close()
    assert first == 200
    assert (status, body["error"]) == (408, "request_timeout")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_publishes_declared_as_another_type_are_415(server: Server,
                                                          content_type: str) -> None:
    async with http_client(server) as client:
        response = await client.post("/channels/a", content=b'"x"',
                                     headers={"Content-Type": content_type})
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"
        for accepted in ("application/json; charset=utf-8", "application/merge-patch+json"):
            ok = await client.post("/channels/a", content=b'"x"',
                                   headers={"Content-Type": accepted})
            assert ok.status_code == 201, ok.text
        assert [m["data"] for m in (await poll(client, "/channels/a", since="0"))["messages"]
                ] == ["x", "x"]


async def test_a_max_connections_above_the_file_limit_is_warned_about(
        make_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Past the file limit accepting fails and clients see resets: the operator is told."""
    caplog.set_level(logging.WARNING, "tidings.server")
    await make_server(max_connections=10**9)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "max_connections is 1000000000" in warning and "ulimit -n" in warning


@pytest.mark.parametrize("data", ["1e400", "-1e400", "[1e999]", "9" * 5000])
async def test_a_websocket_publish_that_overflows_is_an_error_reply(server: Server,
                                                                    data: str) -> None:
    """Not a dropped connection: the error is the command's, and the connection goes on."""
    async with connect(ws_url(server, "/subscribe")) as ws:
        await ws.send(f'{{"type":"publish","req":1,"channel":"a","data":{data}}}')
        reply = await recv_json(ws)  # the frame is not JSON that can be kept: no req to echo
        assert (reply["type"], reply["req"], reply["error"]) == ("error", None, "invalid_json")
        await ws.send('{"type":"ping","req":2}')
        assert (await recv_json(ws)) == {"type": "ack", "req": 2}
