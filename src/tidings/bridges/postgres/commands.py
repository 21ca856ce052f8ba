"""``tidings bridge install|uninstall|status|run``: the command-line side of the bridge."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import psycopg

from tidings.bridges.postgres.bridge import PostgresBridge
from tidings.bridges.postgres.install import (
    check_sources,
    install,
    is_installed,
    pending_count,
    uninstall,
)
from tidings.bridges.sinks import HttpSink

#: Seconds a one-shot command (install, uninstall, status) waits for the database.
CONNECT_TIMEOUT = 10


def run_install(args: argparse.Namespace) -> int:
    async def go(conn: psycopg.AsyncConnection) -> None:
        source = await install(conn, args.table, args.channel, args.schema)
        print(f"capturing {source.table} into {args.schema}.outbox; "
              f"channel {source.template!r}")
    return _with_database(args.dsn, go)


def run_uninstall(args: argparse.Namespace) -> int:
    async def go(conn: psycopg.AsyncConnection) -> None:
        pending = await uninstall(conn, args.table, args.schema)
        if args.table is not None:
            print(f"no longer capturing {args.table}"
                  + (f"; {pending} change(s) still to publish" if pending else ""))
        else:
            print(f"removed schema {args.schema}"
                  + (f"; {pending} unpublished change(s) dropped" if pending else ""))
    return _with_database(args.dsn, go)


def run_status(args: argparse.Namespace) -> int:
    async def go(conn: psycopg.AsyncConnection) -> None:
        if not await is_installed(conn, args.schema):
            print(f"nothing installed in schema {args.schema}")
            return
        for source in await check_sources(conn, args.schema):
            print(f"{source.table}: channel {source.template!r}")
        print(f"{await pending_count(conn, args.schema)} change(s) waiting to be published")
    return _with_database(args.dsn, go)


def _with_database(dsn: str,
                   action: Callable[[psycopg.AsyncConnection], Awaitable[None]]) -> int:
    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True,
                                                     connect_timeout=CONNECT_TIMEOUT)
        async with conn:
            await action(conn)

    try:
        asyncio.run(main())
    except psycopg.Error as exc:
        print(f"tidings: database: {str(exc).strip()}", file=sys.stderr)
        return 1
    return 0


def run_bridge(args: argparse.Namespace) -> int:
    """Publish until SIGINT or SIGTERM; exit 2 on a configuration error."""
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    if args.log_level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per publish
    sink = HttpSink(args.url, api_key=args.api_key)
    bridge = PostgresBridge(args.dsn, sink, schema=args.schema)
    asyncio.run(_run(bridge, sink))
    return 0


async def _run(bridge: PostgresBridge, sink: HttpSink) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, task.cancel)
    print(f"tidings: bridge from {bridge.where} to {sink.url}", file=sys.stderr, flush=True)
    try:
        await bridge.run()
    except asyncio.CancelledError:
        print("tidings: bridge stopped", file=sys.stderr, flush=True)
    finally:
        await sink.aclose()
