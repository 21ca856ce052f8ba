"""Shared fixtures: a real server on port 0 in the test's event loop.

Timeouts are multiples of ``UNIT`` seconds; raise ``TIDINGS_TEST_UNIT`` on a
slow machine instead of editing tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from rediskit import RedisClusterProcesses, RedisProcess, redis_missing
from tidings import Server, Settings

UNIT = float(os.environ.get("TIDINGS_TEST_UNIT", "1.0"))

ServerFactory = Callable[..., Awaitable[Server]]


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
