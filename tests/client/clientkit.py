"""Helpers for the client tests: fast settings, restarts, bounded waits.

Every wait is bounded by a multiple of ``UNIT`` seconds (``TIDINGS_TEST_UNIT``).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import tidings
from tidings import Server
from tidings.testing import UNIT

TECHNIQUES = ["websocket", "sse", "longpoll", "poll"]

#: Client settings that keep tests fast: short backoff, quick polls.
FAST: dict[str, Any] = {
    "backoff": tidings.Backoff(initial=0.02, maximum=0.2),
    "poll_interval": 0.02,
    "connect_timeout": 2 * UNIT,
}


def fast_client(url: str, transport: str = "auto", **options: Any) -> tidings.Client:
    return tidings.connect(url, transport, **{**FAST, **options})


async def take(subscription: tidings.Subscription, count: int,
               within: float = 5 * UNIT) -> list[tidings.Message | tidings.Gap]:
    """The next ``count`` items of ``subscription``, within ``within`` seconds."""
    items: list[tidings.Message | tidings.Gap] = []
    async with asyncio.timeout(within):
        while len(items) < count:
            items.append(await anext(subscription))
    return items


async def stop(server: Server) -> tuple[Server, int]:
    """Close ``server`` (its clients are cut off); return it and the port to reuse."""
    port = server.port
    await server.aclose()
    return server, port


async def start_again(old: Server, port: int, *, same_log: bool = True) -> Server:
    """A new server on ``port``; with ``same_log`` it serves ``old``'s channel logs."""
    settings = old.settings.replace(port=port)
    server = Server(settings, broker=old.broker if same_log else None)
    await server.start()
    return server


def free_port() -> int:
    """A port nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def ids(items: list[Any]) -> list[str]:
    return [item.id for item in items]


def seqs(items: list[Any]) -> list[int]:
    return [int(item.id.rsplit("-", 1)[1]) for item in items]


class StatusLog:
    """An ``on_status`` callback that records events and lets tests await them."""

    def __init__(self) -> None:
        self.events: list[tidings.client.StatusEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: tidings.client.StatusEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, kind: type, **fields: Any) -> Any:
        """The first event (old or new) of ``kind`` whose attributes match ``fields``.

        Waits at most 5 UNIT.
        """
        async with asyncio.timeout(5 * UNIT):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if isinstance(event, kind) and all(
                        getattr(event, name) == value for name, value in fields.items()
                    ):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    def clear(self) -> None:
        self.events.clear()
