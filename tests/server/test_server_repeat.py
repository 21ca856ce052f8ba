"""A request repeated on its connection but for ``since`` is answered from the first one's
decision (wire/repeat.py, server/repeat.py): the same answers as the full path, without it.

Requests are written byte for byte on one raw connection; ``dispatch`` counts how many
went through the full path (the router), which a repeat never calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import jwt
import pytest

from conftest import ServerFactory, until
from tidings import Server
from tidings.core.policy import Claims, Rule
from tidings.core.presence import Identity
from tidings.server import repeat
from tidings.server.accesslog import ACCESS_LOGGER
from tidings.server.auth import ANONYMOUS, Credentials
from tidings.server.connection import SHAPE_EVERY, HttpConnection
from tidings.server.repeat import PollRead, Shared
from tidings.server.request import Request
from tidings.settings import AuthSettings
from tidings.testing import (
    UNIT,
    RawResponse,
    close_raw,
    epoch_of,
    http_client,
    open_raw,
    poll,
    publish,
    read_response,
    request_head,
    seq_of,
)

SECRET = "test-secret-of-at-least-32-bytes-length"
WITHIN = 3 * UNIT

Raw = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Dispatches:
    """Wraps ``server.router.dispatch``: the requests that went through the full path."""

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.requests: list[Request] = []
        dispatch = server.router.dispatch

        def counting(conn: HttpConnection, request: Request, rest: bytes = b"") -> None:
            self.requests.append(request)
            dispatch(conn, request, rest)

        monkeypatch.setattr(server.router, "dispatch", counting)

    def __len__(self) -> int:
        return len(self.requests)


@asynccontextmanager
async def raw(server: Server) -> AsyncIterator[Raw]:
    reader, writer = await open_raw(server)
    try:
        yield reader, writer
    finally:
        await close_raw(writer)


def get(server: Server, target: str, *headers: str) -> bytes:
    return request_head(server, "GET", target, *headers)


async def ask(connection: Raw, data: bytes) -> RawResponse:
    reader, writer = connection
    writer.write(data)
    await writer.drain()
    return await read_response(reader, WITHIN)


async def fresh(server: Server, data: bytes) -> RawResponse:
    """What a new connection is answered for ``data``."""
    async with raw(server) as connection:
        return await ask(connection, data)


def comparable(answer: RawResponse) -> tuple[int, dict[str, str], Any]:
    """An answer without what differs between any two answers (date, a fresh client id)."""
    headers = {k: v for k, v in answer.headers.items() if k not in ("date", "tidings-client")}
    return answer.status, headers, json.loads(answer.body) if answer.body else None


def data_of(answer: RawResponse) -> list[Any]:
    assert answer.status == 200, answer
    return [m["data"] for m in json.loads(answer.body)["messages"]]


async def start_of(server: Server, channel: str = "c") -> str:
    async with http_client(server) as client:
        return str((await poll(client, f"/channels/{channel}"))["next"])


async def parked(server: Server, count: int = 1) -> None:
    await until(lambda: server.statistics()["long_polls"] >= count, WITHIN)


# long polls and polls served by the repeat -------------------------------------------------------


async def answered_after_publish(server: Server, connection: Raw, publisher: Any, target: str,
                                 data: object) -> RawResponse:
    """Send the long poll ``target``, publish ``data`` on ``c`` once it is parked: its answer."""
    connection[1].write(get(server, target))
    await parked(server)
    await publish(publisher, "c", data)
    return await read_response(connection[0], WITHIN)


@pytest.mark.parametrize("client_id", [None, "poller-1"])
async def test_a_long_poller_is_answered_by_the_repeat(server: Server, client_id: str | None,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cursor = await start_of(server)
    dispatches = Dispatches(server, monkeypatch)
    named = f"client={client_id}&" if client_id else ""
    seen: list[Any] = []
    clients: list[str] = []
    async with raw(server) as connection, http_client(server) as publisher:
        for number in range(50):
            answer = await answered_after_publish(
                server, connection, publisher, f"/channels/c?{named}wait=30&since={cursor}",
                number)
            seen += data_of(answer)
            cursor = json.loads(answer.body)["next"]
            clients.append(answer.headers["tidings-client"])
    assert seen == list(range(50))
    assert [r.method for r in dispatches.requests if r.method == "GET"] == ["GET"]
    if client_id is None:
        assert len(set(clients)) == 50  # a fresh id each answer, as on the full path
    else:
        assert set(clients) == {client_id}


async def test_a_poll_with_if_none_match_gets_304_until_a_message(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    async with http_client(server) as client:
        first = await publish(client, "c", "a")
        tag = (await client.get("/channels/c", params={"since": first})).headers["etag"]
        dispatches = Dispatches(server, monkeypatch)
        request = get(server, f"/channels/c?since={first}", f"If-None-Match: {tag}")
        async with raw(server) as connection:
            for _ in range(5):
                answer = await ask(connection, request)
                assert (answer.status, answer.body) == (304, b"")
            assert len(dispatches) == 1
            await publish(client, "c", "b")
            gets = len([r for r in dispatches.requests if r.method == "GET"])
            answer = await ask(connection, request)
            assert data_of(answer) == ["b"]
            assert len([r for r in dispatches.requests if r.method == "GET"]) == gets
            assert comparable(answer) == comparable(await fresh(server, request))


# the answer kept when nothing is new --------------------------------------------------------------


@pytest.mark.parametrize("client_id", [None, "poller-1"])
@pytest.mark.parametrize("kind", ["304", "empty"])
async def test_pollers_that_find_nothing_new_share_one_answer_until_a_message(
        server: Server, kind: str, client_id: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Three connections repeat a poll that finds nothing new: each answer is the full
    path's (a fresh client id each time, or the one chosen); a message ends the kept answer
    for every one of them at once, and the next poll from the new end is kept again."""
    async with http_client(server) as client:
        cursor = await publish(client, "c", "a")
        named = f"&client={client_id}" if client_id else ""

        def request(since: str) -> bytes:
            tag = (f'If-None-Match: "{since}"',) if kind == "304" else ()
            return get(server, f"/channels/c?since={since}{named}", *tag)

        dispatches = Dispatches(server, monkeypatch)
        clients: list[str] = []
        async with raw(server) as one, raw(server) as two, raw(server) as three:
            connections = [one, two, three]
            for _ in range(4):
                for connection in connections:
                    answer = await ask(connection, request(cursor))
                    assert answer.status == (304 if kind == "304" else 200)
                    assert comparable(answer) == comparable(await fresh(server, request(cursor)))
                    clients.append(answer.headers["tidings-client"])
            assert len([r for r in dispatches.requests if r.method == "GET"]) == 3 + 12
            await publish(client, "c", "b")
            for connection in connections:
                answer = await ask(connection, request(cursor))
                assert data_of(answer) == ["b"]
                assert comparable(answer) == comparable(await fresh(server, request(cursor)))
            cursor = json.loads(answer.body)["next"]
            for _ in range(2):
                for connection in connections:
                    answer = await ask(connection, request(cursor))
                    assert comparable(answer) == comparable(await fresh(server, request(cursor)))
                    assert answer.status == (304 if kind == "304" else 200)
            # (the If-None-Match that follows since is the shape's second hole: not read again)
            assert len([r for r in dispatches.requests if r.method == "GET"]) == 24
    if client_id is None:
        assert len(set(clients)) == len(clients)  # a fresh id each answer, as on the full path
    else:
        assert set(clients) == {client_id}


