"""The tidings command: serve, config, publish, subscribe, conformance, demo and bridge."""

# The module docstring is `tidings --help`'s description: plain words, no reST markup.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from tidings import logs
from tidings.backoff import Backoff
from tidings.core.idempotency import check_idempotency_key
from tidings.core.names import check_channel
from tidings.errors import BadRequest, TidingsError, UsageError
from tidings.extras import missing_extra
from tidings.settings import Settings, check_broker, check_transports

if TYPE_CHECKING:
    from tidings.configuration import Loaded
from tidings.wire import jsonvalue

if TYPE_CHECKING:
    from tidings.server import Server
    from tidings.server.workermetrics import WorkerShare

DEFAULT_URL = "http://127.0.0.1:8000"
LOG_LEVELS = ("debug", "info", "warning", "error")
API_KEY_HELP = ("the server's API key, sent as Authorization: Bearer "
                "(default $TIDINGS_API_KEY)")
#: How often `tidings publish` retries a network error or a 503 (with one idempotency key).
PUBLISH_RETRIES = 3
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

    serve = commands.add_parser(
        "serve", help="run the server",
        description="Run the server. Settings come from flags, then TIDINGS_<KEY> "
                    "environment variables, then the config file, then defaults "
                    "(docs/operations.md); `tidings config` shows the result.")
    _add_settings_flags(serve)
    serve.add_argument("--workers", default="1", metavar="N",
                       help="server processes on the port, supervised by this one "
                            "(default 1; 'auto': one per core; more than 1 needs Redis)")
    _add_log_flags(serve, "info")
    serve.set_defaults(run=run_serve)
    _add_config_command(commands)

    publish = commands.add_parser(
        "publish", help="publish one JSON message",
        description="Publish one JSON message and print the server's answer. With access "
                    "control on, the API key comes from --api-key or $TIDINGS_API_KEY.")
    publish.add_argument("channel", help="the channel: letters, digits and _ - . : @")
    publish.add_argument("json", nargs="?", help="the JSON value; read from stdin if absent")
    publish.add_argument("--url", default=os.environ.get("TIDINGS_URL", DEFAULT_URL),
                         help=f"server URL (default $TIDINGS_URL or {DEFAULT_URL})")
    publish.add_argument("--api-key", default=os.environ.get("TIDINGS_API_KEY"),
                         help=API_KEY_HELP)
    publish.add_argument("--retries", type=int, default=PUBLISH_RETRIES,
                         help="retries after a network error or a 503, with the same "
                              f"idempotency key (default {PUBLISH_RETRIES})")
    publish.add_argument("--idempotency-key",
                         help="the key the retries share (default: a random one)")
    publish.set_defaults(run=run_publish)

    subscribe = commands.add_parser(
        "subscribe", help="print each message of channels as one JSON line, as it arrives")
    subscribe.add_argument("channels", nargs="+", metavar="CHANNEL")
    subscribe.add_argument("--url", default=os.environ.get("TIDINGS_URL", DEFAULT_URL),
                           help=f"server URL (default $TIDINGS_URL or {DEFAULT_URL})")
    subscribe.add_argument("--transport", default="auto",
                           choices=["auto", "websocket", "sse", "longpoll", "poll"])
    subscribe.add_argument("--since", help="resume after this id (0: oldest retained)")
    subscribe.set_defaults(run=run_subscribe)

    conformance = commands.add_parser(
        "conformance", help="check that the server at URL keeps the tidings protocol")
    conformance.add_argument("url")
    conformance.add_argument("--only", action="append", metavar="CHECK",
                             help="run only this check; repeat for several")
    conformance.add_argument("--heartbeat-timeout", type=float, default=30.0,
                             help="seconds to wait for a heartbeat (default 30)")
    conformance.add_argument("--node", action="append", dest="nodes", default=[], metavar="URL",
                             help="the URL of another node of the same deployment (not of "
                                  "the load balancer), for the across_nodes check; repeat "
                                  "for several")
    conformance.set_defaults(run=run_conformance)

    demo = commands.add_parser(
        "demo", help="run the server with a simulated stock feed and pages that show it")
    demo.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks one)")
    demo.add_argument("--rate", type=float, default=5.0,
                      help="ticks published per second on channel 'stocks' (default 5)")
    demo.add_argument("--config", help="TOML config file (see docs/operations.md)")
    demo.add_argument("--database", metavar="DSN",
                      help="run the feed through PostgreSQL: prices in a table, published "
                           "by the bridge (docs/bridge.md)")
    demo.add_argument("--transports", metavar="LIST",
                      help="reading techniques to serve, comma-separated "
                           "(default websocket,sse,longpoll,poll)")
    _add_log_flags(demo, "warning")
    demo.set_defaults(run=run_demo, history_size=None, history_ttl=None, cors_origins=None)
    _add_bridge(commands)
    return parser


