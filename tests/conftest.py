"""Shared fixtures: a real server on port 0 in the test's event loop.

Timeouts are multiples of ``UNIT`` seconds; raise ``TIDINGS_TEST_UNIT`` on a
slow machine instead of editing tests.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

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
