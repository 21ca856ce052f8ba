"""Every setting and limit of the server, with its default, in one place.

Settings come from defaults, then a TOML config file (``tidings serve --config``),
then command-line flags. docs/operations.md lists them for operators.

Config file::

    [server]
    host = "0.0.0.0"
    port = 8000
    history_size = 1000          # messages kept per channel
    history_ttl = 3600           # seconds a message is kept
    cors_origins = ["https://example.com"]
    transports = ["websocket", "sse", "longpoll", "poll"]   # any subset

    [namespaces.prices]          # channels named "prices:..."
    history_size = 100
    history_ttl = 60
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidings.core.log import Retention
from tidings.core.names import namespace_of
from tidings.errors import UsageError

#: The reading techniques, by the names used everywhere (settings, CLI, clients).
TRANSPORTS = ("websocket", "sse", "longpoll", "poll")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000

    # Retention, per channel; namespaces override it.
    history_size: int = 1000
    history_ttl: float = 3600.0
    namespaces: dict[str, Retention] = field(default_factory=dict)

    # Request limits.
    max_message_size: int = 64 * 1024  #: bytes in a published body or WebSocket message
    max_url_length: int = 8 * 1024  #: bytes in the request target
    max_header_size: int = 16 * 1024  #: bytes in all request headers together
    max_headers: int = 100  #: header fields in a request
    max_channels_per_subscription: int = 64  #: channels in one subscription or WebSocket
    header_timeout: float = 10.0  #: seconds a client may take to send request headers
    keep_alive_timeout: float = 60.0  #: seconds an idle keep-alive connection is kept

    # Reading.
    poll_limit: int = 100  #: messages in a poll answer when ``limit`` is not given
    max_poll_limit: int = 1000  #: the largest ``limit`` accepted
    max_wait: float = 60.0  #: the longest long-poll wait, in seconds (longer asks are cut)

    # Long-lived connections.
    heartbeat_interval: float = 20.0  #: seconds between SSE comments / WebSocket pings
    sse_retry_ms: int = 2000  #: the ``retry:`` hint sent to EventSource
    output_buffer_limit: int = 256 * 1024  #: unsent bytes before a subscriber is cut off

    cors_origins: tuple[str, ...] = ("*",)
    #: The reading techniques served; a request for another gets ``403 transport_disabled``.
    transports: tuple[str, ...] = TRANSPORTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "transports", tuple(dict.fromkeys(self.transports)))
        check_transports(self.transports)

    def retention(self, channel: str) -> Retention:
        """The retention of ``channel``: its namespace's, or the server default."""
        namespace = self.namespaces.get(namespace_of(channel))
        if namespace is not None:
            return namespace
        return Retention(self.history_size, self.history_ttl)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``; ``None`` values are ignored (unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_file(cls, path: str | Path) -> Settings:
        """Read a TOML config file; raise :class:`UsageError` for unknown or bad keys."""
        try:
            with open(path, "rb") as f:
                config = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read config file {path}: {exc}") from None
        unknown_sections = set(config) - {"server", "namespaces"}
        if unknown_sections:
            raise UsageError(f"{path}: unknown sections {sorted(unknown_sections)}")
        server = dict(config.get("server", {}))
        known = {f.name for f in dataclasses.fields(cls)} - {"namespaces"}
        unknown = set(server) - known
        if unknown:
            raise UsageError(f"{path}: unknown keys in [server]: {sorted(unknown)}")
        defaults = cls()
        for key, value in server.items():
            _check_type(path, "server", key, value, getattr(defaults, key))
        for key in ("cors_origins", "transports"):
            if key in server:
                server[key] = tuple(server[key])
        try:
            base = cls(**server)
        except UsageError as exc:
            raise UsageError(f"{path}: [server] {exc}") from None
        namespaces = {}
        for name, values in config.get("namespaces", {}).items():
            if not isinstance(values, dict):
                raise UsageError(f"{path}: [namespaces] holds tables such as [namespaces.{name}]")
            extra = set(values) - {"history_size", "history_ttl"}
            if extra:
                raise UsageError(f"{path}: unknown keys in [namespaces.{name}]: {sorted(extra)}")
            section = f"namespaces.{name}"
            size = values.get("history_size", base.history_size)
            ttl = values.get("history_ttl", base.history_ttl)
            _check_type(path, section, "history_size", size, base.history_size)
            _check_type(path, section, "history_ttl", ttl, base.history_ttl)
            if size < 1 or ttl <= 0:
                raise UsageError(f"{path}: [{section}] history_size must be at least 1 "
                                 "and history_ttl positive")
            namespaces[name] = Retention(int(size), float(ttl))
        return dataclasses.replace(base, namespaces=namespaces)


def check_transports(transports: tuple[str, ...]) -> None:
    """Raise :class:`UsageError` unless ``transports`` is a non-empty set of known names."""
    unknown = [name for name in transports if name not in TRANSPORTS]
    if unknown:
        raise UsageError(f"unknown transports {unknown}; choose from {', '.join(TRANSPORTS)}")
    if not transports:
        raise UsageError(f"enable at least one transport of {', '.join(TRANSPORTS)}")


def _check_type(path: str | Path, section: str, key: str, value: Any, default: Any) -> None:
    """Raise :class:`UsageError` unless ``value`` has the type of the setting's ``default``."""
    if isinstance(default, tuple):
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        kind = "a list of strings"
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        kind = "a number"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    else:
        ok = isinstance(value, str)
        kind = "a string"
    if not ok:
        raise UsageError(f"{path}: [{section}] {key} must be {kind}, not {value!r}")
