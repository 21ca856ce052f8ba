"""tidings nodes of a test's own: ``tidings serve`` child processes sharing one Redis.

Each node is ``python -m tidings serve --host 127.0.0.1 --port 0 --broker URL``
run by this interpreter; its URL is read from the line it prints once it
listens. Nothing in common between nodes but the Redis they are given (from the
``redis_url`` fixture, never the shared Redis on 6379)::

    async with start_nodes(redis_url, 3) as (a, b, c):
        a.url                       # http://127.0.0.1:PORT
        b.ws_url("/channels/x")     # ws://127.0.0.1:PORT/channels/x
    # each node got SIGTERM (SIGKILL if it did not exit) and must have exited 0

A node's stdout and stderr go to files in a temporary directory, so a chatty
node never blocks on a full pipe, and every failure shows what the node wrote.
Every wait is bounded by a multiple of ``UNIT`` seconds (``TIDINGS_TEST_UNIT``).

The rest are small helpers for clients we did not write talking to several
nodes (publishing on a node, reading an event stream from one, on top of
:mod:`tidings.testing`), and a check that a run of messages has no duplicate
and no hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx

from tidings import testing
from tidings.testing import UNIT, SseStream

PREFIX = "tidings serving on "
#: Seconds a node may take to print its URL (imports, connecting to Redis, binding).
START_TIMEOUT = 15 * UNIT
#: Seconds a node may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10 * UNIT
#: Environment variables that would change how a node serves (an API key turns auth on).
_SCRUBBED = ("TIDINGS_API_KEY", "TIDINGS_URL")


class NodeError(AssertionError):
    """A node did not start or stop as it should; the message ends with its stderr."""


class Node:
    """One ``tidings serve`` child process; create them with :func:`start_nodes`."""

    def __init__(self, name: str, argv: list[str], directory: Path) -> None:
        self.name = name
        self.argv = argv
        self.directory = directory
        self._stdout_path = directory / f"{name}.stdout"
        self._stderr_path = directory / f"{name}.stderr"
        environment = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=err, env=environment)
        self.url = ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def ws_url(self, path: str) -> str:
        """The ``ws://`` URL of ``path`` on this node."""
        return testing.ws_url(self, path)

    def stderr(self) -> str:
        """What the node wrote to stderr so far."""
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def _stdout(self) -> str:
        try:
            return self._stdout_path.read_text(errors="replace")
        except OSError:
            return ""

    def _failure(self, what: str) -> NodeError:
        return NodeError(f"node {self.name} ({' '.join(self.argv[1:])}) {what}\n"
                         f"--- its stdout:\n{self._stdout()}--- its stderr:\n{self.stderr()}")

    async def wait_url(self, within: float = START_TIMEOUT) -> str:
        """Wait for the ``tidings serving on URL`` line; raise :class:`NodeError` if none comes."""
        deadline = time.monotonic() + within
        while True:
            first, newline, _rest = self._stdout().partition("\n")
            if newline:
                if not first.startswith(PREFIX):
                    raise self._failure(f"printed {first!r} instead of {PREFIX!r}URL")
                self.url = first[len(PREFIX):].strip()
                if not self.url.startswith("http://127.0.0.1:"):
                    raise self._failure(f"serves on an unexpected URL {self.url!r}")
                return self.url
            if self.process.poll() is not None:
                raise self._failure(f"exited with status {self.process.returncode} "
                                    "before it served")
            if time.monotonic() > deadline:
                raise self._failure(f"printed no URL within {within:.1f} s")
            # The child writes to a file, which cannot be awaited: look again shortly.
            await asyncio.sleep(0.02)

    async def stop(self, within: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then SIGKILL after ``within`` s; the exit status (negative if killed)."""
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, within)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, within)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL, for cleanup after a failure; waits for the process."""
        if self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_TIMEOUT)

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.url or 'starting'}>"


