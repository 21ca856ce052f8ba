"""``tidings serve --workers 2`` on a Redis of the test's own: one port, two processes.

Clients we did not write (``httpx``, ``websockets``) talk to a real
``tidings serve`` (tests/nodes/nodekit.py). Which worker a connection reached
is what its ``/healthz`` says (``worker.index``, ``worker.pid``): a client
limited to one connection asks first, then reads on that same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect

# The nodes' kit (tests/nodes/nodekit.py) starts real ``tidings serve`` processes. No
# conftest.py here for this: test modules import the top one as ``conftest``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nodes"))
from nodekit import STOP_TIMEOUT, Node, assert_exactly, node_argv, start_nodes

from tidings import testing as kit
from tidings.testing import UNIT, SseStream, check_poll_answer, recv_json, recv_messages

#: Connections opened to find enough on each worker before the test gives up.
MAX_ATTEMPTS = 200


def one_connection(node: Node) -> httpx.AsyncClient:
    """A client that keeps every request on one connection (so on one worker)."""
    return httpx.AsyncClient(base_url=node.url, timeout=10 * UNIT,
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


async def worker_of(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/healthz")
    assert response.status_code == 200, response.text
    worker: dict[str, Any] = response.json()["worker"]
    return worker


@contextlib.asynccontextmanager
async def clients_per_worker(node: Node, per_worker: int, workers: int = 2,
                             ) -> AsyncIterator[dict[int, list[httpx.AsyncClient]]]:
    """``per_worker`` one-connection clients on each worker, by worker index."""
    found: dict[int, list[httpx.AsyncClient]] = defaultdict(list)
    async with contextlib.AsyncExitStack() as stack:
        for _attempt in range(MAX_ATTEMPTS):
            if len(found) == workers and all(len(c) >= per_worker for c in found.values()):
                break
            client = await stack.enter_async_context(one_connection(node))
            index = (await worker_of(client))["index"]
            if len(found[index]) < per_worker:
                found[index].append(client)
            else:
                await client.aclose()
        else:
            pytest.fail(f"{MAX_ATTEMPTS} connections did not reach each of {workers} workers "
                        f"{per_worker} times: {dict((k, len(v)) for k, v in found.items())}")
        yield dict(found)


async def wait_for_worker(node: Node, index: int, not_pid: int) -> int:
    """The pid of worker ``index`` once a process other than ``not_pid`` serves as it."""
    async with asyncio.timeout(30 * UNIT):
        while True:
            async with one_connection(node) as client:
                with contextlib.suppress(httpx.TransportError):
                    worker = await worker_of(client)
                    if worker["index"] == index and worker["pid"] != not_pid:
                        return int(worker["pid"])
            await asyncio.sleep(0.02)  # another connection may land on the other worker


async def long_poll(client: httpx.AsyncClient, path: str, since: str, count: int) -> list[str]:
    """Long-poll ``path`` from ``since`` until ``count`` message ids have come."""
    ids: list[str] = []
    while len(ids) < count:
        response = await client.get(path, params={"since": since, "wait": 5})
        assert response.status_code == 200, response.text
        answer = check_poll_answer(response.json())
        ids += [message["id"] for message in answer["messages"]]
        since = answer["next"]
    return ids


async def test_clients_on_both_workers_receive_every_message_once(redis_url: str) -> None:
    channel, count = "spread", 100
    path = f"/channels/{channel}"
    async with start_nodes(redis_url, 1, "--workers", "2") as (node,), \
            clients_per_worker(node, 3) as by_worker, contextlib.AsyncExitStack() as stack:
        streams: list[SseStream] = []
        pollers = []
        for index in (0, 1):
            body = (await by_worker[index][0].get("/healthz")).json()
            assert body["worker"]["workers"] == 2, body
            assert body["broker"]["kind"] == "redis", body
            stream = await stack.enter_async_context(
                kit.open_sse(by_worker[index][0], node.url + path))
            await stream.opening()
            streams.append(stream)
            start = check_poll_answer((await by_worker[index][1].get(path)).json())["next"]
            pollers.append(asyncio.create_task(long_poll(by_worker[index][1], path, start, count)))
        # Connections the kernel spreads as it likes, with a client we did not write.
        sockets = [await stack.enter_async_context(ws_connect(node.ws_url(path)))
                   for _ in range(6)]
        for ws in sockets:
            assert (await recv_json(ws))["type"] == "subscribed"
        reading = asyncio.gather(*(s.message_objects(count, within=20 * UNIT) for s in streams),
                                 *(recv_messages(ws, count, within=20 * UNIT) for ws in sockets))
        published = []
        for n in range(count):  # published on each worker in turn
            publisher = by_worker[n % 2][2]
            published.append(await kit.publish(publisher, channel, n, server=node))
        *by_stream, = await reading
        async with asyncio.timeout(20 * UNIT):
            by_poll = await asyncio.gather(*pollers)
        for n, received in enumerate(by_stream):
            assert_exactly([m["id"] for m in received], published, f"reader {n}")
            assert [m["data"] for m in received] == list(range(count))
        for index, ids in enumerate(by_poll):
            assert_exactly(ids, published, f"long poll on worker {index}")


async def test_a_killed_worker_is_started_again_and_its_reader_resumes(redis_url: str) -> None:
    channel, path = "restart", "/channels/restart"
    async with start_nodes(redis_url, 1, "--workers", "2") as (node,), \
            clients_per_worker(node, 1) as by_worker:
        victim = await worker_of(by_worker[0][0])
        survivor_client = by_worker[1][0]
        async with kit.open_sse(by_worker[0][0], node.url + path) as doomed:
            await doomed.opening()
            before = [await kit.publish(survivor_client, channel, n, server=node)
                      for n in range(10)]
            seen = await doomed.message_objects(10)
            assert_exactly([m["id"] for m in seen], before, "the reader on worker 0")
            os.kill(victim["pid"], signal.SIGKILL)
            with contextlib.suppress(httpx.HTTPError, EOFError):
                await doomed.next_block(within=10 * UNIT)  # its connection is cut
        # Published while worker 0 is down or coming back: kept in Redis.
        meanwhile = [await kit.publish(survivor_client, channel, n, server=node)
                     for n in range(10, 20)]
        new_pid = await wait_for_worker(node, 0, not_pid=victim["pid"])
        async with clients_per_worker(node, 2) as again:
            assert (await worker_of(again[0][0]))["pid"] == new_pid
            async with kit.open_sse(again[0][0], node.url + path,
                                        headers={"Last-Event-ID": seen[-1]["id"]}) as resumed:
                await resumed.opening()
                caught_up = await resumed.message_objects(10)
                assert_exactly([m["id"] for m in caught_up], meanwhile, "the resumed reader")
                after = await kit.publish(again[0][1], channel, 20, server=node)  # on the new 0
                (live,) = await resumed.message_objects(1)
                assert live["id"] == after
        stderr = node.stderr()
        assert (f"worker 0 (pid {victim['pid']}) was killed by SIGKILL; starting it again"
                in stderr), stderr


@pytest.mark.parametrize(("signum", "reason"), [(signal.SIGTERM, "restart"),
                                                (signal.SIGINT, "shutdown")])
async def test_a_stop_signal_drains_every_worker(redis_url: str, signum: int, reason: str,
                                                 tmp_path: Any) -> None:
    # SIGTERM is a rolling restart: each worker tells its streams to reconnect elsewhere,
    # spread over drain_period (shortened here); SIGINT stops at once.
    config = tmp_path / "tidings.toml"
    config.write_text("[server]\ndrain_period = 0.5\n")
    async with start_nodes(redis_url, 1, "--workers", "2", "--config", str(config)) as (node,), \
            clients_per_worker(node, 1) as by_worker, contextlib.AsyncExitStack() as stack:
        streams = []
        for index in (0, 1):
            stream = await stack.enter_async_context(
                kit.open_sse(by_worker[index][0], node.url + "/channels/drain"))
            await stream.opening()
            streams.append(stream)
        node.process.send_signal(signum)
        for stream in streams:  # each worker says goodbye to its client
            block = await stream.next_event()
            assert block.event == "close" and block.json()["error"] == reason, block
        code = await asyncio.to_thread(node.process.wait, STOP_TIMEOUT)
        assert code == 0, node.stderr()
        assert "draining 2 workers" in node.stderr()
    with pytest.raises(httpx.ConnectError):  # nobody listens on the port any more
        async with one_connection(node) as client:
            await client.get("/healthz")


async def test_workers_exit_when_the_parent_is_killed(redis_url: str, tmp_path: Any) -> None:
    node = Node("A", node_argv(redis_url, "--workers", "2"), tmp_path)
    try:
        await node.wait_url()
        async with clients_per_worker(node, 1):
            pass
        node.process.kill()
        node.process.wait(STOP_TIMEOUT)
        async with asyncio.timeout(10 * UNIT):
            while True:  # the workers got SIGTERM from the kernel, drain and close the port
                try:
                    async with one_connection(node) as client:
                        await client.get("/healthz")
                except httpx.TransportError:
                    break
                await asyncio.sleep(0.05)
    finally:
        node.kill()


def test_the_memory_broker_refuses_more_than_one_worker() -> None:
    done = subprocess.run([sys.executable, "-m", "tidings", "serve", "--port", "0",
                           "--workers", "2"], capture_output=True, text=True,
                          timeout=30 * UNIT, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done
    assert "--workers 2 needs a shared broker" in done.stderr
    assert "--broker redis://" in done.stderr
    assert done.stdout == ""