def _add_settings_flags(command: argparse.ArgumentParser) -> None:
    """The flags of ``serve`` that set settings (``tidings config`` takes them too)."""
    command.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    command.add_argument("--port", type=int,
                         help="port to listen on (default 8000; 0 picks one)")
    command.add_argument("--config", help="TOML config file (default $TIDINGS_CONFIG; see "
                                          "docs/operations.md)")
    command.add_argument("--history-size", type=int, help="messages kept per channel (1000)")
    command.add_argument("--history-ttl", type=float, help="seconds a message is kept (3600)")
    command.add_argument("--cors-origin", action="append", dest="cors_origins",
                         help="allowed browser origin; repeat for several ('*' allows all)")
    command.add_argument("--transports", metavar="LIST",
                         help="reading techniques to serve, comma-separated "
                              "(default websocket,sse,longpoll,poll)")
    command.add_argument("--broker", metavar="URL",
                         help="where channel logs live: memory (default) or "
                              "redis://HOST:PORT/DB, shared by several nodes")


def _add_config_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``tidings config``: the effective configuration, checked (docs/operations.md)."""
    config = commands.add_parser(
        "config", help="check the configuration and print it, with where each value "
                       "comes from",
        description="Print the configuration `tidings serve` would run with, given the same "
                    "flags, environment and config file: each value with its source (flag, "
                    "env, file or default), secrets masked. Exits 2 on any error, so that a "
                    "deploy can check a configuration before using it.")
    _add_settings_flags(config)
    _add_log_flags(config, "info")
    config.add_argument("--format", choices=("toml", "json"), default="toml",
                        help="toml (a config file, sources in comments; default) or json")
    config.set_defaults(run=run_config)


def run_config(args: argparse.Namespace) -> int:
    """``tidings config``: print the effective configuration, or exit 2 naming every error."""
    from tidings.configuration import describe, describe_json
    from tidings.server.auth import Authenticator

    loaded = load_configuration(args)
    Authenticator(loaded.settings.auth)  # reads the key file: its errors are config errors
    print(describe_json(loaded) if args.format == "json" else describe(loaded), end="")
    return 0


def _add_log_flags(command: argparse.ArgumentParser, default: str) -> None:
    """``--log-level`` and ``--log-format`` of ``serve`` and ``demo``: settings too
    (``log_level``, ``log_format``), so flags win over the environment and the file."""
    command.add_argument("--log-level", choices=LOG_LEVELS,
                         help="what the server logs to stderr; the setting log_level "
                              f"(default {default})")
    command.add_argument("--log-format", choices=("text", "json"),
                         help="text, or json: one object per line; the setting log_format "
                              "(default text)")


def configure_logging(loaded: Loaded, default_level: str) -> None:
    """Set up logging from the flags and settings (tidings/logs.py); secrets are scrubbed."""
    settings = loaded.settings
    level = settings.log_level
    if loaded.source(("server", "log_level")) == "default":
        level = default_level
    auth = settings.auth
    logs.configure(level, settings.log_format, access_log=settings.access_log,
                   secrets=(auth.api_key, auth.jwt_hs256_secret, settings.hooks.secret,
                            os.environ.get("TIDINGS_API_KEY")))


def _add_log_level(command: argparse.ArgumentParser, default: str) -> None:
    """``--log-level``; its default differs by command and the help says which."""
    command.add_argument("--log-level", default=default, choices=LOG_LEVELS,
                         help=f"what the server logs to stderr (default {default})")


def _add_bridge(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``tidings bridge install|uninstall|status|run``: see docs/bridge.md."""
    bridge = commands.add_parser(
        "bridge", help="publish PostgreSQL row changes into channels (docs/bridge.md)")

    def usage(_args: argparse.Namespace) -> int:
        bridge.print_help()
        return 2

    bridge.set_defaults(run=usage)
    actions = bridge.add_subparsers(dest="bridge_command", metavar="ACTION")

    def action(name: str, help_text: str, run: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("dsn", metavar="DSN",
                         help="PostgreSQL connection string, e.g. postgresql://user@host/db")
        sub.add_argument("--schema", default="tidings",
                         help="the schema of the outbox (default tidings)")
        sub.set_defaults(run=lambda args: _bridge_command(run, args))
        return sub

    install = action("install", "capture a table's changes (idempotent)", "run_install")
    install.add_argument("--table", required=True, help="the table, or schema.table")
    install.add_argument("--channel", required=True, metavar="TEMPLATE",
                         help="channel template over the row's columns, e.g. 'prices:{symbol}'")
    uninstall = action("uninstall", "stop capturing a table (all tables and the schema "
                       "without --table)", "run_uninstall")
    uninstall.add_argument("--table", help="the table, or schema.table")
    action("status", "list the captured tables and the changes waiting", "run_status")
    run = action("run", "publish the changes to a running server over HTTP", "run_bridge")
    run.add_argument("--url", default=os.environ.get("TIDINGS_URL", DEFAULT_URL),
                     help=f"server URL (default $TIDINGS_URL or {DEFAULT_URL})")
    run.add_argument("--api-key", default=os.environ.get("TIDINGS_API_KEY"),
                     help=API_KEY_HELP)
    _add_log_level(run, "info")


def _bridge_command(name: str, args: argparse.Namespace) -> int:
    try:
        from tidings.bridges.postgres import commands
    except ImportError as exc:
        raise missing_extra("the bridge", "postgres", exc) from None
    code: int = getattr(commands, name)(args)
    return code


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings from flags over ``TIDINGS_*`` variables over the file over defaults."""
    return load_configuration(args).settings


def load_configuration(args: argparse.Namespace) -> Loaded:
    """:func:`load_settings`, with where each value came from (``tidings config``)."""
    from tidings.configuration import load

    # The file's and the environment's values are checked under their own names (load).
    if args.history_size is not None and args.history_size < 1:
        raise UsageError("--history-size must be at least 1")
    if args.history_ttl is not None and args.history_ttl <= 0:
        raise UsageError("--history-ttl must be positive")
    if getattr(args, "broker", None) is not None:
        try:
            check_broker(args.broker)
        except UsageError as exc:
            raise UsageError(f"--broker: {exc}") from None
    flags = {
        "host": (args.host, "--host"), "port": (args.port, "--port"),
        "history_size": (args.history_size, "--history-size"),
        "history_ttl": (args.history_ttl, "--history-ttl"),
        "cors_origins": (tuple(args.cors_origins) if args.cors_origins else None,
                         "--cors-origin"),
        "transports": (_transport_list(args.transports) if args.transports is not None
                       else None, "--transports"),
        "broker": (getattr(args, "broker", None), "--broker"),
        "log_level": (getattr(args, "log_level", None), "--log-level"),
        "log_format": (getattr(args, "log_format", None), "--log-format"),
    }
    return load(args.config, os.environ, flags)


def _transport_list(text: str) -> tuple[str, ...]:
    """``--transports websocket,sse`` → ``("websocket", "sse")``; raise :class:`UsageError`."""
    transports = tuple(name.strip() for name in text.split(",") if name.strip())
    try:
        check_transports(transports)
    except UsageError as exc:
        raise UsageError(f"--transports: {exc}") from None
    return transports


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the server's ``main`` on uvloop where it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        asyncio.run(main)
    else:
        uvloop.run(main)


def run_serve(args: argparse.Namespace) -> int:
    loaded = load_configuration(args)
    configure_logging(loaded, "info")
    settings = loaded.settings
    from tidings.server.workers import check_workers, worker_count

    workers = worker_count(args.workers)
    check_workers(settings, workers)
    try:
        if workers > 1:
            return _run_workers(settings, workers)
        run_loop(serve(settings))
    except OSError as exc:
        logs.notice(f"cannot listen on {settings.host}:{settings.port}: {exc}", logging.ERROR)
        return 1
    return 0


def _run_workers(settings: Settings, count: int) -> int:
    """``--workers N``: the parent supervises, each worker runs :func:`serve`.

    See server/workers.py and docs/operations.md.
    """
    from tidings.server.workermetrics import WorkerShare
    from tidings.server.workers import Supervisor, worker_health

    def worker(index: int, sock: socket.socket, ready: Callable[[], None]) -> None:
        def started(server: Server) -> None:
            server.health_extra["worker"] = worker_health(index, count)
            ready()

        # The bridges run in worker 0 only (restarted as worker 0): one publisher per outbox.
        mine = supervisor.settings
        run_loop(serve(mine if index == 0 else mine.replace(bridges=()), sock=sock,
                       on_started=started,
                       metrics_share=WorkerShare(supervisor.shared, index, count)))

    def serving(url: str) -> None:
        print(f"tidings serving on {url}", flush=True)

    supervisor = Supervisor(settings, count, worker, serving)
    return supervisor.run()


async def serve(settings: Settings, *, sock: socket.socket | None = None,
                on_started: Callable[[Server], None] | None = None,
                metrics_share: WorkerShare | None = None) -> None:
    """Serve until SIGINT or SIGTERM; ``on_started(server)`` replaces the ``serving on`` line.
    ``metrics_share``: a worker's part of the scrape of all workers (``--workers``)."""
    from tidings.server import Server

    server = Server(settings, sock=sock)
    server.metrics_share = metrics_share
    await server.start()
    if settings.bridges:
        try:
            from tidings.bridges.postgres import attach

            attach(server, settings.bridges)
        except ImportError as exc:
            await server.aclose()
            raise missing_extra("[[bridges]]", "postgres", exc) from None
        except UsageError:
            await server.aclose()
            raise
    # Connections and parked requests are many objects that live for seconds to
    # hours; rescanning them often costs more than it frees (a quarter of the CPU
    # at 10,000 long polls, docs/benchmarks.md). Start-up objects are frozen out
    # of the collector's way, and young collections run less often.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    await _serve_until_signal(server, on_started)


async def _serve_until_signal(server: Any,
                              on_started: Callable[[Server], None] | None = None) -> None:
    """Serve until SIGTERM (a rolling restart: drain over ``drain_period``, then close) or
    SIGINT (close at once); a second signal while draining closes at once.
    ``on_started(server)`` replaces the ``serving on`` line."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
    # Printed once the signals are handled: whoever waits for this line may stop us at once.
    if on_started is not None:
        on_started(server)
    else:
        print(f"tidings serving on {server.url}", flush=True)
    first = await signals.get()
    if first != signal.SIGTERM or not server.registry.streams():
        logs.notice("shutting down")
        await server.aclose()
        return
    logs.notice(f"draining: streams move to other nodes over {server.settings.drain_period:g} s "
                "(a second signal stops at once)")
    draining = asyncio.ensure_future(server.drain())
    second = asyncio.ensure_future(signals.get())
    await asyncio.wait({draining, second}, return_when=asyncio.FIRST_COMPLETED)
    if not draining.done():
        logs.notice("shutting down")
        await server.aclose()
    second.cancel()
    await asyncio.gather(draining, second, return_exceptions=True)


def run_demo(args: argparse.Namespace) -> int:
    """``tidings demo``: see docs/demo.md."""
    from tidings.demo import run_demo as serve_demo

    loaded = load_configuration(args)
    configure_logging(loaded, "warning")
    settings = loaded.settings
    if args.database is not None:
        try:
            import tidings.demo.database  # noqa: F401 - only to fail early without psycopg
        except ImportError as exc:
            raise missing_extra("tidings demo --database", "postgres", exc) from None
    try:
        run_loop(serve_demo(settings, args.rate, args.database))
    except OSError as exc:
        logs.notice(f"cannot listen on {settings.host}:{settings.port}: {exc}", logging.ERROR)
        return 1
    return 0


def run_publish(args: argparse.Namespace) -> int:
    try:
        channel = check_channel(args.channel)  # as tidings.Publisher and tidings subscribe do
    except TidingsError as exc:
        raise UsageError(str(exc)) from None
    text = args.json if args.json is not None else sys.stdin.read()
    try:
        jsonvalue.decode(text, "the message")  # as strict as the server: no NaN or Infinity
    except BadRequest as exc:
        raise UsageError(str(exc)) from None
    url = f"{args.url.rstrip('/')}/channels/{quote(channel, safe='')}"
    if args.retries < 0:
        raise UsageError("--retries must be 0 or more")
    key = args.idempotency_key or secrets.token_urlsafe(16)
    try:
        check_idempotency_key(key)
    except BadRequest as exc:
        raise UsageError(str(exc)) from None
    # The same key on every attempt: a retry of a publish that was stored
    # (its answer lost) answers the first id instead of storing it twice.
    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    api_key = args.api_key
    if api_key:  # the server's key, when its access control is on (docs/security.md)
        headers["Authorization"] = f"Bearer {api_key}"
    backoff = Backoff(initial=0.2, maximum=5.0)
    for attempt in range(args.retries + 1):
        if attempt:
            time.sleep(backoff.delay(attempt - 1))
        try:
            response = httpx.post(url, content=text.encode(), headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            failure = f"cannot reach {args.url}: {exc}"
            continue
        if response.status_code == 503:
            failure = f"{response.status_code}: {response.text}"
            continue
        if response.status_code not in (200, 201):
            print(f"tidings: {response.status_code}: {response.text}", file=sys.stderr)
            return 1
        print(response.text)
        return 0
    print(f"tidings: {failure} (after {args.retries + 1} attempts)", file=sys.stderr)
    return 1


def run_subscribe(args: argparse.Namespace) -> int:
    """Messages on stdout (one JSON line each); gaps, reconnects and technique changes on stderr.

    Ends with 0 on SIGINT or SIGTERM, handled as ``serve`` does: a shell starts a
    background job (``tidings subscribe … &``) with SIGINT ignored, so Python's
    ``KeyboardInterrupt`` would never come.
    """
    try:
        return asyncio.run(_subscribe(args))
    except KeyboardInterrupt:  # a signal before the loop handles them
        return 0


async def _subscribe(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    reading = asyncio.ensure_future(_print_messages(args))
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, reading.cancel)
    try:
        return await reading
    except asyncio.CancelledError:
        if reading.cancelled():  # a signal: a normal way to stop reading
            return 0
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


async def _print_messages(args: argparse.Namespace) -> int:
    """Subscribe and print until the subscription ends (1 if it failed) or is cancelled."""
    from tidings.client import Connected, Disconnected, Gap, StatusEvent, TransportChanged
    from tidings.client import connect as connect_client
    from tidings.errors import ClientError

    def on_status(event: StatusEvent) -> None:
        if isinstance(event, Connected):
            note = f"connected over {event.transport}"
        elif isinstance(event, Disconnected):
            note = (f"disconnected ({event.reason}); reconnecting in "
                    f"{event.retry_in:.1f} s")
        elif isinstance(event, TransportChanged):
            note = f"switched from {event.previous} to {event.transport} ({event.reason})"
        print(f"tidings: {note}", file=sys.stderr, flush=True)

    try:
        async with connect_client(args.url, args.transport, on_status=on_status) as client:
            async for item in client.subscribe(*args.channels, since=args.since):
                if isinstance(item, Gap):
                    missed = "unknown" if item.missed is None else item.missed
                    print(f"tidings: gap on {item.channel}: {missed} message(s) missed "
                          f"({item.reason}), from {item.from_} to {item.to}",
                          file=sys.stderr, flush=True)
                    continue
                line = {"channel": item.channel, "id": item.id, "data": item.data,
                        "time": item.time}
                sys.stdout.write(jsonvalue.encode(line).decode() + "\n")
                sys.stdout.flush()
    except ClientError as exc:
        print(f"tidings: {exc}", file=sys.stderr)
        return 1
    return 0


def run_conformance(args: argparse.Namespace) -> int:
    from tidings import conformance

    ok = asyncio.run(conformance.run(args.url, only=args.only,
                                     heartbeat_timeout=args.heartbeat_timeout, nodes=args.nodes))
    return 0 if ok else 1


__all__ = ["TidingsError", "main"]