def node_argv(broker: str, *extra_args: str) -> list[str]:
    return [sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1", "--port", "0",
            "--broker", broker, "--log-level", "warning", *extra_args]


@contextlib.asynccontextmanager
async def start_nodes(broker: str | Sequence[str], count: int = 1,
                      *extra_args: str) -> AsyncIterator[list[Node]]:
    """``count`` nodes on ``broker`` (a ``redis://`` URL), started at once, named A, B, C...

    With a list of URLs instead, one node per URL (``count`` is ignored).
    On leaving, each is stopped with SIGTERM; a node that had to be killed or
    did not exit with status 0 fails the test (with its stderr), unless the
    test failed already.
    """
    brokers = [broker] * count if isinstance(broker, str) else list(broker)
    directory = Path(tempfile.mkdtemp(prefix="tidings-nodes-"))
    nodes: list[Node] = []
    try:
        for index, url in enumerate(brokers):
            nodes.append(Node(chr(ord("A") + index), node_argv(url, *extra_args), directory))
        for node in nodes:  # all are starting already: waiting in turn costs nothing
            await node.wait_url()
        failed = False
        try:
            yield nodes
        except BaseException:
            failed = True
            raise
        finally:
            codes = [await node.stop() for node in nodes]
        if not failed:
            for node, code in zip(nodes, codes, strict=True):
                if code != 0:
                    raise node._failure(f"exited with status {code} after SIGTERM")
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(directory, ignore_errors=True)


# A gate between a node and Redis ---------------------------------------------------


