"""Long polls parked together (server/gathering.py), on real sockets.

Pollers of one channel repeating one long poll come back after each message
with the same cursor and park in one gathering: every message reaches each
of them once and in order, and everything a parked long poll does on its own
(its wait ends, its client leaves, its token expires, the node drains, a bug
while answering it) holds for each of them, and stays with that one.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from test_server_repeat import (
    WITHIN,
    Dispatches,
    Raw,
    _auth_server,
    _token,
    data_of,
    get,
    parked,
    raw,
    start_of,
    until_time,
)

from conftest import ServerFactory, until
from tidings import Server
from tidings.core.cursor import Position, parse_position
from tidings.core.log import Gap
from tidings.core.presence import PresencePolicy
from tidings.server.connection import HttpConnection
from tidings.server.metrics import GAPS
from tidings.testing import http_client, publish, read_response

POLLERS = 12


async def park_all(server: Server, connections: list[Raw], target: str) -> None:
    for connection in connections:
        connection[1].write(get(server, target))
    await parked(server, len(connections))


async def open_many(server: Server, count: int) -> list[Raw]:
    from tidings.testing import open_raw

    return [await open_raw(server) for _ in range(count)]


async def close_all(connections: list[Raw]) -> None:
    from tidings.testing import close_raw

    for _, writer in connections:
        await close_raw(writer)


def gathered(server: Server) -> int:
    """How many long polls wait in gatherings (the rest wait on their own)."""
    repeats = server.router.repeats
    return sum(len(kept.gathering.members) for kept in repeats._kept.values()
               if kept.gathering is not None)


@asynccontextmanager
async def gathered_polls(server: Server, count: int) -> AsyncIterator[tuple[list[Raw], str]]:
    """``count`` connections whose long polls of ``c`` wait together, and the cursor they
    wait at (each asked once on the full path, was answered, and asked again)."""
    cursor = await start_of(server)
    connections = await open_many(server, count)
    try:
        await park_all(server, connections, f"/channels/c?wait=30&since={cursor}")
        async with http_client(server) as publisher:
            head = await publish(publisher, "c", "a")
        for connection in connections:
            assert data_of(await read_response(connection[0], WITHIN)) == ["a"]
        await park_all(server, connections, f"/channels/c?wait=30&since={head}")
        assert gathered(server) == count
        yield connections, head
    finally:
        await close_all(connections)


async def test_every_poller_gets_every_message_once_and_in_order(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    cursor = await start_of(server)
    dispatches = Dispatches(server, monkeypatch)
    connections = await open_many(server, POLLERS)
    cursors = [cursor] * POLLERS
    seen: list[list[Any]] = [[] for _ in connections]
    try:
        async with http_client(server) as publisher:
            for number in range(20):
                for index, connection in enumerate(connections):
                    connection[1].write(get(server, f"/channels/c?wait=30&since={cursors[index]}"))
                await parked(server, POLLERS)
                if number:
                    assert gathered(server) == POLLERS  # all but the first round: together
                    assert server.broker.hub.subscribers("c") == POLLERS
                    assert server.statistics()["long_polls"] == POLLERS
                delivered = server.broker.hub.delivered
                await publish(publisher, "c", number)
                for index, connection in enumerate(connections):
                    answer = await read_response(connection[0], WITHIN)
                    seen[index] += data_of(answer)
                    cursors[index] = json.loads(answer.body)["next"]
                assert server.broker.hub.delivered - delivered == POLLERS  # one per reader
    finally:
        await close_all(connections)
    assert seen == [list(range(20))] * POLLERS
    assert len([r for r in dispatches.requests if r.method == "GET"]) == POLLERS
    # The first round's waiters are still due to be looked at; the gathering once, not
    # each member it answered.
    assert len(server.expiries) <= POLLERS + 1
    assert server.statistics()["long_polls"] == 0
    assert server.broker.hub.subscribers("c") == 0


async def test_a_message_between_an_answer_and_the_next_poll_is_not_missed(
        server: Server) -> None:
    """The gathering is disarmed once it answered: a poller that comes back after another
    message reads it from the log, and one that comes back first waits for the next."""
    cursor = await start_of(server)
    async with raw(server) as slow, raw(server) as quick, http_client(server) as publisher:
        for connection in (slow, quick):  # (the first request of each: the full path)
            connection[1].write(get(server, f"/channels/c?wait=30&since={cursor}"))
        await parked(server, 2)
        first = await publish(publisher, "c", "one")
        for connection in (slow, quick):
            assert data_of(await read_response(connection[0], WITHIN)) == ["one"]
        await park_all(server, [slow, quick], f"/channels/c?wait=30&since={first}")
        await publish(publisher, "c", "two")
        answers = [json.loads((await read_response(c[0], WITHIN)).body) for c in (slow, quick)]
        assert [[m["data"] for m in a["messages"]] for a in answers] == [["two"], ["two"]]
        second = answers[0]["next"]
        quick[1].write(get(server, f"/channels/c?wait=30&since={second}"))
        await parked(server, 1)
        await publish(publisher, "c", "three")
        assert data_of(await read_response(quick[0], WITHIN)) == ["three"]
        # the slow one comes back only now, from "two": "three" is read from the log
        slow[1].write(get(server, f"/channels/c?wait=30&since={second}"))
        assert data_of(await read_response(slow[0], WITHIN)) == ["three"]


async def test_each_wait_ends_on_its_own(server: Server) -> None:
    """Members that parked a second apart are answered each when its own wait ends, with no
    message and the cursor they waited at; a poller of another decision waits on."""
    cursor = await start_of(server)
    async with raw(server) as early, raw(server) as late, raw(server) as patient:
        waits = ((early, 2), (late, 2), (patient, 30))
        for connection, wait in waits:  # (the first request of each: the full path)
            connection[1].write(get(server, f"/channels/c?wait={wait}&since={cursor}"))
        async with http_client(server) as publisher:
            await parked(server, 3)
            head = await publish(publisher, "c", "x")
        for connection, _ in waits:
            assert data_of(await read_response(connection[0], WITHIN)) == ["x"]
        patient[1].write(get(server, f"/channels/c?wait=30&since={head}"))
        early[1].write(get(server, f"/channels/c?wait=2&since={head}"))
        await parked(server, 2)
        joined = time.monotonic()
        await asyncio.sleep(1)  # (not waiting for anything: the second member parks later)
        late[1].write(get(server, f"/channels/c?wait=2&since={head}"))
        await parked(server, 3)
        assert gathered(server) == 3
        answer = json.loads((await read_response(early[0], 3 * WITHIN)).body)
        assert answer == {"messages": [], "next": head}
        assert time.monotonic() - joined >= 2 - 0.01
        assert server.statistics()["long_polls"] == 2  # the late one waits on
        answer = json.loads((await read_response(late[0], 3 * WITHIN)).body)
        assert answer == {"messages": [], "next": head}
        assert time.monotonic() - joined >= 3 - 0.01
        assert server.statistics()["long_polls"] == 1  # the patient one
        async with http_client(server) as publisher:
            await publish(publisher, "c", "y")
        assert data_of(await read_response(patient[0], WITHIN)) == ["y"]


async def test_members_that_chose_their_client_id_are_answered_with_it(server: Server) -> None:
    """Named members get their own id in the answer to a message and when their wait ends;
    an unnamed one beside them a fresh id each time."""
    cursor = await start_of(server)
    names = ("alice", "bob", None)
    async with raw(server) as one, raw(server) as two, raw(server) as three:
        connections = (one, two, three)

        def target(since: str, name: str | None) -> str:
            return f"/channels/c?wait=1&since={since}" + (f"&client={name}" if name else "")

        for connection, name in zip(connections, names, strict=True):
            connection[1].write(get(server, target(cursor, name)))
        await parked(server, 3)
        async with http_client(server) as publisher:
            head = await publish(publisher, "c", "x")
        seen: list[str] = []
        for connection, name in zip(connections, names, strict=True):
            answer = await read_response(connection[0], WITHIN)
            assert data_of(answer) == ["x"]
            seen.append(answer.headers["tidings-client"])
            connection[1].write(get(server, target(head, name)))
        await parked(server, 3)
        assert gathered(server) == 3
        for connection in connections:
            answer = await read_response(connection[0], 3 * WITHIN)  # (its wait ends)
            assert json.loads(answer.body) == {"messages": [], "next": head}
            seen.append(answer.headers["tidings-client"])
    assert seen[:2] == ["alice", "bob"] and seen[3:5] == ["alice", "bob"]
    assert seen[2] != seen[5] and seen[2] not in ("alice", "bob")


async def test_the_wait_of_an_answered_poll_does_not_end_the_next_one(server: Server) -> None:
    """A member answered by a message parks again at once; the end of its first wait,
    still due, must not answer the second."""
    cursor = await start_of(server)
    async with raw(server) as connection, http_client(server) as publisher:
        connection[1].write(get(server, f"/channels/c?wait=2&since={cursor}"))
        await parked(server)
        head = await publish(publisher, "c", "a")
        assert data_of(await read_response(connection[0], WITHIN)) == ["a"]
        connection[1].write(get(server, f"/channels/c?wait=2&since={head}"))
        await parked(server)
        joined = time.monotonic()
        await asyncio.sleep(1)  # (not waiting for anything: the first wait is half over)
        head = await publish(publisher, "c", "b")
        assert data_of(await read_response(connection[0], WITHIN)) == ["b"]
        assert gathered(server) == 0
        connection[1].write(get(server, f"/channels/c?wait=2&since={head}"))
        await parked(server)
        rejoined = time.monotonic()
        assert gathered(server) == 1
        answer = json.loads((await read_response(connection[0], 3 * WITHIN)).body)
        assert answer == {"messages": [], "next": head}
        assert time.monotonic() - rejoined >= 2 - 0.01  # its own wait, not the one before
        assert time.monotonic() - joined >= 3 - 0.01


async def test_a_poller_that_leaves_is_forgotten_and_the_others_are_answered(
        server: Server) -> None:
    async with gathered_polls(server, 3) as (connections, _), http_client(server) as publisher:
        leaving = connections[-1]
        leaving[1].close()
        await until(lambda: server.statistics()["long_polls"] == 2, WITHIN)
        assert gathered(server) == 2 and server.broker.hub.subscribers("c") == 2
        await publish(publisher, "c", "b")
        for connection in connections[:-1]:
            assert data_of(await read_response(connection[0], WITHIN)) == ["b"]


async def test_a_gap_answers_every_member_and_is_counted_for_each(server: Server) -> None:
    """A log that lost messages under its readers (a replica reset): each member is told."""
    async with gathered_polls(server, 3) as (connections, head):
        start = parse_position(head)
        resume = Position(start.epoch, start.seq + 5)
        before = server.stats[GAPS + "expired"]
        server.broker.hub.skip(Gap("c", start, resume, "expired", 5))
        for connection in connections:
            answer = json.loads((await read_response(connection[0], WITHIN)).body)
            assert answer["gap"] is True and answer["messages"] == [], answer
            assert answer["gaps"][0]["missed"] == 5 and answer["next"] == str(resume)
        assert server.stats[GAPS + "expired"] - before == 3


async def test_a_token_that_expires_while_gathered_gets_401(
        make_server: ServerFactory) -> None:
    server = await _auth_server(make_server)
    exp = math.floor(time.time()) + 3
    bearer = f"Authorization: Bearer {_token(exp)}"
    connections = await open_many(server, 2)
    try:
        for connection in connections:
            connection[1].write(get(server, "/channels/chat:a?wait=30&since=0", bearer))
        await parked(server, 2)
        head = (await server.publish("chat:a", "a")).id
        for connection in connections:
            assert data_of(await read_response(connection[0], WITHIN)) == ["a"]
        for connection in connections:
            connection[1].write(get(server, f"/channels/chat:a?wait=30&since={head}", bearer))
        await parked(server, 2)
        assert gathered(server) == 2
        await until_time(exp)
        for connection in connections:
            answer = await read_response(connection[0], 3 * WITHIN)
            assert (answer.status, json.loads(answer.body)["error"]) == (401, "token_expired")
        assert server.statistics()["long_polls"] == 0
    finally:
        await close_all(connections)


async def test_drain_answers_every_member(server: Server) -> None:
    async with gathered_polls(server, 3) as (connections, _):
        draining = asyncio.create_task(server.drain(0))
        for connection in connections:
            assert data_of(await read_response(connection[0], WITHIN)) == []
            async with asyncio.timeout(WITHIN):
                assert await connection[0].read() == b""  # closed after the answer
        async with asyncio.timeout(WITHIN):
            await draining


async def test_a_failure_while_answering_one_member_stays_with_it(
        server: Server, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug while answering one member: it gets ``500`` and is closed; the other members
    (the same decision, their own client ids), an SSE reader and the publisher go on."""
    cursor = await start_of(server)
    connections = await open_many(server, 3)
    try:
        for index, connection in enumerate(connections):
            connection[1].write(get(server, f"/channels/c?wait=30&since={cursor}&client=p{index}"))
        await parked(server, 3)
        async with http_client(server) as client:
            head = await publish(client, "c", "a")
            for index, connection in enumerate(connections):
                assert data_of(await read_response(connection[0], WITHIN)) == ["a"]
                connection[1].write(
                    get(server, f"/channels/c?wait=30&since={head}&client=p{index}"))
            await parked(server, 3)
            assert gathered(server) == 3
            respond = HttpConnection.respond

            def broken(conn: HttpConnection, data: bytes, keep_alive: bool = True) -> None:
                if b"\r\nTidings-Client: p0\r\n" in data:
                    raise RuntimeError("a bug")
                respond(conn, data, keep_alive)

            monkeypatch.setattr(HttpConnection, "respond", broken)
            async with client.stream("GET", "/channels/c", params={"since": head},
                                     headers={"Accept": "text/event-stream"}) as stream:
                assert (await client.post("/channels/c", json="b")).status_code == 201
                lines = stream.aiter_lines()
                async with asyncio.timeout(WITHIN):
                    while not (await anext(lines)).startswith('data: {"channel"'):
                        pass
            failed, *others = connections
            assert (await read_response(failed[0], WITHIN)).status == 500
            async with asyncio.timeout(WITHIN):
                assert await failed[0].read() == b""
            for connection in others:
                assert data_of(await read_response(connection[0], WITHIN)) == ["b"]
    finally:
        await close_all(connections)
    assert "answering a long poll failed" in caplog.text


async def test_no_gathering_on_a_channel_with_presence(make_server: ServerFactory) -> None:
    """A parked poller holds its channel's presence on its own: with presence on for one
    namespace, its long polls park one by one, and the other channels' gather."""
    server = await make_server(namespace_presence={"live": PresencePolicy(True, 30.0)})
    for channel, together in (("live:a", 0), ("c", 2)):
        async with http_client(server) as client:
            cursor = str((await client.get(f"/channels/{channel}")).json()["next"])
        connections = await open_many(server, 2)
        try:
            await park_all(server, connections, f"/channels/{channel}?wait=30&since={cursor}")
            head = (await server.publish(channel, "a")).id
            for connection in connections:
                assert data_of(await read_response(connection[0], WITHIN)) == ["a"]
            await park_all(server, connections, f"/channels/{channel}?wait=30&since={head}")
            assert gathered(server) == together, channel
            await server.publish(channel, "b")
            for connection in connections:
                assert data_of(await read_response(connection[0], WITHIN)) == ["b"]
        finally:
            await close_all(connections)
