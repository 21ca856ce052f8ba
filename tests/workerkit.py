"""A server that serves as one of a node's workers, in this process (tests of --workers)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tidings import Server, Settings
from tidings.server.workermetrics import WorkerShare


@contextlib.asynccontextmanager
async def worker_server(directory: Path, index: int, count: int = 2,
                        ) -> AsyncIterator[Server]:
    """A server that serves as worker ``index`` of ``count`` (sharing ``directory``)."""
    server = Server(Settings(host="127.0.0.1", port=0))
    server.metrics_share = WorkerShare(directory, index, count)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()
