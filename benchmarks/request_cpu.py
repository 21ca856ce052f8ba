"""CPU time per poll request in the server's own code, without the network.

Feeds one ``HttpConnection`` the bytes of a repeated poll request (what a
browser or the load generator sends) through a transport that only keeps
what is written, and divides the process's CPU time by the requests answered.
The kernel's share (``recv``/``send`` on loopback, the event loop's ``epoll``)
is left out on purpose: it is the same for every HTTP server and is what
``benchmarks/nchan.py idle-poll`` adds back. Being one process on one core
with no I/O, it is far less sensitive to a loaded machine than a
socket benchmark; run it several times, alternating old and new code::

    .venv/bin/python benchmarks/request_cpu.py              # every case
    .venv/bin/python benchmarks/request_cpu.py --case 304 --requests 200000

Cases: ``304`` (``?since=NEXT`` + ``If-None-Match``: nothing new), ``fresh``
(the same ``304`` request in two versions that differ by a header, sent
alternately: a request that never repeats the one before, as with a
cache-busting parameter, so it is always read in full),
``empty`` (``?since=NEXT`` without it: ``200`` with no message), ``page``
(``?since=`` ten messages back: ``200`` with ten messages), and ``longpoll``:
``--waiters`` connections (1,000) park ``?since=HEAD&wait=30``, a message is
published, every waiter is answered and polls again from the new head; the
figure is CPU per delivered message (the publish, the answer, the next request
parsed and parked), what a long poll's delivery costs without the sockets.
``etag``: as many pollers of a busy channel, each with the ``ETag`` of its last answer
(``?since=NEXT`` and ``If-None-Match: "NEXT"``, as tidings' clients poll): a message is
published, and each poll finds it (``200``, one message), then polls from the new
cursor with the new tag; the figure is CPU per request. ``--connections N`` (the
other cases) has N connections ask in turn instead of one again and again, so that
each finds its objects out of the caches, as ten thousand pollers do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import uvloop

from tidings import Server, Settings
from tidings.server.connection import HttpConnection

CASES = ("304", "empty", "page", "fresh", "longpoll", "etag")


class NullTransport:
    """Enough of an asyncio transport for one HTTP connection; counts what is written."""

    def __init__(self) -> None:
        self.writes = 0
        self.last = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def measure_rounds(case: str, requests: int, clients: int) -> dict[str, object]:
    """CPU per request of ``clients`` connections of one channel, one message at a time:
    ``longpoll``, each parked (``?since=HEAD&wait=30``) and answered by the message;
    ``etag``, each polling after the message with the tag of its last answer."""
    async with Server(Settings(host="127.0.0.1", port=0)) as server:
        head = (await server.broker.publish("bench", b'{"n":0}')).id
        conns = []
        for _ in range(clients):
            transport = NullTransport()
            conn = HttpConnection(server)
            conn.connection_made(transport)  # type: ignore[arg-type]
            conns.append((conn, transport))

        def ask(request: bytes) -> None:
            for conn, _ in conns:
                conn.data_received(request)

        def round_trip(cursor: str) -> str:
            if case == "longpoll":
                ask(f"GET /channels/bench?since={cursor}&wait=30 HTTP/1.1\r\n"
                    f"Host: 127.0.0.1:8000\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n".encode())
                return server.broker.publish_nowait("bench", b'{"n":1}').id
            following = server.broker.publish_nowait("bench", b'{"n":1}').id
            ask(f"GET /channels/bench?since={cursor} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
                f'User-Agent: bench\r\nAccept: */*\r\nIf-None-Match: "{cursor}"\r\n\r\n'.encode())
            return following

        for _ in range(20):  # warm up
            head = round_trip(head)
        rounds = max(1, requests // clients)
        before = sum(t.writes for _, t in conns)
        started = time.process_time()
        for _ in range(rounds):
            head = round_trip(head)
        cpu = time.process_time() - started
        answered = sum(t.writes for _, t in conns) - before
        assert answered == rounds * clients, (answered, conns[0][1].last[:300])
        assert conns[0][1].last.startswith(b"HTTP/1.1 200"), conns[0][1].last[:300]
        return {"case": case, "requests": answered,
                "us_per_request": round(1e6 * cpu / answered, 3)}


async def measure(case: str, requests: int, connections: int = 1) -> dict[str, object]:
    """CPU per request of one connection asking again and again, or of ``connections``
    asking in turn (their objects out of the caches by the time each asks again)."""
    async with Server(Settings(host="127.0.0.1", port=0)) as server:
        for n in range(20):
            await server.broker.publish("bench", json.dumps({"n": n}).encode())
        others, transports = [], []
        for _ in range(connections - 1):
            other = HttpConnection(server)
            transports.append(NullTransport())
            other.connection_made(transports[-1])  # type: ignore[arg-type]
            others.append(other)
        transport = NullTransport()
        conn = HttpConnection(server)
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(b"GET /channels/bench HTTP/1.1\r\nHost: x\r\n\r\n")
        body = transport.last.split(b"\r\n\r\n", 1)[1]
        cursor = json.loads(body)["next"]
        since = cursor
        if case == "page":
            epoch, seq = cursor.rsplit("-", 1)
            since = f"{epoch}-{int(seq) - 10}"
        extra = f'If-None-Match: "{cursor}"\r\n' if case in ("304", "fresh") else ""
        versions = [(f"GET /channels/bench?since={since} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
                     f"User-Agent: bench\r\nAccept: */*\r\n{extra}{other}\r\n").encode()
                    for other in (("", "X-Other: 1\r\n") if case == "fresh" else ("",))]
        expected = b"HTTP/1.1 200" if case in ("empty", "page") else b"HTTP/1.1 304"
        for n in range(1000):  # warm up
            conn.data_received(versions[n % len(versions)])
        assert transport.last.startswith(expected), transport.last[:200]
        everyone = [*others, conn]
        for other in others:
            for n in range(4):
                other.data_received(versions[n % len(versions)])
        transports.append(transport)
        before_writes = sum(t.writes for t in transports)
        rounds = max(1, requests // connections)
        started = time.process_time()
        for n in range(rounds):
            version = versions[n % len(versions)]
            for one in everyone:
                one.data_received(version)
        cpu = time.process_time() - started
        answered = sum(t.writes for t in transports) - before_writes
        requests = rounds * connections
        assert answered == requests and not any(t.closed for t in transports), (
            answered, transport.last[:200])
        assert all(t.last.startswith(expected) for t in transports), transport.last[:200]
        return {"case": case, "requests": requests,
                "us_per_request": round(1e6 * cpu / requests, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--waiters", type=int, default=1000,
                        help="parked long polls in the longpoll case, pollers in the etag case")
    parser.add_argument("--connections", type=int, default=1,
                        help="the other cases: connections asking in turn")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for case in args.case or CASES:
        result = uvloop.run(measure_rounds(case, args.requests, args.waiters)
                            if case in ("longpoll", "etag")
                            else measure(case, args.requests, args.connections))
        print(json.dumps(result) if args.json else
              f"{case:6} {result['us_per_request']} µs/request ({args.requests} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
