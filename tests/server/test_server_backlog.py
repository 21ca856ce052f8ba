"""Backlogs: pulled from the log as the socket drains, and cursors that claim only what was sent."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from websockets.asyncio.client import connect

from conftest import until
from tidings import Server
from tidings.core.log import Retention
from tidings.testing import UNIT, http_client, open_sse, recv_json, ws_url

# An id: may only claim what the client has been told ----------------------------------------


async def read_events(client: Any, path: str, last_event_id: str,
                      messages: int) -> tuple[str, list[Any]]:
    """Open a stream at ``last_event_id``; return its opening id and events up to ``messages``."""
    events = []
    async with open_sse(client, path, headers={"Last-Event-ID": last_event_id}) as reader:
        opening = await reader.next_block()
        assert opening.id is not None
        while sum(event.is_message for event in events) < messages:
            events.append(await reader.next_event())
    return opening.id, events


async def test_a_multi_channel_stream_dropped_mid_backlog_still_hears_of_the_gap(
        make_server: Any) -> None:
    server: Server = await make_server(namespaces={"small": Retention(size=5)})
    big = [(await server.broker.publish("big:1", b"%d" % n)).id for n in range(300)]
    small = [(await server.broker.publish("small:1", b"%d" % n)).id for n in range(10)]
    path = "/subscribe?channel=big:1&channel=small:1"
    cursor = f"big:1={big[0]},small:1={small[1]}"
    retained = 299 + 5
    async with http_client(server) as client:
        opening, full = await read_events(client, path, cursor, retained)
        assert [e.json()["channel"] for e in full if e.event == "gap"] == ["small:1"]
        # A client that drops after any event resumes from the last id it saw, and between
        # the two connections hears of the gap once and gets every message once.
        for cut in (0, 1, 2, 20, 150, len(full) - 1):
            seen = full[:cut]
            last_id = seen[-1].id if seen else opening
            assert last_id is not None
            have = sum(event.is_message for event in seen)
            _, rest = await read_events(client, path, last_id, retained - have)
            together = seen + rest
            gaps = [e.json()["channel"] for e in together if e.event == "gap"]
            assert gaps == ["small:1"], (cut, gaps)
            ids = [e.json()["id"] for e in together if e.is_message]
            assert sorted(ids) == sorted(big[1:] + small[5:]), cut


async def test_a_single_channel_opening_claims_no_more_than_the_cursor(server: Server) -> None:
    """Before the gap event is sent, the stream's id is the client's own cursor."""
    first = (await server.broker.publish("c", b"1")).id
    epoch = first.split("-")[0]
    stale = ("a" if epoch[0] != "a" else "b") + epoch[1:] + "-3"  # another epoch
    async with http_client(server) as client:
        opening, events = await read_events(client, "/channels/c", stale, 1)
    assert opening == stale
    assert events[0].event == "gap" and events[0].id == f"{epoch}-0"
    assert events[1].id == first


# One client cannot pin the retained history in memory ----------------------------------------


def quiet_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so the server's writes pile up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_readers_that_never_read_hold_at_most_their_limit(make_server: Any) -> None:
    limit = 64 * 1024
    server: Server = await make_server(output_buffer_limit=limit,
                                       slow_consumer_timeout=1 * UNIT)
    big = b'"' + b"x" * 10_000 + b'"'
    for _ in range(1000):
        await server.broker.publish("h", big)
    request = (b"GET /channels/h?since=0 HTTP/1.1\r\nHost: x\r\n"
               b"Accept: text/event-stream\r\n\r\n")
    quiet = []
    for _ in range(40):
        sock = quiet_socket(server.port)
        sock.send(request)
        quiet.append(sock)
    try:
        async with http_client(server) as client:
            # A client that reads gets the whole backlog, in order, beside them.
            async with open_sse(client, "/channels/h", params={"since": "0"}) as reader:
                events = await reader.message_objects(1000, within=30 * UNIT)
            assert [int(e["id"].split("-")[1]) for e in events] == list(range(1, 1001))
        await until(lambda: server.statistics()["streams"] == 40)
        stats = server.statistics()
        assert isinstance(stats["buffered_bytes"], int)
        # Each holds at most its limit and one message, not the 10 MB it asked for.
        assert stats["buffered_bytes"] <= 40 * (limit + len(big) + 1024), stats
        # Making no progress, each is cut off as a slow consumer, and told why.
        await until(lambda: server.statistics()["streams"] == 0, within=10 * UNIT)
        assert server.stats["slow_consumers"] == 40
        loop = asyncio.get_running_loop()
        received = bytearray()
        async with asyncio.timeout(10 * UNIT):
            while chunk := await loop.sock_recv(quiet[0], 65536):
                received += chunk
        assert b'event: close\ndata: {"error":"slow_consumer"' in received
    finally:
        for sock in quiet:
            sock.close()


@pytest.mark.parametrize("technique", ["sse", "websocket"])
async def test_a_slow_but_steady_reader_gets_its_whole_backlog(make_server: Any,
                                                              technique: str) -> None:
    """Progress is what counts: a reader slower than the timeout per byte is not cut off."""

    server: Server = await make_server(output_buffer_limit=32 * 1024,
                                       slow_consumer_timeout=0.5 * UNIT)
    for n in range(300):
        await server.broker.publish("s", b'"%s"' % (b"y" * 1000 + str(n).encode()))
    got = []
    if technique == "sse":
        async with http_client(server) as client, \
                open_sse(client, "/channels/s", params={"since": "0"}) as reader:
            while len(got) < 300:
                got += await reader.message_objects(10, within=5 * UNIT)
                await asyncio.sleep(0.01 * UNIT)  # a slow reader
    else:
        async with connect(ws_url(server, "/channels/s?since=0"), max_queue=1) as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            while len(got) < 300:
                got.append(await recv_json(ws))
                if len(got) % 10 == 0:
                    await asyncio.sleep(0.01 * UNIT)
    assert [m["data"][-3:].lstrip("y") for m in got] == [str(n) for n in range(300)]
    assert server.stats["slow_consumers"] == 0
