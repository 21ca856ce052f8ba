"""The conformance suite against our own server, one test per check; and how it reports.

``TIDINGS_CONFORMANCE_URL=http://host:port pytest tests/conformance`` runs the
checks against that server instead of one started here. ``across_nodes``,
which needs a second node, runs against two nodes on a Redis of the tests' own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import time
from collections.abc import AsyncIterator

import pytest

from tidings import Server, UsageError, cli
from tidings.conformance import CHECKS, Context, run, run_checks, run_one
from tidings.core.log import Retention
from tidings.core.presence import PresencePolicy

UNIT = float(os.environ.get("TIDINGS_TEST_UNIT", "1.0"))
EXTERNAL_URL = os.environ.get("TIDINGS_CONFORMANCE_URL")

#: Small settings for speed: frequent heartbeats, and a short history for the
#: conformance namespace so that the retention check publishes ~200 messages.
FAST = {"heartbeat_interval": 0.3, "namespaces": {"conformance": Retention(200, 3600.0)}}
#: Presence on for the conformance namespace.
PRESENCE = {"namespace_presence": {"conformance": PresencePolicy(True, 30.0)}}


#: The checks that need one server; ``across_nodes`` needs two (see the tests after these).
ONE_SERVER_CHECKS = [name for name in CHECKS if name != "across_nodes"]


@pytest.mark.parametrize("name", ONE_SERVER_CHECKS)
async def test_check(make_server, name: str) -> None:
    if EXTERNAL_URL:
        context = Context.create(EXTERNAL_URL, timeout=10 * UNIT)
    else:
        server = await make_server(**FAST, **PRESENCE)
        context = Context.create(server.url, timeout=10 * UNIT, heartbeat_timeout=3 * UNIT)
    assert await run_one(await context.discover(), name) == ("PASS", "")


async def test_the_presence_check_is_skipped_where_presence_is_off(make_server) -> None:
    server = await make_server(**FAST)
    context = Context.create(server.url, timeout=10 * UNIT)
    outcome, reason = await run_one(await context.discover(), "presence")
    assert (outcome, reason.split(" (")[0]) == (
        "SKIP", "presence is off for the conformance namespace")


async def test_every_check_passes_on_the_redis_broker(make_server, redis_url: str) -> None:
    """The protocol holds, unchanged, on nodes whose channel logs live in Redis."""
    server = await make_server(broker=redis_url, **FAST, **PRESENCE)
    other = await make_server(broker=redis_url, **FAST, **PRESENCE)
    out = io.StringIO()
    assert await run(server.url, out=out, heartbeat_timeout=3 * UNIT,
                     nodes=[other.url]) is True, out.getvalue()
    assert report_lines(out)[-1] == f"{len(CHECKS)} passed, 0 failed"


def report_lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


async def test_run_prints_one_line_per_check_and_the_totals(make_server) -> None:
    # A deployment that allows browsers of another origin only fails the CORS check.
    server = await make_server(cors_origins=("https://elsewhere.example",))
    out = io.StringIO()
    assert await run(server.url, only=["etag_304", "cors"], out=out) is False
    passed, failed, totals = report_lines(out)
    assert re.fullmatch(r"PASS etag_304 \(\d+\.\d s\)", passed)
    assert failed.startswith("FAIL cors: a publish: Access-Control-Allow-Origin is None")
    assert totals == "1 passed, 1 failed"

    out = io.StringIO()
    assert await run(server.url, only=["etag_304"], out=out) is True
    assert report_lines(out)[-1] == "1 passed, 0 failed"


@contextlib.asynccontextmanager
async def fake_server(answer: bytes | None) -> AsyncIterator[str]:
    """A server that answers every request with ``answer``, or never answers (``None``)."""
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections[task] = writer
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if answer is not None:
                    writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            connections.pop(task, None)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in list(connections.values()):
            writer.transport.abort()
        async with asyncio.timeout(5 * UNIT):
            await asyncio.gather(*connections, return_exceptions=True)
            await server.wait_closed()


@pytest.fixture
async def broken_url() -> AsyncIterator[str]:
    """Answers everything with 200 and an empty JSON object: nothing a tidings server says."""
    async with fake_server(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 2\r\n\r\n{}") as url:
        yield url


@pytest.fixture
async def silent_url() -> AsyncIterator[str]:
    async with fake_server(None) as url:
        yield url


async def test_every_check_fails_against_a_broken_server(broken_url: str) -> None:
    out = io.StringIO()
    async with fake_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as other:
        context = Context.create(broken_url, timeout=2 * UNIT, heartbeat_timeout=2 * UNIT,
                                 nodes=[other])
        async with asyncio.timeout(30 * UNIT):
            assert await run_checks(context, out=out) is False
    *lines, totals = report_lines(out)
    assert totals == f"0 passed, {len(CHECKS)} failed"
    assert [line.split(":")[0] for line in lines] == [f"FAIL {name}" for name in CHECKS]
    assert all(len(line.split(": ", 1)[1]) > 10 for line in lines), lines


async def test_a_silent_server_fails_each_check_within_its_step_timeout(silent_url: str) -> None:
    out = io.StringIO()
    context = Context.create(silent_url, timeout=0.5 * UNIT, heartbeat_timeout=0.5 * UNIT)
    started = time.monotonic()
    names = ["publish_and_receive", "heartbeats", "slow_consumer", "bad_input"]
    assert await run_checks(context, only=names, out=out) is False
    assert time.monotonic() - started < len(names) * 2 * UNIT
    *lines, totals = report_lines(out)
    assert totals == f"0 passed, {len(names)} failed"
    assert all(line.startswith("FAIL ") for line in lines), lines


async def test_usage_errors() -> None:
    with pytest.raises(UsageError, match="no check named nope"):
        await run("http://127.0.0.1:9", only=["nope"], out=io.StringIO())
    with pytest.raises(UsageError, match="http"):
        await run("ftp://example.com", out=io.StringIO())


async def test_the_cli_exit_code_says_whether_every_check_passed(make_server) -> None:
    server: Server = await make_server()
    url = server.url
    assert await asyncio.to_thread(cli.main, ["conformance", url, "--only", "etag_304"]) == 0
    restricted = await make_server(cors_origins=("https://elsewhere.example",))
    assert await asyncio.to_thread(cli.main, ["conformance", restricted.url,
                                              "--only", "cors"]) == 1


async def test_techniques_the_server_turned_off_are_skipped_and_refused(make_server) -> None:
    server = await make_server(transports=("longpoll",))
    out = io.StringIO()
    names = ["switch_technique", "heartbeats", "bad_input", "etag_304"]
    assert await run(server.url, only=names, heartbeat_timeout=2 * UNIT, out=out) is True
    switch, heartbeats, bad_input, etag, totals = report_lines(out)
    assert switch.startswith("PASS switch_technique")
    assert heartbeats == "SKIP heartbeats: the server does not serve sse or websocket"
    assert bad_input.startswith("PASS bad_input")  # which checks the 403 transport_disabled
    assert etag == "SKIP etag_304: the server does not serve poll"
    assert totals == "2 passed, 0 failed"


# Several nodes: across_nodes --------------------------------------------------------


async def test_across_nodes_passes_on_two_nodes_of_one_redis(make_server,
                                                             redis_url: str) -> None:
    a = await make_server(broker=redis_url)
    b = await make_server(broker=redis_url)
    out = io.StringIO()
    started = time.monotonic()
    assert await run(a.url, only=["across_nodes"], nodes=[b.url], out=out) is True, \
        out.getvalue()
    passed, totals = report_lines(out)
    assert re.fullmatch(r"PASS across_nodes \(\d+\.\d s\)", passed)
    assert totals == "1 passed, 0 failed"
    assert time.monotonic() - started < 10 * UNIT  # a few seconds on a local pair


async def test_across_nodes_fails_on_two_nodes_that_share_nothing(make_server) -> None:
    """Each node with its own memory broker: two logs, not one, and the check says so."""
    a = await make_server()
    b = await make_server()
    out = io.StringIO()
    context = Context.create(a.url, timeout=2 * UNIT, nodes=[b.url])
    assert await run_checks(context, only=["across_nodes"], out=out) is False
    failed, totals = report_lines(out)
    # The first message is published on A, the second on B, in a log of B's own.
    assert re.fullmatch(
        rf"FAIL across_nodes: publishing on {b.url} answered \w+-1 after {a.url} answered "
        rf"\w+-1: the nodes do not add to one log \({a.url}, {b.url} keep channels in "
        r"memory: nodes share channels only through one broker, such as Redis\)", failed), failed
    assert totals == "0 passed, 1 failed"


async def test_across_nodes_fails_when_the_nodes_serve_different_techniques(
        make_server, redis_url: str) -> None:
    a = await make_server(broker=redis_url)
    b = await make_server(broker=redis_url, transports=("longpoll", "poll"))
    out = io.StringIO()
    assert await run(a.url, only=["across_nodes"], nodes=[b.url], out=out) is False
    assert report_lines(out)[0] == (
        f"FAIL across_nodes: {b.url} serves longpoll, poll but {a.url} serves websocket, "
        "sse, longpoll, poll: a client that lands on another node would be refused")


async def test_across_nodes_is_skipped_without_another_node(make_server) -> None:
    server = await make_server()
    out = io.StringIO()
    assert await run(server.url, only=["across_nodes"], out=out) is True
    assert report_lines(out) == [
        "SKIP across_nodes: give the URL of another node with --node to check a deployment "
        "of several nodes",
        "0 passed, 0 failed",
    ]


async def test_node_urls_are_checked() -> None:
    with pytest.raises(UsageError, match="a node URL must be http"):
        Context.create("http://127.0.0.1:9", nodes=["127.0.0.1:10"])
    with pytest.raises(UsageError, match="given twice"):
        Context.create("http://127.0.0.1:9", nodes=["http://127.0.0.1:9/"])
    with pytest.raises(UsageError, match="given twice"):
        Context.create("http://127.0.0.1:9", nodes=["http://127.0.0.1:10", "http://127.0.0.1:10"])
    context = Context.create("http://127.0.0.1:9/", nodes=["http://127.0.0.1:10/"])
    assert (context.url, context.nodes) == ("http://127.0.0.1:9", ("http://127.0.0.1:10",))


async def test_the_cli_passes_each_node_to_the_check(make_server) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["conformance", "http://a:1", "--node", "http://b:2",
                              "--node", "http://c:3"])
    assert args.nodes == ["http://b:2", "http://c:3"]
    assert parser.parse_args(["conformance", "http://a:1"]).nodes == []
    # Without --node the check is skipped (exit 0); with it, two unrelated nodes fail it.
    a, b = await make_server(), await make_server()
    only = ["--only", "across_nodes"]
    assert await asyncio.to_thread(cli.main, ["conformance", a.url, *only]) == 0
    assert await asyncio.to_thread(cli.main, ["conformance", a.url, "--node", b.url,
                                              *only]) == 1
    assert await asyncio.to_thread(cli.main, ["conformance", a.url, "--node", "nope",
                                              *only]) == 2
