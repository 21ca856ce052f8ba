"""The ``tidings`` command: ``serve`` and ``publish``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence

import httpx

from tidings.errors import BadRequest, TidingsError, UsageError
from tidings.settings import Settings
from tidings.wire import jsonvalue

DEFAULT_URL = "http://127.0.0.1:8000"
#: Allocations between young garbage collections in ``tidings serve`` (Python's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
    except UsageError as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidings", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server (in-memory broker)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks one)")
    serve.add_argument("--config", help="TOML config file (see docs/operations.md)")
    serve.add_argument("--history-size", type=int, help="messages kept per channel (1000)")
    serve.add_argument("--history-ttl", type=float, help="seconds a message is kept (3600)")
    serve.add_argument("--cors-origin", action="append", dest="cors_origins",
                       help="allowed browser origin; repeat for several ('*' allows all)")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    serve.set_defaults(run=run_serve)

    publish = commands.add_parser("publish", help="publish one JSON message")
    publish.add_argument("channel")
    publish.add_argument("json", nargs="?", help="the JSON value; read from stdin if absent")
    publish.add_argument("--url", default=os.environ.get("TIDINGS_URL", DEFAULT_URL),
                         help=f"server URL (default $TIDINGS_URL or {DEFAULT_URL})")
    publish.set_defaults(run=run_publish)
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_file(args.config) if args.config else Settings()
    settings = settings.replace(
        host=args.host, port=args.port, history_size=args.history_size,
        history_ttl=args.history_ttl,
        cors_origins=tuple(args.cors_origins) if args.cors_origins else None,
    )
    if settings.history_size < 1:
        raise UsageError("--history-size must be at least 1")
    if settings.history_ttl <= 0:
        raise UsageError("--history-ttl must be positive")
    return settings


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    settings = load_settings(args)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(settings))
    except OSError as exc:
        print(f"tidings: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def serve(settings: Settings) -> None:
    from tidings.server import Server

    server = Server(settings)
    await server.start()
    # Connections and parked requests are many objects that live for seconds to
    # hours; rescanning them often costs more than it frees (a quarter of the CPU
    # at 10,000 long polls, docs/benchmarks.md). Start-up objects are frozen out
    # of the collector's way, and young collections run less often.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # Printed once the signals are handled: whoever waits for this line may stop us at once.
    print(f"tidings serving on {server.url}", flush=True)
    await stop.wait()
    print("tidings: shutting down", file=sys.stderr, flush=True)
    await server.aclose()


def run_publish(args: argparse.Namespace) -> int:
    text = args.json if args.json is not None else sys.stdin.read()
    try:
        jsonvalue.decode(text, "the message")  # as strict as the server: no NaN or Infinity
    except BadRequest as exc:
        raise UsageError(str(exc)) from None
    url = f"{args.url.rstrip('/')}/channels/{args.channel}"
    try:
        response = httpx.post(url, content=text.encode(),
                              headers={"Content-Type": "application/json"}, timeout=10)
    except httpx.HTTPError as exc:
        print(f"tidings: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 201:
        print(f"tidings: {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    print(response.text)
    return 0


__all__ = ["TidingsError", "main"]
