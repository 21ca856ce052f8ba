"""The fast path of a repeated poll (server/repeat.py) answers exactly as the full path does.

Hypothesis writes short programs: messages published, and polls and long polls written byte
for byte on raw keep-alive connections, each most often its connection's previous request
again with another ``since`` (or the same one), with what the fast path must notice or carry
over: ``limit``, ``client``, ``If-None-Match``, ``Origin``, other headers, ``wait``, two
requests in one write, one request in two writes, a request behind a parked long poll.
Every program runs on two servers with the same settings: one as usual, and one with the
access log on, which never offers the fast path (test_server_repeat.py,
``test_not_offered_with_the_access_log``). Their answers must be the same, line for line,
but for what differs between any two servers: the epochs of message ids, the time of a
message, and a client id the client did not choose.

The fast server runs each program twice over: with the very request again answered in C
(server/speedups.c, as built), and with C off (the Python path alone, as where it is not
built). With C on, C must have answered some requests.

Hypothesis drives synchronous functions: it runs in a thread of its own, and runs each
program in the test's event loop, where the servers are.

Two differences it found have a test of their own at the end: ``Expect: 100-continue``
on a request without content, and a ``since`` long enough to take a request whose
``If-None-Match`` follows it past ``max_header_size``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import ServerFactory, until
from tidings import Server
from tidings.server import connection as http_connection
from tidings.server.connection import HttpConnection
from tidings.server.request import Request
from tidings.testing import (
    UNIT,
    RawResponse,
    close_raw,
    http_client,
    open_raw,
    publish,
    read_response,
    request_head,
)

WITHIN = 3 * UNIT
#: The bound of one program on both servers (a few dozen exchanges on the loopback).
PROGRAM_WITHIN = 20 * UNIT
#: A long poll that waits for a message: long enough never to end by itself first.
PARKED_WAIT = "5"
MAX_STEPS = 12
CONNECTIONS = 2
ALLOWED = "https://a.example"
#: Small, so that programs reach them: gaps (history), pages with ``more``, limits refused.
LIMITS: dict[str, Any] = {"history_size": 3, "poll_limit": 2, "max_poll_limit": 4,
                          "cors_origins": (ALLOWED,)}
#: An epoch no server uses (a cursor from another life of the log).
FOREIGN = "zzzzzzzz"
_POSITION = re.compile(r"\b([a-z0-9]{8})-(\d+)\b")

Raw = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# programs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """A ``GET /channels/NAME``, each part a choice resolved when the program runs."""

    channel: int  #: 0 or 1: the program's two channels
    since: str  #: which ``since`` (see :meth:`Run.since_params`)
    pick: int  #: which of the cursors the channel has shown, for ``old``
    order: int  #: where ``since`` goes among the other parameters
    limit: str | None = None
    client: str | None = None
    wait: str | None = None
    tag: str | None = None  #: which ``If-None-Match`` (see :meth:`Run.tag`), if any
    tag_form: tuple[str, str] = ("If-None-Match: ", "")  #: the line around the value
    origin: str | None = None
    extra: tuple[str, ...] = ()
    close: bool = False


@dataclass(frozen=True)
class Publish:
    channel: int
    over_http: bool


@dataclass(frozen=True)
class Send:
    """Polls on one connection: one, two in one write, or one in two writes."""

    connection: int
    polls: tuple[Poll, ...]
    split: int | None = None  #: where one request is cut in two writes


@dataclass(frozen=True)
class Park:
    """Long polls on distinct connections (and a poll pipelined behind the first); once
    each waits (or was answered), ``burst`` messages on each of their channels."""

    polls: tuple[tuple[int, Poll], ...]
    behind: Poll | None = None
    burst: int = 1


Step = Publish | Send | Park


def mostly(common: list[Any], rare: list[Any]) -> st.SearchStrategy[Any]:
    """One of ``common``, or one time in five one of ``rare``."""
    return st.integers(0, 4).flatmap(lambda n: st.sampled_from(rare if n == 4 else common))


#: Most often what a poller sends; at times what the fast path must leave to the full path
#: (a value refused, spelt otherwise than with a cursor's characters, ``since`` twice).
SINCES = mostly(["last", "last", "last", "old", "absent", "zero", "named"],
                ["foreign", "ahead", "encoded", "encoded-lower", "other-channel", "twice",
                 "odd-name", "plus", "zz", "END", "", "%ZZ", "0-0-0", "-1"])

usual_polls = st.builds(
    Poll,
    channel=st.integers(0, 1),
    since=SINCES,
    pick=st.integers(0, 7),
    order=st.integers(0, 3),
    limit=st.sampled_from([None, None, "1", "2"]),
    client=st.sampled_from([None, None, "me", "you"]),
    wait=st.sampled_from([None, None, "0", PARKED_WAIT]),
    tag=st.sampled_from([None, "since", "since", "last"]),
    origin=st.sampled_from([None, None, ALLOWED]),
)
#: What a usual poll may have instead, one at a time: a refused or unusual part.
ODD_PARTS: list[tuple[str, Any]] = [
    *(("limit", value) for value in ("4", "5", "0", "x")),
    *(("client", value) for value in ("a%20b", "")),
    *(("wait", value) for value in ("0.05", "0.0", "-1")),  # (0.05: the wait ends)
    *(("tag", value) for value in ("old", "star", "weak", "list", "other")),
    *(("tag_form", value) for value in (("if-none-match:", ""), ("IF-NONE-MATCH:\t", " "))),
    ("origin", "https://b.example"),
    *(("extra", value) for value in (("X-Extra: 1",), ("Accept: application/json",),
                                     ("Content-Length: 0",), ("Prefer: wait=0",),
                                     ("Expect: 100-continue",),
                                     ("X-Extra: 1", "Cache-Control: no-cache"))),
    ("close", True),
]


@st.composite
def polls_of_their_own(draw: st.DrawFn) -> Poll:
    """A usual poll, or one time in three a poll with one odd part."""
    poll: Poll = draw(usual_polls)
    if draw(st.integers(0, 2)) == 2:
        name, value = draw(st.sampled_from(ODD_PARTS))
        poll = replace(poll, **{name: value})
    return poll


def not_parked(poll: Poll) -> Poll:
    """``poll`` as a request that never waits for a message (none would come)."""
    return replace(poll, wait="0") if poll.wait == PARKED_WAIT else poll


@st.composite
def programs(draw: st.DrawFn) -> list[Step]:
    """Steps whose polls most often repeat their connection's previous poll with another
    ``since`` (or the same): what the fast path answers."""
    steps: list[Step] = []
    previous: dict[int, Poll] = {}

    def poll_on(connection: int) -> Poll:
        # Its connection's previous poll again, or the other connection's (the same
        # decision, shared: server/repeat.py), or a poll of its own.
        choice = draw(st.sampled_from(["again", "again", "again", "other", "own"]))
        before = previous.get(connection if choice == "again" else 1 - connection)
        if before is None or choice == "own":
            poll = draw(polls_of_their_own())
        elif choice == "again":
            poll = replace(before, since=draw(SINCES), pick=draw(st.integers(0, 7)))
        else:
            poll = replace(before, since=draw(SINCES), pick=draw(st.integers(0, 7)),
                           client=draw(st.sampled_from([before.client, None, "me"])))
        previous[connection] = poll
        return poll

    for _ in range(draw(st.integers(2, MAX_STEPS))):
        kind = draw(st.sampled_from(["publish", "poll", "poll", "poll", "park"]))
        if kind == "publish":
            steps.append(Publish(draw(st.integers(0, 1)), draw(st.booleans())))
            continue
        connection = draw(st.integers(0, CONNECTIONS - 1))
        poll = poll_on(connection)
        how = draw(mostly(["one"], ["two", "split", "behind", "burst"]))
        if kind == "park":  # long polls on both connections
            connections = [connection, 1 - connection]
            polls = [poll, poll_on(1 - connection)]
        else:
            connections, polls = [connection], [poll]
        if kind == "park" or poll.wait == PARKED_WAIT:
            parked = tuple((where, replace(what, wait=PARKED_WAIT, close=False))
                           for where, what in zip(connections, polls, strict=True))
            previous.update(parked)
            behind = not_parked(poll_on(connection)) if how == "behind" else None
            steps.append(Park(parked, behind, 2 if how == "burst" else 1))
        elif how == "two":
            steps.append(Send(connection, (poll, not_parked(poll_on(connection)))))
        else:
            steps.append(Send(connection, (poll,),
                              draw(st.integers(1, 200)) if how == "split" else None))
    return steps


#: A poller and a long poller as tidings' clients are (the cursor and ETag they were given
#: sent back), so that every run has the fast path answer polls, 304s and long polls.
POLLERS: list[Step] = [
    Send(0, (Poll(0, "zero", 0, 0, tag="since"),)),
    *[Send(0, (Poll(0, "last", 0, 0, tag="since"),)) for _ in range(3)],  # 304
    Publish(0, over_http=False),
    Send(0, (Poll(0, "old", 0, 0, tag="since"),)),  # from the first cursor: the message
    Send(0, (Poll(0, "last", 0, 0, tag="since"),)),
    *[Park(((1, Poll(0, "last", 0, 0, wait=PARKED_WAIT)),)) for _ in range(3)],
]


# running a program on one server -----------------------------------------------------------------


class Dispatches:
    """Counts the ``GET`` requests that went through the full path (the router) of
    ``server``: one the fast path answers never reaches it."""

    def __init__(self, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gets = 0
        dispatch = server.router.dispatch

        def counting(conn: HttpConnection, request: Request, rest: bytes = b"") -> None:
            if request.method == "GET":
                self.gets += 1
            dispatch(conn, request, rest)

        monkeypatch.setattr(server.router, "dispatch", counting)


#: An answer, made comparable: ``(status line, header lines, body, what followed a
#: Connection: close)``, or ``("closed", bytes)``: the connection closed instead.
Answer = tuple[Any, ...]


@dataclass
class Run:
    """One program on one server: its connections, the cursors it has seen, its answers."""

    server: Server
    http: httpx.AsyncClient
    dispatches: Dispatches
    channels: tuple[str, str]
    connections: dict[int, Raw] = field(default_factory=dict)
    #: Every cursor (a message id, a ``next``) each channel has shown, in order.
    seen: dict[int, list[str]] = field(default_factory=lambda: {0: [], 1: []})
    answers: list[tuple[int, Poll, Answer]] = field(default_factory=list)
    #: Polls answered ``200`` or ``304`` without the router (the fast path), by kind.
    fast: Counter[str] = field(default_factory=Counter)
    published: int = 0

    # the request of a poll

    def last(self, channel: int) -> str:
        seen = self.seen[channel]
        return seen[-1] if seen else "0"

    def since_params(self, poll: Poll) -> list[str]:
        last = self.last(poll.channel)
        seen = self.seen[poll.channel]
        old = seen[poll.pick % len(seen)] if seen else "0"
        value = {
            "last": last, "old": old, "zero": "0", "named": f"{self.channels[poll.channel]}={last}",
            "foreign": f"{FOREIGN}-1", "ahead": ahead_of(last), "other-channel": "x=0",
            "encoded": last.replace("-", "%2D"), "encoded-lower": last.replace("-", "%2d"),
            "plus": "1+2",
        }.get(poll.since, poll.since)
        if poll.since == "absent":
            return []
        if poll.since == "twice":
            return [f"since={old}", f"since={last}"]
        if poll.since == "odd-name":
            return [f"%73ince={last}"]
        return [f"since={value}"]

    def request(self, poll: Poll) -> bytes:
        params = [f"{name}={value}" for name, value in (
            ("limit", poll.limit), ("client", poll.client), ("wait", poll.wait))
            if value is not None]
        since = self.since_params(poll)
        at = poll.order % (len(params) + 1)
        params[at:at] = since
        target = f"/channels/{self.channels[poll.channel]}"
        if params:
            target += "?" + "&".join(params)
        headers: list[str] = []
        if poll.origin is not None:
            headers.append(f"Origin: {poll.origin}")
        if poll.tag is not None:
            before, after = poll.tag_form
            headers.append(f"{before}{self.tag(poll, since)}{after}")
        headers += poll.extra
        if poll.close:
            headers.append("Connection: close")
        return request_head(self.server, "GET", target, *headers)

    def tag(self, poll: Poll, since: list[str]) -> str:
        last = self.last(poll.channel)
        first = self.seen[poll.channel][0] if self.seen[poll.channel] else "0"
        value = since[-1].partition("=")[2] if since else last  # (as sent)
        return {"since": f'"{value}"', "last": f'"{last}"', "old": f'"{first}"', "star": "*",
                "weak": f'W/"{last}"', "list": f'"x", "{last}"', "other": '"x"'}[poll.tag or ""]

    # the steps

    async def step(self, number: int, step: Step) -> None:
        gets = self.dispatches.gets
        if isinstance(step, Publish):
            await self.publish(step.channel, step.over_http)
            return
        if isinstance(step, Send):
            answers = await self.send(number, step)
        else:
            answers = await self.park(number, step)
        answered = [(answer, poll) for answer, poll in answers
                    if answer[0] != "closed" and answer[0][9:12] in ("200", "304")]
        dispatched = self.dispatches.gets - gets
        if dispatched == 0:  # (a 200 or 304 of the full path is always dispatched)
            for answer, poll in answered:
                self.fast[kind_of(answer, poll)] += 1
        elif len(answered) > dispatched:
            self.fast["one of several"] += len(answered) - dispatched

    async def send(self, number: int, step: Send) -> list[tuple[Answer, Poll]]:
        writer = (await self.connection(step.connection))[1]
        data = b"".join(self.request(poll) for poll in step.polls)
        if step.split is None:
            writer.write(data)
        else:
            cut = min(step.split, len(data) - 1)
            writer.write(data[:cut])
            await writer.drain()
            # The first part read on its own, a request begun (never taken for a repeat).
            await until(lambda: any(c._request_begun for c in self.server.registry._connections),
                        WITHIN)
            writer.write(data[cut:])
        return [await self.answer(step.connection, number, poll) for poll in step.polls]

    async def park(self, number: int, step: Park) -> list[tuple[Answer, Poll]]:
        before = waiting(self.server)
        pending = []
        for at, (connection, poll) in enumerate(step.polls):
            writer = (await self.connection(connection))[1]
            data = self.request(poll)
            polls = [poll]
            if at == 0 and step.behind is not None:
                data += self.request(step.behind)
                polls.append(step.behind)
            writer.write(data)
            pending.append(asyncio.ensure_future(self.answers_to(connection, number, polls)))
        try:
            # Each long poll parked, or answered at once (a message there already, an error).
            await until(lambda: waiting(self.server) - before
                        + sum(task.done() for task in pending) >= len(pending), WITHIN)
            for channel in dict.fromkeys(poll.channel for _, poll in step.polls):
                for _ in range(step.burst):
                    await self.publish(channel, over_http=False)
            return [answer for task in pending for answer in await task]
        finally:
            for task in pending:
                task.cancel()

    async def answers_to(self, connection: int, number: int,
                         polls: list[Poll]) -> list[tuple[Answer, Poll]]:
        return [await self.answer(connection, number, poll) for poll in polls]

    async def publish(self, channel: int, over_http: bool) -> None:
        self.published += 1
        name = self.channels[channel]
        if over_http:
            message_id = await publish(self.http, name, self.published)
        else:
            message_id = (await self.server.publish(name, self.published)).id
        self.seen[channel].append(message_id)

    async def connection(self, number: int) -> Raw:
        connection = self.connections.get(number)
        if connection is None:
            connection = self.connections[number] = await open_raw(self.server, within=WITHIN)
        return connection

    async def answer(self, connection: int, number: int, poll: Poll) -> tuple[Answer, Poll]:
        """Read the answer to ``poll`` on ``connection``; keep the cursor it gives."""
        answer: Answer
        if connection not in self.connections:  # closed by the answer before
            answer = ("closed", b"")
        else:
            answer = await self.read(connection)
            body = answer[2] if answer[0] != "closed" else None
            if isinstance(body, dict) and isinstance(body.get("next"), str):
                self.seen[poll.channel].append(body["next"])
        self.answers.append((number, poll, answer))
        return answer, poll

    async def read(self, connection: int) -> Answer:
        reader = self.connections[connection][0]
        async with asyncio.timeout(WITHIN):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                await self.drop(connection)
                return ("closed", exc.partial if isinstance(exc, asyncio.IncompleteReadError)
                        else b"")
            status, *lines = head.decode("latin-1").split("\r\n")[:-2]
            fields = tuple((name.lower(), value.strip())
                           for name, _, value in (line.partition(":") for line in lines))
            length = int(dict(fields).get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            closes = ("connection", "close") in fields
            rest = await reader.read() if closes else None  # then the end of the stream
        if closes:
            await self.drop(connection)
        return (status, fields, json.loads(body) if body else None, rest)

    async def drop(self, number: int) -> None:
        connection = self.connections.pop(number, None)
        if connection is not None:
            await close_raw(connection[1])

    async def aclose(self) -> None:
        for number in list(self.connections):
            await self.drop(number)


def kind_of(answer: Answer, poll: Poll) -> str:
    """What ``answer`` was, to tell which kinds the fast path gave."""
    status, _, body, _ = answer
    kind = ["long poll" if poll.wait not in (None, "0", "0.0") else "poll", status[9:12]]
    kind += [name for name in ("messages", "gap", "more") if body and body.get(name)]
    if poll.client:
        kind.append("client")
    if poll.tag:
        kind.append("tagged" if poll.tag == "since" else "if-none-match")
    return " ".join(kind)


def waiting(server: Server) -> int:
    """The long polls parked on ``server``."""
    count = server.statistics()["long_polls"]
    assert isinstance(count, int)
    return count


def ahead_of(cursor: str) -> str:
    """A cursor past the end of its log (``400``), or ``cursor`` if it is no message id."""
    found = _POSITION.fullmatch(cursor)
    return f"{found[1]}-{int(found[2]) + 5}" if found else cursor


def comparable(run: Run) -> list[tuple[int, Answer]]:
    """The answers of ``run`` without what differs between two servers: each epoch becomes
    a label given in the order epochs first appear, message times go, and so does a client
    id the client did not choose."""
    labels: dict[str, str] = {FOREIGN: FOREIGN}

    def label(found: re.Match[str]) -> str:
        return f"{labels.setdefault(found[1], f'E{len(labels)}')}-{found[2]}"

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            return _POSITION.sub(label, value)
        if isinstance(value, list | tuple):
            return type(value)(plain(item) for item in value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()
                    if not (key == "time" and "id" in value)}
        return value

    answers = []
    for number, poll, answer in run.answers:
        if answer[0] != "closed":
            status, fields, body, rest = answer
            fields = tuple((name, value) for name, value in fields if name != "date" and (
                name != "tidings-client" or poll.client is not None))
            answer = (status, fields, body, rest)
        answers.append((number, plain(answer)))
    return answers


# the property ------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_c", [True, False], ids=["c", "python"])
async def test_the_fast_path_answers_as_the_full_path(
        make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, in_c: bool) -> None:
    answer_again = http_connection.answer_again
    assert answer_again is not None, "the C extension is not built (see setup.py)"
    in_c_answers = 0

    def counting(conn: HttpConnection, data: bytes) -> bool:
        nonlocal in_c_answers
        answered = answer_again(conn, data)
        in_c_answers += answered
        return answered

    monkeypatch.setattr(http_connection, "answer_again", counting if in_c else None)
    fast = await make_server(**LIMITS)
    full = await make_server(access_log=True, **LIMITS)  # every request read in full
    dispatches = {fast: Dispatches(fast, monkeypatch), full: Dispatches(full, monkeypatch)}
    loop = asyncio.get_running_loop()
    taken: Counter[str] = Counter()
    programs_run = 0

    async def run_on(server: Server, http: httpx.AsyncClient, program: list[Step],
                     channels: tuple[str, str]) -> Run:
        run = Run(server, http, dispatches[server], channels)
        try:
            for number, step in enumerate(program):
                await run.step(number, step)
        finally:
            await run.aclose()
        return run

    async with http_client(fast) as to_fast, http_client(full) as to_full:

        async def on_both(program: list[Step]) -> None:
            nonlocal programs_run
            programs_run += 1
            channels = (f"c{programs_run}", f"d{programs_run}")  # fresh logs, same on both
            async with asyncio.timeout(PROGRAM_WITHIN):
                one = await run_on(fast, to_fast, program, channels)
                other = await run_on(full, to_full, program, channels)
            assert not other.fast, "the server with the access log took the fast path"
            taken.update(one.fast)
            for (number, mine), (_, theirs) in zip(comparable(one), comparable(other),
                                                   strict=True):
                assert mine == theirs, f"step {number}: {program[number]}"

        @settings(max_examples=100, deadline=None)  # (each example bounded by PROGRAM_WITHIN)
        @given(program=programs())
        @example(program=POLLERS)
        def check(program: list[Step]) -> None:
            future = asyncio.run_coroutine_threadsafe(on_both(program), loop)
            try:
                future.result(PROGRAM_WITHIN + WITHIN)
            finally:
                future.cancel()

        await asyncio.to_thread(check)
    # Not vacuous: the fast path answered polls (200 and 304) and long polls.
    kinds = " | ".join(f"{kind}: {count}" for kind, count in sorted(taken.items()))
    assert any(kind.startswith("poll 200") for kind in taken), kinds
    assert any(kind.startswith("poll 304") for kind in taken), kinds
    assert any(kind.startswith("long poll 200 messages") for kind in taken), kinds
    assert (in_c_answers > 0) == in_c, in_c_answers


# discrepancies -----------------------------------------------------------------------------------


async def heads_until_final(connection: Raw, data: bytes) -> list[RawResponse]:
    """Write ``data``, then read answers until a final one (any ``1xx`` before it too)."""
    reader, writer = connection
    writer.write(data)
    answers = [await read_response(reader, WITHIN)]
    while answers[-1].status < 200:
        answers.append(await read_response(reader, WITHIN))
    return answers


async def both_servers(make_server: ServerFactory, **changes: Any) -> tuple[Server, Server]:
    """A server as usual, and one with the access log on: the full path only."""
    return await make_server(**changes), await make_server(access_log=True, **changes)


async def test_expect_100_continue_is_answered_alike_on_a_repeat(
        make_server: ServerFactory) -> None:
    answers = {}
    for server in await both_servers(make_server):
        request = request_head(server, "GET", "/channels/c?since=0", "Expect: 100-continue")
        connection = await open_raw(server)
        try:
            answers[server.settings.access_log] = [
                [answer.status for answer in await heads_until_final(connection, request)]
                for _ in range(2)]
        finally:
            await close_raw(connection[1])
    # No interim 100 for a request whose framing says it has no content (RFC 9110,
    # 10.1.1), on either path; the fast path, which never sends one, answered the second.
    assert answers[True] == [[200], [200]]  # the full path
    assert answers[False] == answers[True]


async def test_a_since_that_takes_the_headers_past_max_header_size_is_refused_on_a_repeat(
        make_server: ServerFactory) -> None:
    answers = {}
    for server in await both_servers(make_server, max_header_size=256):
        message = (await server.publish("c", "a")).id
        # A cursor the server reads (``c`` at the message; ``x`` is not read), 252 bytes.
        long = f"c={message}" + ",x=0" * 60
        connection = await open_raw(server)
        try:
            statuses = []
            for since in (message, long):
                request = request_head(server, "GET", f"/channels/c?since={since}",
                                       f'If-None-Match: "{since}"')
                statuses += [answer.status
                             for answer in await heads_until_final(connection, request)]
        finally:
            await close_raw(connection[1])
        answers[server.settings.access_log] = statuses
    # The header fields grow with the value in If-None-Match: the repeat of a tagged
    # request leaves a value that takes them past max_header_size to the full path.
    assert answers[True] == [304, 431]  # the full path
    assert answers[False] == answers[True]
