"""Bridges inside ``tidings serve``: tasks of the server, publishing into its broker."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tidings.bridges.postgres.bridge import PostgresBridge
from tidings.bridges.sinks import BrokerSink
from tidings.errors import UsageError
from tidings.settings import BridgeConfig

if TYPE_CHECKING:
    from tidings.server.app import Server


def attach(server: Server, configs: Sequence[BridgeConfig]) -> list[PostgresBridge]:
    """Run a bridge per entry as a background task of ``server``; report them in ``/healthz``.

    Until every bridge has installed its capture, ``/healthz`` says
    ``"status": "starting"`` with ``503``, so a readiness probe keeps the node
    (and the applications that wait for it) out until changes are captured.

    Raises :class:`UsageError` at once for a bad schema name or channel
    template. A bridge that fails later (a table without a primary key, say)
    logs why and shows ``"state": "failed"`` under ``bridges`` in ``/healthz``;
    the server keeps serving.
    """
    sink = BrokerSink(server.broker, server.settings.max_message_size)
    bridges = [PostgresBridge(config.dsn, sink, schema=config.schema, tables=config.tables)
               for config in configs]
    server.health_extra["bridges"] = lambda: [bridge.health() for bridge in bridges]
    server.starting["bridges"] = lambda: not all(b.installed.is_set() for b in bridges)
    for bridge in bridges:
        server.spawn(_run(bridge), background=True)
    return bridges


async def _run(bridge: PostgresBridge) -> None:
    with contextlib.suppress(UsageError):  # logged by the bridge, and shown in /healthz
        await bridge.run()