@pytest.mark.parametrize("published", [True, False])
async def test_the_kept_answer_is_made_once_per_end_of_the_log(
        server: Server, published: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pollers that find nothing new are answered from one answer made once, whether the
    channel has messages or was never published to (its log is a stand-in); a message makes
    it again once, for the new end."""
    made: list[object] = []
    nothing_new = repeat.poll.nothing_new

    def counting(*args: Any, **kwargs: Any) -> tuple[bytes, bytes]:
        made.append(args[0])
        return nothing_new(*args, **kwargs)

    monkeypatch.setattr(repeat.poll, "nothing_new", counting)
    async with http_client(server) as client:
        cursor = await publish(client, "c", "a") if published else await start_of(server)
        async with raw(server) as one, raw(server) as two:
            request = get(server, f"/channels/c?since={cursor}", f'If-None-Match: "{cursor}"')
            for _ in range(3):
                for connection in (one, two):
                    assert (await ask(connection, request)).status == 304
            assert len(made) == 1
            following = await publish(client, "c", "b")
            for connection in (one, two):
                assert data_of(await ask(connection, request)) == ["b"]
            for _ in range(3):
                for connection in (one, two):
                    request = get(server, f"/channels/c?since={following}",
                                  f'If-None-Match: "{following}"')
                    assert (await ask(connection, request)).status == 304
            assert len(made) == 2


@pytest.mark.parametrize("kind", ["poll", "longpoll"])
async def test_the_bytes_of_another_pollers_request_are_that_pollers_request(
        server: Server, kind: str) -> None:
    """Two pollers of one decision with their own client ids: a connection that sends the
    other's request, byte for byte, is answered as that request asks (the other's id), not
    as its own decision would have answered."""
    cursor = await start_of(server)
    wait = "&wait=30" if kind == "longpoll" else ""
    alice = get(server, f"/channels/c?since={cursor}{wait}&client=alice")
    bob = get(server, f"/channels/c?since={cursor}{wait}&client=bob")
    async with raw(server) as one, raw(server) as two, http_client(server) as client:
        if kind == "poll":
            for _ in range(3):
                assert (await ask(two, bob)).headers["tidings-client"] == "bob"
                assert (await ask(one, alice)).headers["tidings-client"] == "alice"
            answer = await ask(two, alice)  # (the request the kept answer last answered)
        else:
            for connection, request in ((one, alice), (two, bob)):
                connection[1].write(request)
            await parked(server, 2)
            cursor = await publish(client, "c", "a")
            for connection in (one, two):
                assert data_of(await read_response(connection[0], WITHIN)) == ["a"]
            alice = get(server, f"/channels/c?since={cursor}{wait}&client=alice")
            one[1].write(alice)  # (it arms the decision's gathering with alice's request)
            await parked(server, 1)
            two[1].write(alice)
            await parked(server, 2)
            await publish(client, "c", "b")
            assert data_of(await read_response(one[0], WITHIN)) == ["b"]
            answer = await read_response(two[0], WITHIN)
            assert data_of(answer) == ["b"]
        assert answer.headers["tidings-client"] == "alice"


async def test_a_poller_that_sends_back_its_etag_is_answered_by_the_repeat(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """``since=NEXT`` with ``If-None-Match: "NEXT"`` (what tidings' clients send): both move
    after each message, and the request is still answered from its first decision."""
    async with http_client(server) as client:
        cursor = await publish(client, "c", "a")
        dispatches = Dispatches(server, monkeypatch)
        seen: list[Any] = []
        async with raw(server) as connection:
            for number in range(5):
                request = get(server, f"/channels/c?since={cursor}", f'If-None-Match: "{cursor}"')
                assert (await ask(connection, request)).status == 304
                await publish(client, "c", number)
                answer = await ask(connection, request)
                assert comparable(answer) == comparable(await fresh(server, request))
                seen += data_of(answer)
                assert answer.headers["etag"] == f'"{json.loads(answer.body)["next"]}"'
                cursor = json.loads(answer.body)["next"]
        assert seen == list(range(5))
        assert len([r for r in dispatches.requests if r.method == "GET"]) == 1 + 5  # (+ fresh)


@pytest.mark.parametrize("tag", ["old", "other", "weak", "twice"])
async def test_an_if_none_match_that_does_not_follow_since_is_kept_as_it_is(
        server: Server, tag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tag that is not the request's ``since`` in quotes stays what it was, whatever
    ``since`` becomes: every answer is the full path's."""
    async with http_client(server) as client:
        first = await publish(client, "c", "a")
        second = await publish(client, "c", "b")
    headers = {"old": (f'If-None-Match: "{first}"',), "other": ('If-None-Match: "x"',),
               "weak": (f'If-None-Match: W/"{second}"',),
               "twice": (f'If-None-Match: "{second}"', f'If-None-Match: "{second}"')}[tag]
    async with raw(server) as connection:
        for since in (first, second, second, first, second):
            request = get(server, f"/channels/c?since={since}", *headers)
            answer = await ask(connection, request)
            assert comparable(answer) == comparable(await fresh(server, request)), since


async def test_the_kept_answer_keeps_a_named_poller_present(
        make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poller that chose its id stays present between polls: each kept answer touches it."""
    server = await make_server(presence=True)
    cursor = await start_of(server)
    touched: list[str] = []
    tracker = type(server.presence)
    touch = tracker.touch

    def counting(self: Any, channels: Any, identity: Identity, technique: str) -> None:
        touched.append(identity.client)
        touch(self, channels, identity, technique)

    monkeypatch.setattr(tracker, "touch", counting)
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection:
        for _ in range(5):
            assert data_of(await ask(connection,
                                     get(server, f"/channels/c?since={cursor}&client=me"))) == []
    assert len(dispatches) == 1
    assert touched == ["me"] * 5
    async with http_client(server) as client:
        members = (await client.get("/channels/c/presence")).json()
    assert [m["client"] for m in members["members"]] == ["me"]


async def test_polls_of_one_decision_from_other_cursors_are_each_answered_right(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll without ``since`` (from the end) and polls from the end and from behind it
    share one decision: they take turns with the kept answer, each answered as a fresh
    connection would be."""
    async with http_client(server) as client:
        behind = await publish(client, "c", "a")
        end = await publish(client, "c", "b")
    targets = ["/channels/c", f"/channels/c?since={end}", f"/channels/c?since={behind}"]
    async with raw(server) as one, raw(server) as two, raw(server) as three:
        for _ in range(3):
            for connection, target in zip((one, two, three), targets, strict=True):
                answer = await ask(connection, get(server, target))
                assert comparable(answer) == comparable(await fresh(server, get(server, target)))
                assert data_of(answer) == (["b"] if target.endswith(behind) else [])


# falls back to the full path ---------------------------------------------------------------------


async def first_then(server: Server, monkeypatch: pytest.MonkeyPatch, first: bytes,
                     then: bytes) -> tuple[RawResponse, Dispatches]:
    """Ask ``first`` then ``then`` on one connection: ``then``'s answer, and the dispatches."""
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection:
        assert (await ask(connection, first)).status == 200
        assert len(dispatches) == 1
        answer = await ask(connection, then)
    return answer, dispatches


@pytest.mark.parametrize("change", ["path", "header", "query"])
async def test_another_request_goes_the_full_path(server: Server, change: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async with http_client(server) as client:
        old = await publish(client, "c", "a")
        await publish(client, "d", "x")
    first = get(server, f"/channels/c?since={old}")
    then = {"path": get(server, "/channels/d?since=0"),
            "header": get(server, f"/channels/c?since={old}", "X-Other: 1"),
            "query": get(server, f"/channels/c?since={old}&limit=1")}[change]
    answer, dispatches = await first_then(server, monkeypatch, first, then)
    assert len(dispatches) == 2
    assert comparable(answer) == comparable(await fresh(server, then))


@pytest.mark.parametrize("since", ["ahead", "zz", "%ZZ", "a%26b", "%FF", "0-0-0"])
async def test_a_cursor_the_driver_refuses_is_answered_by_the_full_path(
        server: Server, since: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with http_client(server) as client:
        old = await publish(client, "c", "a")
    if since == "ahead":
        since = f"{epoch_of(old)}-{seq_of(old) + 100}"
    then = get(server, f"/channels/c?since={since}")
    answer, dispatches = await first_then(server, monkeypatch,
                                          get(server, f"/channels/c?since={old}"), then)
    # (not UTF-8: no Request is made of it, the parser's callback refuses it and closes)
    assert len(dispatches) == (1 if since == "%FF" else 2)
    assert answer.status == 400
    assert comparable(answer) == comparable(await fresh(server, then))
    if since.startswith(epoch_of(old)):
        assert json.loads(answer.body)["error"] == "invalid_cursor"


async def test_a_draining_node_refuses_the_repeated_long_poll(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    async with http_client(server) as client:
        old = await publish(client, "c", "a")
        new = await publish(client, "c", "b")
    first = get(server, f"/channels/c?wait=30&since={old}")
    then = get(server, f"/channels/c?wait=30&since={new}")
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection:
        assert data_of(await ask(connection, first)) == ["b"]
        # The moment drain begins, before it closes the idle connections (app.py).
        monkeypatch.setattr(server, "draining", True)
        answer = await ask(connection, then)
    assert len(dispatches) == 2
    assert (answer.status, json.loads(answer.body)["error"]) == (503, "shutdown")
    assert comparable(answer) == comparable(await fresh(server, then))
    monkeypatch.setattr(server, "draining", False)


async def test_drain_answers_a_long_poll_parked_by_the_repeat(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    async with http_client(server) as client:
        old = await publish(client, "c", "a")
        new = await publish(client, "c", "b")
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection:
        assert data_of(await ask(connection, get(server, f"/channels/c?wait=30&since={old}")))
        connection[1].write(get(server, f"/channels/c?wait=30&since={new}"))
        await parked(server)
        assert len(dispatches) == 1  # parked by the repeat
        draining = asyncio.create_task(server.drain(0))
        answer = await read_response(connection[0], WITHIN)
        assert data_of(answer) == []  # then closed, as on the full path
        async with asyncio.timeout(WITHIN):
            assert await connection[0].read() == b""
            await draining


def _token(exp: float) -> str:
    return jwt.encode({"sub": "alice", "exp": exp,
                       "channels": {"subscribe": ["chat:*"], "publish": []}}, SECRET, "HS256")


async def _auth_server(make_server: ServerFactory) -> Server:
    return await make_server(auth=AuthSettings(jwt_hs256_secret=SECRET, jwt_leeway=0.0,
                                               rules={"chat": Rule("token", "token")}))


async def until_time(instant: float) -> None:
    """Until the wall clock (which tokens are checked against) is past ``instant``."""
    await until(lambda: time.time() > instant, max(0.0, instant - time.time()) + WITHIN)


async def test_a_token_that_expires_between_requests_is_refused(
        make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await _auth_server(make_server)
    exp = math.floor(time.time()) + 2  # a whole second: see the test below for a fraction
    bearer = f"Authorization: Bearer {_token(exp)}"
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection:
        first = await ask(connection, get(server, "/channels/chat:a?since=0", bearer))
        assert data_of(first) == []
        cursor = json.loads(first.body)["next"]
        assert (await ask(connection, get(server, f"/channels/chat:a?since={cursor}",
                                          bearer))).status == 200
        assert len(dispatches) == 1  # the token was good: answered by the repeat
        await until_time(exp)
        then = get(server, f"/channels/chat:a?since={cursor}", bearer)
        answer = await ask(connection, then)
    assert len(dispatches) == 2
    assert (answer.status, json.loads(answer.body)["error"]) == (401, "token_expired")
    assert comparable(answer) == comparable(await fresh(server, then))


async def test_a_token_with_a_fractional_exp_is_refused_as_on_the_full_path(
        make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    server = await _auth_server(make_server)
    exp = math.floor(time.time()) + 2 + 0.9
    bearer = f"Authorization: Bearer {_token(exp)}"
    async with raw(server) as connection:
        first = await ask(connection, get(server, "/channels/chat:a?since=0", bearer))
        cursor = json.loads(first.body)["next"]
        await until_time(math.floor(exp) + 0.05)  # expired for PyJWT, not yet for a float
        then = get(server, f"/channels/chat:a?since={cursor}", bearer)
        refused = await fresh(server, then)
        assert refused.status == 401
        answer = await ask(connection, then)
    # (On a machine too slow to ask before ``exp``, both are refused for the float too.)
    assert comparable(answer) == comparable(refused)


# never offered -----------------------------------------------------------------------------------


async def three_times(server: Server, target: str, monkeypatch: pytest.MonkeyPatch,
                      *headers: str) -> Dispatches:
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection:
        for _ in range(3):
            assert (await ask(connection, get(server, target, *headers))).status == 200
    return dispatches


async def test_not_offered_with_the_access_log(make_server: ServerFactory,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    server = await make_server(access_log=True)
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    dispatches = await three_times(server, "/channels/c?since=0", monkeypatch)
    assert len(dispatches) == 3
    assert len([r for r in caplog.records if r.name == ACCESS_LOGGER]) == 3


@pytest.mark.parametrize("query", ["presence=1&client=me", "latest=1"])
async def test_not_offered_for_presence_or_latest(make_server: ServerFactory, query: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    server = await make_server(presence=True)
    assert len(await three_times(server, f"/channels/c?since=0&{query}", monkeypatch)) == 3


async def test_not_offered_with_hooks(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    @server.on_subscribe
    async def on_subscribe(user: str | None, channel: str) -> bool:
        asked.append(channel)
        return True

    assert len(await three_times(server, "/channels/c?since=0", monkeypatch)) == 3
    assert asked == ["c"] * 3


# the bytes around a repeat -----------------------------------------------------------------------


async def test_pipelined_and_split_requests_after_a_repeat(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    async with http_client(server) as client:
        ids = [await publish(client, "c", n) for n in range(4)]
    dispatches = Dispatches(server, monkeypatch)

    def at(since: str) -> bytes:
        return get(server, f"/channels/c?since={since}")

    async with raw(server) as connection:
        reader, writer = connection
        assert data_of(await ask(connection, at(ids[0]))) == [1, 2, 3]
        assert data_of(await ask(connection, at(ids[1]))) == [2, 3]
        assert len(dispatches) == 1
        writer.write(at(ids[2]) + at(ids[0]))  # two in one write
        assert data_of(await read_response(reader, WITHIN)) == [3]
        assert data_of(await read_response(reader, WITHIN)) == [1, 2, 3]
        assert len(dispatches) == 3
        assert data_of(await ask(connection, at(ids[1]))) == [2, 3]  # read in full: offered
        assert data_of(await ask(connection, at(ids[2]))) == [3]  # and repeated
        assert len(dispatches) == 4
        request = at(ids[2])
        writer.write(request[:20])
        await writer.drain()
        await until(lambda: any(c._request_begun for c in server.registry._connections),
                    WITHIN)
        writer.write(request[20:])
        assert data_of(await read_response(reader, WITHIN)) == [3]
        assert len(dispatches) == 5
        assert data_of(await ask(connection, at(ids[0]))) == [1, 2, 3]  # in full
        assert data_of(await ask(connection, at(ids[1]))) == [2, 3]  # repeated
        assert len(dispatches) == 6


async def test_the_end_of_a_request_is_not_taken_for_a_request(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    async with http_client(server) as client:
        await publish(client, "c", "from c")
        await publish(client, "d", "from d")
    other = get(server, "/channels/d?since=0")  # the body of a GET of /channels/c
    head = get(server, "/channels/c?since=0", f"Content-Length: {len(other)}")
    async with raw(server) as connection:
        reader, writer = connection
        writer.write(head)
        await writer.drain()
        await until(lambda: any(c._request_begun for c in server.registry._connections),
                    WITHIN)
        writer.write(other)
        assert data_of(await read_response(reader, WITHIN)) == ["from c"]
        assert data_of(await ask(connection, other)) == ["from d"]


async def test_a_second_since_in_another_spelling_is_read_as_on_the_full_path(
        server: Server) -> None:
    async with http_client(server) as client:
        old = await publish(client, "c", "a")
        await publish(client, "c", "b")
    async with raw(server) as connection:
        first = get(server, f"/channels/c?since={old}&%73ince={old}")
        assert data_of(await ask(connection, first)) == ["b"]
        then = get(server, f"/channels/c?since=0&%73ince={old}")
        assert data_of(await fresh(server, then)) == ["b"]  # the last since
        assert data_of(await ask(connection, then)) == ["b"]


async def test_repeated_polls_count_in_the_metrics(server: Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cursor = await start_of(server)
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection, http_client(server) as publisher:
        for number in range(5):
            answer = await answered_after_publish(
                server, connection, publisher, f"/channels/c?wait=30&since={cursor}", number)
            assert data_of(answer) == [number]
            cursor = json.loads(answer.body)["next"]
        text = (await publisher.get("/metrics")).text
    assert len([r for r in dispatches.requests if "wait=" in r.target.decode()]) == 1
    assert 'tidings_delivered_messages_total{technique="longpoll"} 5.0' in text


async def test_repeated_polls_keep_their_connection_past_the_keep_alive_timeout(
        make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keep-alive deadline a repeated answer files (``Server.keep_alive_deadline``, one
    for every connection, renewed each tick) moves on with every answer; once the polls
    stop, the connection is closed after the timeout, not before."""
    server = await make_server(keep_alive_timeout=0.8)  # a tick of 0.2 s
    dispatches = Dispatches(server, monkeypatch)
    request = get(server, "/channels/c?since=0")
    async with raw(server) as (reader, writer):
        started = server.loop.time()
        while server.loop.time() - started < 2.0:  # two and a half timeouts
            assert (await ask((reader, writer), request)).status == 200
            await asyncio.sleep(0.1)
        last = server.loop.time()
        assert len(dispatches) == 1  # the first: every other was answered again
        async with asyncio.timeout(0.8 + 3 * server.tick + WITHIN):
            assert await reader.read() == b""
        assert server.loop.time() - last >= 0.8 - server.tick  # (less a late tick at most)


async def test_a_since_grown_past_max_url_length_is_refused(
        make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 100
    server = await make_server(max_url_length=limit)
    async with http_client(server) as client:
        old = await publish(client, "c", "a")
        await publish(client, "c", "b")
    prefix = f"/channels/c?since={old}&x="
    short = prefix + "y" * (limit - len(prefix))  # at the limit: served
    long = short.replace(f"since={old}", f"since={old}0")  # one byte past it
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection:
        assert data_of(await ask(connection, get(server, short))) == ["b"]
        assert len(dispatches) == 1
        answer = await ask(connection, get(server, long))
        async with asyncio.timeout(WITHIN):  # a protocol error: the connection closes
            assert await connection[0].read() == b""
    assert len(dispatches) == 1  # refused by the parser
    assert answer.status in (400, 414)
    assert json.loads(answer.body)["error"] == "request_line_too_long"
    assert comparable(answer) == comparable(await fresh(server, get(server, long)))


class AServer:
    """What a decision asks of its server when it is kept (hashable, as a ``Server`` is)."""

    def __init__(self, presence: bool) -> None:
        policy = SimpleNamespace(enabled=presence)
        self.presence = SimpleNamespace(enabled=presence, policy=lambda channel: policy)


# shared decisions ---------------------------------------------------------------------------------


def test_equal_decisions_are_one_object_and_the_table_is_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pollers that ask the same read share one decision, each with its own client id and
    token; past ``MAX_SHARED`` the table starts again."""
    server: Any = AServer(False)

    def read(page: int = 100, channel: str = "c") -> PollRead:
        return PollRead(server, (channel,), False, page, 30.0, None, (), True, 0.0)

    shared = Shared()
    first = shared.repeat(read(), ANONYMOUS, None)
    assert shared.repeat(read(), ANONYMOUS, None).read is first.read
    assert shared.repeat(read(channel="d"), ANONYMOUS, None).read is not first.read
    # Anonymous pollers that name no client id share one Repeat (it holds nothing of theirs).
    assert shared.repeat(read(), Credentials(), None) is first
    named = shared.repeat(read(), ANONYMOUS, Identity("me"))
    assert named.read is first.read and named.identity == Identity("me")
    assert named is not first and first.identity is None
    token = Credentials(Claims(sub="alice", info={"name": "A"}))
    assert shared.repeat(read(), token, None).credentials is token
    assert first.credentials is ANONYMOUS
    assert shared.repeat(read(), Credentials(api_key=True), None).credentials.api_key
    monkeypatch.setattr(repeat, "MAX_SHARED", 4)
    kept = [shared.repeat(read(page), ANONYMOUS, None).read for page in range(1, 10)]
    assert [shared.repeat(read(page), ANONYMOUS, None).read for page in range(1, 10)] == kept


@pytest.mark.parametrize("presence", [False, True])
def test_only_a_read_of_one_channel_keeps_its_answer_or_gathers(presence: bool) -> None:
    """A regular poll of one channel keeps its answer when nothing is new; a long poll of
    one channel gathers its pollers, unless presence is on (a parked poller holds it)."""
    server: Any = AServer(presence)
    shared = Shared()

    def repeat(channels: tuple[str, ...] = ("c",), multi: bool = False,
               wait: float | None = None, latest: bool = False) -> Any:
        read = PollRead(server, channels, multi, 100, wait, None, (), True, 0.0, latest=latest)
        return shared.repeat(read, ANONYMOUS, None)

    assert repeat().unchanged is not None and repeat().gathering is None
    assert repeat().unchanged is repeat().unchanged  # one per decision, shared
    assert repeat(("d",)).unchanged is not repeat().unchanged
    assert repeat(wait=30.0).unchanged is None
    for other in ({"channels": ("c", "d"), "multi": True}, {"multi": True}, {"latest": True}):
        assert repeat(**other).unchanged is None
        assert repeat(**other, wait=30.0).gathering is None
    assert repeat(wait=0.0).gathering is None  # answered at once: never parks
    if presence:
        assert repeat(wait=30.0).gathering is None
    else:
        assert repeat(wait=30.0).gathering is not None
        assert repeat(wait=30.0).gathering is repeat(wait=30.0).gathering


async def test_a_client_that_never_repeats_makes_shapes_less_often_and_is_caught_again(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache-busting parameter makes every request new: after a few, the connection stops
    shaping each one, and a client that starts repeating is answered again within
    ``SHAPE_EVERY`` requests."""
    cursor = await start_of(server)
    dispatches = Dispatches(server, monkeypatch)
    async with raw(server) as connection:
        for n in range(12):
            assert (await ask(connection, get(server, f"/channels/c?since={cursor}&_={n}"))
                    ).status == 200
        assert len(dispatches) == 12
        same = get(server, f"/channels/c?since={cursor}&_=same")
        for _ in range(SHAPE_EVERY + 2):
            assert (await ask(connection, same)).status == 200
    assert 12 < len(dispatches) <= 12 + SHAPE_EVERY


@pytest.mark.parametrize("where", ["decision", "unchanged"])
async def test_a_failure_while_answering_again_stays_with_its_client(
        server: Server, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, where: str) -> None:
    """A bug in answering a repeated request, a page (``decision``) or nothing new
    (``unchanged``, the answer kept for a decision): that client gets ``500`` and is closed;
    a long poll parked on another connection, an SSE reader and the publisher go on."""
    behind = await start_of(server)
    async with raw(server) as other, raw(server) as failing, http_client(server) as client:
        if where == "decision":
            assert (await client.post("/channels/c", json="before")).status_code == 201
        cursor = await start_of(server)
        other[1].write(get(server, f"/channels/c?since={cursor}&wait=30"))
        await parked(server)
        first = get(server, f"/channels/c?since={behind}")
        assert data_of(await ask(failing, first)) == (["before"] if where == "decision" else [])

        def broken(*args: Any) -> None:
            raise RuntimeError("a bug")

        if where == "decision":
            answer = PollRead.answer

            def broken_poll(read: PollRead, *args: Any) -> None:
                if read.wait is None:
                    broken()
                answer(read, *args)

            monkeypatch.setattr(PollRead, "answer", broken_poll)
        else:
            monkeypatch.setattr(repeat, "new_client_id_ascii", broken)
        refused = await ask(failing, first)  # the same request: answered again, and fails
        assert refused.status == 500
        assert await failing[0].read() == b""  # closed
        async with client.stream("GET", "/channels/c", headers={"Accept": "text/event-stream"},
                                 params={"since": cursor}) as stream:
            assert (await client.post("/channels/c", json="after")).status_code == 201
            lines = stream.aiter_lines()
            async with asyncio.timeout(WITHIN):
                while not (await anext(lines)).startswith("data: {\"channel\""):
                    pass
        assert data_of(await read_response(other[0], WITHIN)) == ["after"]
    assert "answering a repeated request failed" in caplog.text
