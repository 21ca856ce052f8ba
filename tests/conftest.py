"""Shared fixtures: a real server on port 0 in the test's event loop; and what only our tests need.

Clients we did not write, driven by hand, are the public test kit
:mod:`tidings.testing`. Here are the few helpers that only this test suite
needs: :func:`until` (server state in this process) and :data:`SAMPLE_VALUES`
(the kit's, plus what our server keeps exact beyond the protocol's promise).

Timeouts are multiples of ``UNIT`` seconds (the kit's); raise
``TIDINGS_TEST_UNIT`` on a slow machine instead of editing tests.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest

from rediskit import RedisClusterProcesses, RedisProcess, redis_missing
from tidings import Server, Settings, testing
from tidings.brokers.memory import MemoryBroker
from tidings.core.cursor import Start
from tidings.testing import UNIT

ServerFactory = Callable[..., Awaitable[Server]]

#: The values every technique must deliver unchanged (the kit's), and an
#: integer beyond 2**63: our server keeps it exact, though the protocol does
#: not promise it (JSON implementations may not).
SAMPLE_VALUES: list[Any] = [*testing.SAMPLE_VALUES, 12345678901234567890]


async def until(condition: Callable[[], object], within: float = 5 * UNIT) -> None:
    """Wait until ``condition()`` (about server state in this process) is true.

    Server state has no event to await, so this looks every few milliseconds.
    """
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers with custom settings: ``server = await make_server(history_size=3)``."""
    servers: list[Server] = []

    async def factory(**changes: Any) -> Server:
        settings = Settings(host="127.0.0.1", port=0).replace(**changes)
        server = Server(settings)
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.aclose()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    """A server with default settings."""
    return await make_server()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: tests that need a service must run there."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("CI") and skipped:
        print(f"\nCI: {len(skipped)} test(s) skipped; in CI every test must run.")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Redis servers of the tests' own (tests/rediskit.py); never the shared one on 6379.
# Without redis-server (and redis-cli) these fixtures skip, which CI counts as a failure.


def _require_redis() -> None:
    reason = redis_missing()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A fresh, started Redis for this test only: stop, restart, pause it at will."""
    _require_redis()
    with RedisProcess() as redis:
        yield redis


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisProcess]:
    """One Redis for the whole session; tests take it through ``redis_url``. Do not stop it."""
    _require_redis()
    with RedisProcess() as redis:
        yield redis


@pytest.fixture
def redis_url(shared_redis: RedisProcess) -> str:
    """The session's Redis, emptied (FLUSHALL) for this test: ``redis://127.0.0.1:PORT/0``."""
    if shared_redis.paused:
        shared_redis.resume()
    if not shared_redis.running:  # a test stopped it after all: bring it back
        shared_redis.restart()
    shared_redis.command("FLUSHALL")
    return shared_redis.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """One local Redis Cluster (three masters) for the session; see ``redis_cluster_url``."""
    _require_redis()
    with RedisClusterProcesses() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    """The session's cluster with every master emptied; the URL of its first node."""
    redis_cluster.flushall()
    return redis_cluster.startup_url


class HeldBroker(MemoryBroker):
    """A memory broker whose reads wait in ``prepare`` until :attr:`gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    def ready(self, starts: Mapping[str, Start]) -> bool:
        return self.gate.is_set()

    async def prepare(self, starts: Mapping[str, Start]) -> None:
        self.waiting += 1
        await self.gate.wait()
