"""Prometheus metrics at ``GET /metrics``, parsed with prometheus_client's own parser.

Real clients on every technique (httpx for polls, long polls and SSE, the
``websockets`` package) move the counters; each scrape is read the way
Prometheus reads it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from conftest import UNIT, ServerFactory, until
from rediskit import RedisProcess
from tidings import Server, Settings, UsageError
from tidings.testing import (
    command,
    http_client,
    open_sse,
    poll,
    publish,
    recv_json,
    recv_messages,
    ws_url,
)

API_KEY = "metrics-test-api-key-0123456789"
#: A channel name that must never show up in the metrics (labels stay bounded).
CHANNEL = "private-channel-name-4d2f"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(server: Server, headers: dict[str, str] | None = None) -> Samples:
    async with http_client(server) as http:
        response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert CHANNEL not in response.text
    return parse(response.text)


def totals(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


async def test_every_family_is_there_with_bounded_labels(server: Server) -> None:
    samples = await scrape(server)
    names = {name for name, _labels in samples}
    for name in ("tidings_connections", "tidings_readers", "tidings_delivered_messages_total",
                 "tidings_written_bytes_total", "tidings_published_messages_total",
                 "tidings_slow_consumers_total", "tidings_gaps_total",
                 "tidings_broker_up", "tidings_channels_with_readers",
                 "tidings_publish_latency_seconds_bucket", "tidings_publish_latency_seconds_count",
                 "tidings_process_cpu_seconds_total", "tidings_process_open_fds"):
        assert name in names, name
    assert value(samples, "tidings_broker_up", kind="memory") == 1
    assert set(totals(samples, "tidings_delivered_messages_total", "technique")) == {
        "websocket", "sse", "longpoll", "poll"}
    assert set(totals(samples, "tidings_gaps_total", "reason")) == {
        "expired", "epoch", "skipped", "latest"}


async def test_counts_per_technique(server: Server) -> None:
    """Two messages reach an SSE stream, a WebSocket, a parked long poll and a poll: each
    technique counts its deliveries; publishes count by how they came."""
    async with http_client(server) as http, open_sse(http, f"/channels/{CHANNEL}") as stream, \
            connect(ws_url(server, f"/channels/{CHANNEL}")) as ws, \
            http_client(server) as waiting:
        start = (await stream.opening()).id
        assert (await recv_json(ws))["type"] == "subscribed"
        parked = asyncio.ensure_future(waiting.get(
            f"/channels/{CHANNEL}", params={"since": start, "wait": str(10 * UNIT)}))
        await until(lambda: server.registry.statistics()["long_polls"] == 1)

        samples = await scrape(server)
        assert value(samples, "tidings_connections", kind="sse") == 1
        assert value(samples, "tidings_connections", kind="websocket") == 1
        assert value(samples, "tidings_readers", technique="longpoll") == 1
        assert value(samples, "tidings_readers", technique="websocket") == 1
        assert value(samples, "tidings_readers", technique="sse") == 1
        assert value(samples, "tidings_channels_with_readers") == 1

        await publish(http, CHANNEL, {"n": 1})
        before_ack: list[dict[str, object]] = []
        ack = await command(ws, before_ack, type="publish", channel=CHANNEL, data={"n": 2},
                            req=1)
        assert ack["type"] == "ack"
        assert len(await stream.messages(2)) == 2
        assert all(frame["type"] == "message" for frame in before_ack)
        await recv_messages(ws, 2 - len(before_ack))
        assert (await parked).json()["messages"][0]["data"] == {"n": 1}
        answer = await poll(http, f"/channels/{CHANNEL}", since=start)
        assert len(answer["messages"]) == 2

        samples = await scrape(server)
        delivered = totals(samples, "tidings_delivered_messages_total", "technique")
        assert delivered == {"sse": 2, "websocket": 2, "longpoll": 1, "poll": 2}
        published = totals(samples, "tidings_published_messages_total", "via")
        assert published == {"http": 1, "websocket": 1, "in_process": 0}
        assert value(samples, "tidings_publish_latency_seconds_count") == 2
        assert value(samples, "tidings_publish_latency_seconds_bucket", le="+Inf") == 2
        written = totals(samples, "tidings_written_bytes_total", "technique")
        assert all(written[technique] > 0 for technique in ("http", "sse", "websocket"))

    # Closed streams keep their counts (moved from the reader to the totals).
    await until(lambda: not server.registry.streams())
    after = await scrape(server)
    assert totals(after, "tidings_delivered_messages_total", "technique") == delivered
    # Streams' bytes are what their clients acknowledged (TCP_INFO), counted again at close.
    sse_bytes = totals(after, "tidings_written_bytes_total", "technique")["sse"]
    assert sse_bytes >= written["sse"]
    assert value(after, "tidings_connections", kind="sse") == 0


async def test_gaps_by_reason_and_refusals_by_code(make_server: ServerFactory) -> None:
    server = await make_server(history_size=2)
    async with http_client(server) as http:
        ids = [await publish(http, CHANNEL, n) for n in range(5)]
        answer = await poll(http, f"/channels/{CHANNEL}", since=ids[0])
        assert answer["gaps"][0]["reason"] == "expired"
        async with open_sse(http, f"/channels/{CHANNEL}", {"since": "zzzzzzzz-1"}) \
                as stream:
            await stream.opening()
            event = await stream.next_event()
            assert event.event == "gap"
        refused = await http.get("/channels/bad name!")
        code = refused.json()["error"]
        await http.post(f"/channels/{CHANNEL}", content=b"{not json")
        await http.post(f"/channels/{CHANNEL}", content=b"[1,")
    samples = await scrape(server)
    gaps = totals(samples, "tidings_gaps_total", "reason")
    assert gaps["expired"] == 1
    assert gaps["epoch"] == 1
    refusals = totals(samples, "tidings_refusals_total", "code")
    assert refusals[code] == 1
    assert refusals["invalid_json"] == 2


@pytest.mark.parametrize("technique", ["sse", "websocket"])
async def test_slow_consumers_by_technique(make_server: ServerFactory, technique: str) -> None:
    server = await make_server(output_buffer_limit=64 * 1024)
    requests = {
        "sse": b"GET /channels/c HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        "websocket": (b"GET /channels/c HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      b"Sec-WebSocket-Version: 13\r\n\r\n"),
    }
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:  # a client that never reads, with a tiny buffer
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, requests[technique])
        await until(lambda: server.statistics()["streams"] == 1)
        async with http_client(server) as http:
            for _ in range(1500):
                await publish(http, "c", {"filler": "x" * 4000})
                if server.stats["slow_consumers"]:
                    break
    samples = await scrape(server)
    slow = totals(samples, "tidings_slow_consumers_total", "technique")
    assert slow == {"sse": 0, "websocket": 0, technique: 1}


async def test_with_access_control_the_api_key_is_needed(make_server: ServerFactory) -> None:
    server = await make_server(auth=Settings().auth.__class__(api_key=API_KEY))
    async with http_client(server) as http:
        refused = await http.get("/metrics")
        assert refused.status_code == 403
        assert refused.json()["error"] == "api_key_required"
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert API_KEY not in refused.text + wrong.text
    samples = await scrape(server, {"Authorization": f"Bearer {API_KEY}"})
    assert value(samples, "tidings_broker_up", kind="memory") == 1


async def test_metrics_listen_serves_them_apart_and_open(make_server: ServerFactory) -> None:
    server = await make_server(metrics_listen="127.0.0.1:0",
                               auth=Settings().auth.__class__(api_key=API_KEY))
    assert server.metrics_port is not None
    base = f"http://127.0.0.1:{server.metrics_port}"
    async with httpx.AsyncClient(timeout=10 * UNIT) as http:
        response = await http.get(f"{base}/metrics")
        assert response.status_code == 200
        assert value(parse(response.text), "tidings_broker_up", kind="memory") == 1
        head = await http.head(f"{base}/metrics")
        assert (head.status_code, head.content) == (200, b"")
        assert (await http.get(f"{base}/channels/c")).status_code == 404
        assert (await http.post(f"{base}/metrics")).status_code == 404
        # Not on the main port any more, API key or not.
        main = await http.get(f"{server.url}/metrics",
                              headers={"Authorization": f"Bearer {API_KEY}"})
        assert main.status_code == 404
    # Garbage gets 400; closing the server closes the metrics' listener too.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.metrics_port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5 * UNIT)).startswith(b"HTTP/1.1 400")
    writer.close()
    await server.aclose()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.metrics_port)


async def test_metrics_can_be_turned_off(make_server: ServerFactory) -> None:
    server = await make_server(metrics=False)
    async with http_client(server) as http:
        assert (await http.get("/metrics")).status_code == 404


@pytest.mark.parametrize("listen", ["9100", "host:", "host:port", "127.0.0.1:70000"])
def test_a_bad_metrics_listen_is_refused(listen: str) -> None:
    with pytest.raises(UsageError, match="metrics_listen must be HOST:PORT"):
        Settings(metrics_listen=listen)


async def test_bridge_state(server: Server) -> None:
    server.health_extra["bridges"] = lambda: [
        {"state": "running", "published": 7, "failures": 0, "last_seq": 41},
        {"state": "standby", "published": 0, "failures": 2, "last_seq": 0}]
    samples = await scrape(server)
    assert value(samples, "tidings_bridge_state", bridge="0", state="running") == 1
    assert value(samples, "tidings_bridge_state", bridge="1", state="standby") == 1
    assert value(samples, "tidings_bridge_published_changes_total", bridge="0") == 7
    assert value(samples, "tidings_bridge_failures", bridge="1") == 2
    assert value(samples, "tidings_bridge_last_seq", bridge="0") == 41


async def test_broker_down_shows(make_server: ServerFactory, redis_process: RedisProcess) -> None:
    server = await make_server(broker=redis_process.url)
    samples = await scrape(server)
    assert value(samples, "tidings_broker_up", kind="redis") == 1
    redis_process.stop()
    async with http_client(server) as http:
        await http.post("/channels/c", json=1)  # a publish finds out
    await until(lambda: server.broker.health()["status"] != "ok", 10 * UNIT)
    samples = await scrape(server)
    assert value(samples, "tidings_broker_up", kind="redis") == 0


def sample_names(samples: Iterable[tuple[str, object]]) -> set[str]:
    return {name for name, _ in samples}


async def test_admin_status_rates_and_busiest_channels(server: Server) -> None:
    async with http_client(server) as http, open_sse(http, "/channels/busy") as stream:
        await stream.opening()
        server.status_history.sample()
        for n in range(4):
            await publish(http, "busy", n)
        await stream.messages(4)
        server.status_history.sample()
        status = (await http.get("/admin/status")).json()
    assert status["connections"]["sse"] == 1
    assert status["busiest"] == [{"channel": "busy", "readers": 1}]
    assert status["rates"]["published"][-1] > 0
    assert status["rates"]["delivered"]["sse"][-1] > 0
    assert status["delivered"]["sse"] == 4
    assert status["broker"]["status"] == "ok"
