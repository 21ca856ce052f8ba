"""The live status page (``/admin/status``) of ``tidings serve --workers N``: the node's total.

The merge first (no I/O), then servers sharing a directory as workers do, in
this process, then real ``tidings serve --workers 2`` processes over Redis with
clients we did not write (httpx, ``websockets``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_metrics_workers import readers_spread_over_two_workers

from conftest import UNIT
from tidings.server import status as admin_status
from tidings.server import workermetrics
from tidings.server.status import BUSIEST, merge_parts
from tidings.testing import http_client, open_sse, publish
from workerkit import worker_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))
from test_workers import worker_of


def part(*, sse: int = 0, published: int = 0, busiest: dict[str, int] | None = None,
         rates: list[float] | None = None, broker: str = "ok", state: str = "ok",
         bridges: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    rates = rates or []
    return {"time": 1, "status": state, "connections": {"http": 1, "sse": sse, "websocket": 0},
            "long_polls": 1, "published": published,
            "rates": {"interval": 5.0, "times": [float(i) for i in range(len(rates))],
                      "published": rates, "delivered": {"sse": rates}},
            "busiest": [{"channel": c, "readers": n} for c, n in (busiest or {}).items()],
            "broker": {"kind": "redis", "status": broker}, "bridges": bridges or [],
            "delivered": {"sse": published, "websocket": 0}}


def test_merge_sums_counts_rates_and_busiest_per_channel() -> None:
    merged = merge_parts([part(sse=2, published=3, busiest={"a": 5, "b": 4}, rates=[1, 2, 3]),
                          part(sse=1, published=4, busiest={"b": 3, "c": 6}, rates=[10, 20])],
                         unreachable=1)
    assert merged["connections"] == {"http": 2, "sse": 3, "websocket": 0}
    assert merged["long_polls"] == 2
    assert merged["published"] == 7
    assert merged["delivered"] == {"sse": 7, "websocket": 0}
    # b is busiest only once summed over the workers
    assert merged["busiest"] == [{"channel": "b", "readers": 7}, {"channel": "c", "readers": 6},
                                 {"channel": "a", "readers": 5}]
    # the latest samples line up; the younger worker adds nothing before it started
    assert merged["rates"]["published"] == [1, 12, 23]
    assert merged["rates"]["delivered"] == {"sse": [1, 12, 23]}
    assert merged["rates"]["times"] == [0.0, 1.0, 2.0]
    assert merged["workers"] == {"answered": 2, "unreachable": 1}
    assert merged["status"] == "ok"


def test_merge_keeps_the_top_busiest_and_the_worst_state() -> None:
    many = {f"ch{n:02}": n for n in range(BUSIEST + 5)}
    merged = merge_parts([part(busiest=many), part(busiest={"ch00": 100}, broker="unavailable",
                                                   state="degraded")])
    assert len(merged["busiest"]) == BUSIEST
    assert merged["busiest"][0] == {"channel": "ch00", "readers": 100}
    assert merged["broker"]["status"] == "unavailable"
    assert merged["status"] == "degraded"
    # the answering worker is the youngest: its times are borrowed from an older one
    assert merge_parts([part(rates=[1]), part(rates=[1, 2])])["rates"]["published"] == [1, 3]


def test_merge_takes_each_bridge_from_the_worker_running_it() -> None:
    standby = {"database": "db", "state": "standby", "published": 0}
    running = {"database": "db", "state": "running", "published": 9}
    merged = merge_parts([part(bridges=[standby]), part(bridges=[running])])
    assert merged["bridges"] == [{"database": "db", "state": "running", "published": 9}]


async def admin_status_of(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/admin/status")
    assert response.status_code == 200, response.text
    value: dict[str, Any] = response.json()
    return value


async def test_in_process_workers_answer_the_sum_and_a_stuck_one_is_unreachable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with worker_server(tmp_path, 0, 3) as first, worker_server(tmp_path, 1, 3) as second, \
            http_client(first) as a, http_client(second) as b, \
            open_sse(a, "/channels/c") as sse_a, open_sse(b, "/channels/c") as sse_b, \
            open_sse(b, "/channels/d") as sse_d:
        for stream in (sse_a, sse_b, sse_d):
            await stream.opening()
        await publish(a, "c", 1)
        await publish(b, "c", 2)
        # worker 2 accepts and never answers, as a stuck process would
        release = asyncio.Event()

        async def never_answer(_reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
            await release.wait()
            writer.close()

        stuck = await asyncio.start_unix_server(never_answer, tmp_path / "worker-2.sock")
        monkeypatch.setattr(workermetrics, "PEER_TIMEOUT", 0.3 * UNIT)
        try:
            for client in (a, b):
                value = await admin_status_of(client)
                assert value["connections"]["sse"] == 3
                assert value["published"] == 2
                assert value["busiest"] == [{"channel": "c", "readers": 2},
                                            {"channel": "d", "readers": 1}]
                assert value["workers"] == {"answered": 2, "unreachable": 1}
        finally:
            release.set()
            stuck.close()
            await stuck.wait_closed()
        # a worker's part that is not one counts as unreachable, and fails nothing
        async def odd(self: workermetrics.WorkerShare, question: str) -> list[Any]:
            return [{"status": "ok"}, None]

        monkeypatch.setattr(workermetrics.WorkerShare, "ask_others", odd)
        value = await admin_status_of(a)
        assert value["workers"] == {"answered": 1, "unreachable": 2}
        assert value["connections"]["sse"] == 1


async def test_a_failure_while_gathering_stays_with_that_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(parts: list[dict[str, Any]], unreachable: int = 0) -> dict[str, Any]:
        raise RuntimeError("a bug")

    async with worker_server(tmp_path, 0, 1) as server, http_client(server) as http:
        monkeypatch.setattr(admin_status, "merge_parts", broken)
        assert (await http.get("/admin/status")).status_code == 500
        monkeypatch.undo()
        assert (await admin_status_of(http))["workers"] == {"answered": 1, "unreachable": 0}


async def test_admin_status_of_two_worker_processes_shows_the_node(redis_url: str) -> None:
    async with readers_spread_over_two_workers(redis_url) as (_node, by_worker, sockets):
        for index in (0, 1):
            value = await admin_status_of(by_worker[index][1])
            assert value["workers"] == {"answered": 2, "unreachable": 0}, value
            assert value["connections"]["sse"] == 2
            assert value["connections"]["websocket"] == 4
            assert value["published"] == 6
            assert value["busiest"] == [{"channel": "spread", "readers": 6}]
            assert value["broker"]["status"] == "ok"
            assert value["status"] == "ok"

        # Worker 1 stops answering (SIGSTOP: alive, stuck); the page still answers.
        victim = await worker_of(by_worker[1][1])
        assert victim["index"] == 1
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            async with asyncio.timeout((workermetrics.PEER_TIMEOUT + 10) * UNIT):
                value = await admin_status_of(by_worker[0][1])
            assert value["workers"] == {"answered": 1, "unreachable": 1}
            assert value["connections"]["sse"] == 1  # worker 0's stream
            assert value["published"] == 3
        finally:
            os.kill(victim["pid"], signal.SIGCONT)
        # Killed: until it is started again, it is counted unreachable, never an error.
        os.kill(victim["pid"], signal.SIGKILL)
        for ws in sockets:
            await ws.close()
        async with asyncio.timeout(30 * UNIT):
            while True:
                value = await admin_status_of(by_worker[0][1])
                assert value["workers"]["answered"] + value["workers"]["unreachable"] == 2
                if value["workers"]["answered"] == 2:
                    break
                await asyncio.sleep(0.05)  # no event to await: the supervisor restarts it
        assert value["connections"]["sse"] == 1


async def test_the_worker_socket_answers_each_question_and_nothing_to_an_unknown_one(
        tmp_path: Path) -> None:
    async with worker_server(tmp_path, 0, 2) as server:
        assert server.metrics_share is not None
        socket_path = server.metrics_share.socket_path(0)
        async with asyncio.timeout(10 * UNIT):
            while True:
                if socket_path.exists():
                    break
                await asyncio.sleep(0.02)  # no event to await: a background task listens

        async def ask(line: bytes) -> bytes:
            reader, writer = await asyncio.open_unix_connection(socket_path)
            try:
                writer.write(line)
                writer.write_eof()
                async with asyncio.timeout(10 * UNIT):
                    return await reader.read()
            finally:
                writer.close()

        assert await ask(b"bogus\n") == b""
        assert await ask(b"x" * 1000) == b""
        assert (await ask(b"")).startswith(b"[")  # an end of file asks the metrics
        peer = workermetrics.WorkerShare(tmp_path, 1, 2)
        [part] = await peer.ask_others("status")
        assert set(admin_status.PART_KEYS) <= set(part), part
        [figures] = await peer.ask_others("metrics")
        assert isinstance(figures, list)