class _GatedConnection:
    """One node-to-Redis connection through a :class:`RedisGate`."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.to_node = writer
        #: Whether the node subscribes on this connection (its pub/sub link).
        self.pubsub = False
        #: What Redis sent that the gate keeps from the node for now.
        self.held: list[bytes] = []


class RedisGate:
    """A TCP proxy between one node and Redis that can keep Redis's answers from the node.

    Give a node :attr:`url` as its broker. The gate forwards both ways until
    :meth:`hold_after_next_script` is called: from the next Lua script call
    (``EVALSHA``: a node that only reads sends it to sync a channel) on, what
    Redis sends to the node is held, on its command connections (the script's
    answer included; :attr:`script_answered` is set when that arrives) and on
    its pub/sub link alike. :meth:`release` lets one kind through again. So a
    test can make a node wait for Redis at a chosen point, deterministically.
    """

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = 0
        self._armed = False
        self._holding = {"commands": False, "pubsub": False}
        self._connections: list[_GatedConnection] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set when Redis answered the script call that started the holding.
        self.script_answered = asyncio.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def __aenter__(self) -> RedisGate:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self._connections:
            connection.to_node.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def hold_after_next_script(self) -> None:
        self._armed = True

    def release(self, kind: str) -> None:
        """Deliver what was held on ``kind`` ("commands" or "pubsub") and stop holding it."""
        self._holding[kind] = False
        for connection in self._connections:
            if self._kind(connection) == kind and connection.held:
                connection.to_node.write(b"".join(connection.held))
                connection.held.clear()

    @staticmethod
    def _kind(connection: _GatedConnection) -> str:
        return "pubsub" if connection.pubsub else "commands"

    async def _accept(self, node_reader: asyncio.StreamReader,
                      node_writer: asyncio.StreamWriter) -> None:
        try:
            redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1",
                                                                       self.redis_port)
        except OSError:
            node_writer.close()  # as if Redis refused the node
            return
        connection = _GatedConnection(node_writer)
        self._connections.append(connection)
        for pump in (self._from_node(connection, node_reader, redis_writer),
                     self._from_redis(connection, redis_reader)):
            task = asyncio.get_running_loop().create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _from_node(self, connection: _GatedConnection, reader: asyncio.StreamReader,
                         redis: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if b"SSUBSCRIBE" in data.upper():
                    connection.pubsub = True
                if self._armed and not connection.pubsub and b"EVALSHA" in data.upper():
                    self._armed = False
                    self._holding = {"commands": True, "pubsub": True}
                redis.write(data)
        except OSError:
            pass
        finally:
            redis.close()

    async def _from_redis(self, connection: _GatedConnection,
                          reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                kind = self._kind(connection)
                if self._holding[kind]:
                    connection.held.append(data)
                    if kind == "commands":
                        self.script_answered.set()
                else:
                    connection.to_node.write(data)
        except OSError:
            pass
        finally:
            connection.to_node.close()


# Clients ---------------------------------------------------------------------------


async def publish(client: httpx.AsyncClient, node: Node, channel: str, value: Any) -> str:
    """Publish ``value`` on ``node``; check the ``201`` answer and return the message id.

    ``client`` is one for any node: ``tidings.testing.http_client()``.
    """
    return await testing.publish(client, channel, value, server=node)


async def health(client: httpx.AsyncClient, node: Node) -> dict[str, Any]:
    response = await client.get(f"{node.url}/healthz")
    assert response.status_code == 200, f"{node}: {response.status_code} {response.text}"
    return dict(response.json())


class PacedPublisher:
    """Publishes ``0, 1, ... count-1`` on ``channel``, one by one, each on a random node.

    ``await run()`` publishes with ``pace`` seconds between messages and
    returns the ids in order; readers running meanwhile can wait until some
    number of messages is out with :meth:`wait_for`.
    """

    def __init__(self, client: httpx.AsyncClient, nodes: Sequence[Node], channel: str,
                 count: int, *, pace: float = 0.01, seed: int = 0) -> None:
        self.client = client
        self.nodes = list(nodes)
        self.channel = channel
        self.count = count
        self.pace = pace
        self._chooser = random.Random(seed)
        #: The ids published so far, in order.
        self.ids: list[str] = []
        self._published = asyncio.Condition()

    async def run(self) -> list[str]:
        for n in range(self.count):
            node = self._chooser.choice(self.nodes)
            self.ids.append(await publish(self.client, node, self.channel, n))
            async with self._published:
                self._published.notify_all()
            await asyncio.sleep(self.pace)  # pacing the publisher, not waiting for a result
        return self.ids

    async def wait_for(self, count: int, within: float = 10 * UNIT) -> None:
        """Return once ``count`` messages (capped at the total) have been published."""
        count = min(count, self.count)
        async with asyncio.timeout(within), self._published:
            await self._published.wait_for(lambda: len(self.ids) >= count)


@contextlib.asynccontextmanager
async def open_sse(client: httpx.AsyncClient, node: Node, path: str,
                   headers: dict[str, str] | None = None) -> AsyncIterator[SseStream]:
    """Open an event stream on ``node``; leaving the block closes its connection."""
    async with testing.open_sse(client, node.url + path, headers=headers) as stream:
        yield stream


def assert_exactly(received: Sequence[str], published: Iterable[str], what: str) -> None:
    """``received`` ids are ``published`` ids, each once, in order; say where they differ."""
    expected = list(published)
    if list(received) == expected:
        return
    seen: set[str] = set()
    duplicates: list[str] = []
    for message_id in received:
        if message_id in seen:
            duplicates.append(message_id)
        seen.add(message_id)
    wanted = set(expected)
    missing = [i for i in expected if i not in seen]
    extra = [i for i in received if i not in wanted]
    first = next((n for n, (r, e) in enumerate(zip(received, expected, strict=False)) if r != e),
                 min(len(received), len(expected)))
    raise AssertionError(
        f"{what}: got {len(received)} ids for {len(expected)} published; "
        f"duplicates {duplicates[:10]}, missing {missing[:10]}, unexpected {extra[:10]}, "
        f"first difference at index {first}: got {list(received)[first:first + 3]}, "
        f"expected {expected[first:first + 3]}")
