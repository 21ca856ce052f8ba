"""One scrape for all workers (server/workermetrics.py), parsed with prometheus_client's parser.

In-process first (servers sharing a directory as workers do: the sums, a
worker gone, a worker started again), then real ``tidings serve --workers 2``
processes over Redis with clients we did not write (httpx, ``websockets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_ops_metrics import Samples, parse, totals, value
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from conftest import UNIT
from tidings import Server
from tidings.server import workermetrics
from tidings.server.workermetrics import WorkerShare, exposition_of, merge
from tidings.testing import http_client, open_sse, publish, recv_json
from workerkit import worker_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))
from nodekit import Node, start_nodes
from test_workers import clients_per_worker, wait_for_worker, worker_of


def family(name: str, kind: str, *samples: tuple[str, dict[str, str], float],
           ) -> workermetrics.Family:
    return {"name": name, "type": kind, "help": "h",
            "samples": [[n, labels, v] for n, labels, v in samples]}


def test_merge_sums_counters_histograms_and_gauges_but_not_every_gauge() -> None:
    def worker(conns: float, up: float, delivered: float, buckets: tuple[float, float],
               ) -> workermetrics.Snapshot:
        return [
            family("tidings_connections", "gauge", ("tidings_connections", {"kind": "sse"},
                                                    conns)),
            family("tidings_broker_up", "gauge", ("tidings_broker_up", {"kind": "redis"}, up)),
            family("tidings_delivered_messages", "counter",
                   ("tidings_delivered_messages_total", {"technique": "sse"}, delivered)),
            family("tidings_publish_latency_seconds", "histogram",
                   ("tidings_publish_latency_seconds_bucket", {"le": "0.001"}, buckets[0]),
                   ("tidings_publish_latency_seconds_bucket", {"le": "+Inf"}, buckets[1]),
                   ("tidings_publish_latency_seconds_count", {}, buckets[1]),
                   ("tidings_publish_latency_seconds_sum", {}, 0.5)),
        ]

    merged = merge([worker(3, 1, 10, (1, 2)), worker(4, 0, 5, (2, 5))])
    samples = parse(exposition_of(merged).decode())
    assert value(samples, "tidings_connections", kind="sse") == 7
    assert value(samples, "tidings_broker_up", kind="redis") == 0  # one worker lost it
    assert value(samples, "tidings_delivered_messages_total", technique="sse") == 15
    assert value(samples, "tidings_publish_latency_seconds_bucket", le="0.001") == 3
    assert value(samples, "tidings_publish_latency_seconds_bucket", le="+Inf") == 7
    assert value(samples, "tidings_publish_latency_seconds_count") == 7
    assert value(samples, "tidings_publish_latency_seconds_sum") == 1.0
    # A label value only one worker has is kept.
    extra = [family("tidings_refusals", "counter",
                    ("tidings_refusals_total", {"code": "rate_limited"}, 2))]
    both = parse(exposition_of(merge([extra, [family("tidings_refusals", "counter")]]))
                 .decode())
    assert value(both, "tidings_refusals_total", code="rate_limited") == 2


@contextlib.asynccontextmanager
async def readers_spread_over_two_workers(redis_url: str) -> AsyncIterator[
        tuple[Node, dict[int, list[httpx.AsyncClient]], list[ClientConnection]]]:
    """One node of two worker processes on Redis, read on channel ``spread`` by an SSE
    stream on each worker and four WebSockets spread over them, after three publishes on
    each worker: the node, two clients of each worker (by index), the WebSockets."""
    path = "/channels/spread"
    async with start_nodes(redis_url, 1, "--workers", "2") as (node,), \
            clients_per_worker(node, 2) as by_worker, contextlib.AsyncExitStack() as stack:
        streams = []  # kept: a stream object collected closes its connection
        for index in (0, 1):  # an SSE stream on each worker, and WebSockets spread
            streams.append(await stack.enter_async_context(open_sse(by_worker[index][0],
                                                                    node.url + path)))
            await streams[-1].opening()
        sockets = [await stack.enter_async_context(ws_connect(node.ws_url(path)))
                   for _ in range(4)]
        for ws in sockets:
            assert (await recv_json(ws))["type"] == "subscribed"
        for n in range(6):  # three publishes on each worker
            await publish(by_worker[n % 2][1], "spread", n, server=node)
        yield node, by_worker, sockets


async def scrape(server: Server) -> tuple[Samples, str]:
    async with http_client(server) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text), response.text


async def test_workers_in_one_scrape_and_counters_kept_across_a_restart(
        tmp_path: Path) -> None:
    async with worker_server(tmp_path, 0) as first:
        async with worker_server(tmp_path, 1) as second, \
                http_client(first) as a, http_client(second) as b, \
                open_sse(a, "/channels/c") as sse_a, open_sse(b, "/channels/c") as sse_b:
            await sse_a.opening()
            await sse_b.opening()
            for n in range(3):
                await publish(a, "c", n)
            await sse_a.messages(3)
            for n in range(2):
                await publish(b, "c", n)
            await sse_b.messages(2)
            for server in (first, second):  # either worker answers the total
                samples, _text = await scrape(server)
                assert value(samples, "tidings_connections", kind="sse") == 2
                assert totals(samples, "tidings_published_messages_total", "via")[
                    "http"] == 5
                assert value(samples, "tidings_publish_latency_seconds_count") == 5
                assert value(samples, "tidings_delivered_messages_total",
                             technique="sse") == 5
                assert value(samples, "tidings_workers", state="answered") == 2
                assert value(samples, "tidings_broker_up", kind="memory") == 1
        # Worker 1 is gone: its counters stay (saved), its connections do not.
        samples, text = await scrape(first)
        assert value(samples, "tidings_workers", state="unreachable") == 1
        assert totals(samples, "tidings_published_messages_total", "via")["http"] == 5
        assert value(samples, "tidings_delivered_messages_total", technique="sse") == 5
        assert value(samples, "tidings_connections", kind="sse") == 0
        cpu = value(samples, "tidings_process_cpu_seconds_total")
        # Worker 1 again, a new process in production: it counts on from its predecessor.
        async with worker_server(tmp_path, 1) as again:
            async with http_client(again) as b:
                await publish(b, "c", "after")
            for server in (first, again):
                samples, _text = await scrape(server)
                assert totals(samples, "tidings_published_messages_total", "via")["http"] == 6
                assert value(samples, "tidings_delivered_messages_total", technique="sse") == 5
                assert value(samples, "tidings_workers", state="answered") == 2
                assert value(samples, "tidings_process_cpu_seconds_total") >= cpu
        assert "c" not in {f.name for f in text_string_to_metric_families(text)}


async def test_a_worker_that_does_not_answer_counts_with_what_it_saved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with worker_server(tmp_path, 0, 2) as first, worker_server(tmp_path, 1, 2) as second:
        async with http_client(second) as b:
            await publish(b, "c", 1)
        await scrape(second)  # saves what worker 1 showed
        release = asyncio.Event()

        async def never_answer(_reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
            await release.wait()
            writer.close()

        # A worker that accepts and does not answer (in place of worker 1's socket).
        stuck = await asyncio.start_unix_server(never_answer, tmp_path / "worker-1.sock")
        try:
            monkeypatch.setattr(workermetrics, "PEER_TIMEOUT", 0.2 * UNIT)
            samples, _text = await scrape(first)
        finally:
            release.set()
            stuck.close()
            await stuck.wait_closed()
        assert value(samples, "tidings_workers", state="unreachable") == 1
        assert totals(samples, "tidings_published_messages_total", "via")["http"] == 1


async def test_a_failure_while_gathering_stays_with_that_scrape(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: WorkerShare, server: Server) -> bytes:
        raise RuntimeError("a bug")

    async with worker_server(tmp_path, 0, 1) as server:
        monkeypatch.setattr(WorkerShare, "exposition", broken)
        async with http_client(server) as http:
            assert (await http.get("/metrics")).status_code == 500
            monkeypatch.undo()
            assert (await http.get("/metrics")).status_code == 200
            assert (await http.get("/healthz")).status_code == 200


async def test_a_scrape_answered_by_any_of_two_worker_processes_shows_the_total(
        redis_url: str) -> None:
    async with readers_spread_over_two_workers(redis_url) as (node, by_worker, sockets):

        async def scrape_on(client: httpx.AsyncClient) -> Samples:
            response = await client.get("/metrics")
            assert response.status_code == 200, response.text
            return parse(response.text)

        for index in (0, 1):
            samples = await scrape_on(by_worker[index][1])
            assert value(samples, "tidings_workers", state="answered") == 2, samples
            assert value(samples, "tidings_connections", kind="sse") == 2
            assert value(samples, "tidings_connections", kind="websocket") == 4
            assert value(samples, "tidings_readers", technique="websocket") == 4
            assert totals(samples, "tidings_published_messages_total", "via")["http"] == 6
            assert value(samples, "tidings_workers", state="answered") == 2
            assert value(samples, "tidings_broker_up", kind="redis") == 1
        before = samples

        # Worker 1 is killed (its clients cut) and started again: no counter goes back.
        victim = await worker_of(by_worker[1][1])
        os.kill(victim["pid"], signal.SIGKILL)
        for ws in sockets:
            await ws.close()
        await wait_for_worker(node, 1, not_pid=victim["pid"])
        async with asyncio.timeout(10 * UNIT):
            while True:
                samples = await scrape_on(by_worker[0][1])
                if value(samples, "tidings_workers", state="answered") == 2:
                    break
                await asyncio.sleep(0.05)  # the new worker 1 is not listening for peers yet
        for (name, labels), old in before.items():
            if name.endswith(("_total", "_bucket", "_count")) and "process" not in name:
                assert samples.get((name, labels), 0) >= old, (name, labels)
        assert totals(samples, "tidings_published_messages_total", "via")["http"] == 6
        assert value(samples, "tidings_connections", kind="sse") == 1  # worker 0's stream


async def test_metrics_listen_is_one_address_for_all_workers(redis_url: str,
                                                             tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('[server]\nmetrics_listen = "127.0.0.1:0"\n')
    async with start_nodes(redis_url, 1, "--workers", "2", "--config", str(config),
                           "--log-level", "info") as (node,), \
            clients_per_worker(node, 1) as by_worker:
        for index in (0, 1):
            await publish(by_worker[index][0], "c", index, server=node)
        assert (await by_worker[0][0].get("/metrics")).status_code == 404  # not on the main port
        port = await metrics_port(node)
        for _ in range(4):  # new connections: the kernel hands them to either worker
            async with httpx.AsyncClient(timeout=10 * UNIT) as http:
                response = await http.get(f"http://127.0.0.1:{port}/metrics")
            assert response.status_code == 200, response.text
            samples = parse(response.text)
            assert totals(samples, "tidings_published_messages_total", "via")["http"] == 2
            assert value(samples, "tidings_workers", state="answered") == 2


async def metrics_port(node: Node) -> int:
    """The port the parent holds for ``metrics_listen = "127.0.0.1:0"`` (it logs it)."""
    pattern = re.compile(r"metrics of all workers on http://127\.0\.0\.1:(\d+)/")
    async with asyncio.timeout(10 * UNIT):
        while True:  # no event to await: the line is in the parent's stderr
            found = pattern.search(node.stderr())
            if found:
                return int(found.group(1))
            await asyncio.sleep(0.05)
