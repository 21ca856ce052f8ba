"""``tidings demo``: the server, a simulated stock feed, and two pages that show it.

* ``/`` — a live price table and a chart of one symbol, read with the browser
  client (``/tidings.js``) over whichever technique works;
* ``/lab`` — the four techniques side by side on the same feed: messages,
  delivery latency, HTTP requests and bytes of each.

The pages are plain files in ``static/``: no build step, no CDN, they work offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from pathlib import Path

from tidings import logs
from tidings.demo.feed import CHANNEL, DEFAULT_RATE, MAX_RATE, Market, run_feed
from tidings.errors import UsageError
from tidings.server import Server
from tidings.settings import TRANSPORTS, Settings

STATIC = Path(__file__).parent / "static"
#: Page URLs that are not simply ``/<file name>``.
ROUTES = {"/": "index.html", "/lab": "lab.html"}


def pages() -> dict[str, Path]:
    """URL path -> file for every demo page and asset (``Server(pages=...)``)."""
    files = {f"/{path.name}": path for path in sorted(STATIC.iterdir()) if path.is_file()}
    files.update({url: STATIC / name for url, name in ROUTES.items()})
    return files


class Demo:
    """A running demo: :attr:`server` and its :attr:`feed` task.

    Close it with :meth:`aclose` (or ``async with``); the feed is a background
    task of the server, cancelled when the server closes.
    """

    def __init__(self, server: Server, feed: asyncio.Task[None]) -> None:
        self.server = server
        self.feed = feed

    @property
    def url(self) -> str:
        return self.server.url

    async def aclose(self) -> None:
        await self.server.aclose()

    async def __aenter__(self) -> Demo:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def start_demo(settings: Settings, rate: float = DEFAULT_RATE,
                     market: Market | None = None, database: str | None = None) -> Demo:
    """Start a server with the demo pages and the feed (a task the server owns).

    With ``database`` (a PostgreSQL DSN) the feed updates a table and the
    PostgreSQL bridge publishes the changes (:mod:`tidings.demo.database`).
    The caller must ``await demo.aclose()``.
    """
    if not 0 < rate <= MAX_RATE:
        raise UsageError(f"--rate must be above 0 and at most {MAX_RATE:g} ticks a second")
    market = Market() if market is None else market
    if database is not None:
        from tidings.demo import database as through_postgres

        try:
            await through_postgres.prepare(database, market)
        except Exception as exc:  # psycopg's errors, and a malformed DSN
            raise UsageError(f"cannot prepare the demo's table in {database}: {exc}") from None
    server = Server(with_presence(settings), pages=pages())
    await server.start()
    if database is None:
        feed = server.spawn(run_feed(server, rate, market), background=True)
    else:
        through_postgres.attach_bridge(server, database)
        feed = server.spawn(through_postgres.run_database_feed(database, rate, market),
                            background=True)
    return Demo(server, feed)


def with_presence(settings: Settings) -> Settings:
    """``settings`` with presence on for the demo's channel (its pages show "N watching"
    and the lab's four members), unless its namespace already says (on Redis too: the
    count is over every node)."""
    if settings.presence_of(CHANNEL).enabled:
        return settings
    return dataclasses.replace(settings, presence=True)


async def run_demo(settings: Settings, rate: float = DEFAULT_RATE,
                   database: str | None = None) -> None:
    """Serve the demo until SIGINT or SIGTERM, then close cleanly."""
    demo = await start_demo(settings, rate, database=database)
    server = demo.server
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # Printed once the signals are handled: whoever waits for this line may stop us at once.
    only = "" if set(settings.transports) == set(TRANSPORTS) else (
        f"; serving only {', '.join(settings.transports)}")
    print(f"tidings demo on {server.url}/\n"
          f"  the four techniques side by side: {server.url}/lab\n"
          f"  {rate:g} ticks a second on channel {CHANNEL!r}{only}"
          f"{' through PostgreSQL' if database else ''}; Ctrl-C to stop", flush=True)
    await stop.wait()
    logs.notice("shutting down")
    await demo.aclose()


__all__ = ["Demo", "pages", "run_demo", "start_demo"]
