"""Every setting and limit of the server, with its default, in one place.

Settings come from defaults, then a TOML config file (``tidings serve --config``),
then ``TIDINGS_<KEY>`` environment variables, then command-line flags
(``tidings.configuration`` layers them). docs/operations.md lists them for operators.

Config file::

    [server]
    host = "0.0.0.0"
    port = 8000
    history_size = 1000          # messages kept per channel
    history_ttl = 3600           # seconds a message is kept
    cors_origins = ["https://example.com"]
    transports = ["websocket", "sse", "longpoll", "poll"]   # any subset
    broker = "redis://127.0.0.1:6379/0"   # default "memory" (docs/topics/redis.md)

    [namespaces.prices]          # channels named "prices:..."
    history_size = 100
    history_ttl = 60
    slow_reader = "latest"       # or "skip", "disconnect" (the [server] default)
    subscribe = "anyone"         # or "token" (docs/security.md)
    publish = "api_key"          # or "token", "anyone"
    presence = true              # who is reading (docs/topics/presence.md); [server] too
    presence_timeout = 30        # seconds a poller stays after its last request

    [auth]                       # any of it turns access control on (docs/security.md)
    api_key = "..."              # or the environment variable TIDINGS_API_KEY
    jwt_hs256_secret = "..."
    jwt_public_key_file = "jwt-public.pem"   # RSA or EC public key, PEM
    jwt_algorithms = ["RS256"]   # default: RS256 for an RSA key, ES256 for an EC key
    default_subscribe = "token"  # for namespaces without a rule
    default_publish = "api_key"

    [hooks]                      # the application decides, over HTTP (docs/embedding.md)
    connect_url = "http://127.0.0.1:8001/tidings/connect"
    subscribe_url = "http://127.0.0.1:8001/tidings/subscribe"
    publish_url = "http://127.0.0.1:8001/tidings/publish"
    rpc_url = "http://127.0.0.1:8001/tidings/rpc"
    timeout = 5                  # seconds; then 503 hook_unavailable
    secret = "..."               # sent as X-Tidings-Hook-Secret (TIDINGS_HOOKS_SECRET)
    forward_headers = ["authorization"]   # nothing is forwarded unless listed
    forward_cookies = ["sessionid"]

    [[bridges]]                  # publish a PostgreSQL database's changes (docs/bridge.md)
    dsn = "postgresql://app@localhost/shop"
    schema = "tidings"           # where the outbox lives (optional)
    tables = [{table = "prices", channel = "prices:{symbol}"}]   # installed at start (optional)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tidings.core.forwarded import parse_networks
from tidings.core.log import Retention
from tidings.core.names import namespace_of
from tidings.core.policy import (
    PUBLISH_RULES,
    SAFE_DEFAULT_PUBLISH,
    SAFE_DEFAULT_SUBSCRIBE,
    SUBSCRIBE_RULES,
    Policy,
    Rule,
)
from tidings.core.presence import (
    DEFAULT_PRESENCE_TIMEOUT,
    MAX_PRESENCE_TIMEOUT,
    PresencePolicy,
)
from tidings.errors import UsageError
from tidings.session.slow import DISCONNECT, SLOW_READER_POLICIES

#: The reading techniques, by the names used everywhere (settings, CLI, clients).
TRANSPORTS = ("websocket", "sse", "longpoll", "poll")

#: File descriptors the default ``max_connections`` leaves to everything but admitted
#: clients: the listening sockets, stdio and log files, the event loop's own, broker
#: connections (a Redis pool holds up to 64 per node), bridge databases, files being read,
#: and the connections being refused with 503, each of which holds one until its client
#: has read the answer (a second at most).
FD_RESERVE = 256
#: ``max_connections`` when the file limit is unlimited or unknown (no ``resource`` module).
UNLIMITED_FILES_MAX_CONNECTIONS = 100_000


def max_connections_for(file_limit: int | None) -> int:
    """The default ``max_connections`` under a soft file-descriptor limit of ``file_limit``
    (``None``: unlimited or unknown): the limit less :data:`FD_RESERVE`, but at least half
    of it, so that a small limit still admits clients."""
    if file_limit is None:
        return UNLIMITED_FILES_MAX_CONNECTIONS
    return max(file_limit - FD_RESERVE, file_limit // 2, 1)


def soft_file_limit() -> int | None:
    """This process's soft ``RLIMIT_NOFILE`` (``ulimit -n``), or ``None`` if unlimited or
    unknown (Windows has no ``resource`` module)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - only on Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return soft


def default_max_connections() -> int:
    """``max_connections`` when the config does not set it: from this process's file limit,
    read when :class:`Settings` is made (raise ``ulimit -n`` before starting tidings)."""
    return max_connections_for(soft_file_limit())


@dataclass(frozen=True)
class BridgeConfig:
    """A ``[[bridges]]`` entry: publish the changes of a PostgreSQL database."""

    dsn: str
    schema: str = "tidings"
    #: ``(table, channel template)`` pairs installed (idempotently) when the bridge connects.
    tables: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AuthSettings:
    """The ``[auth]`` section and the namespaces' access rules (docs/security.md).

    Left at its defaults, access control is off and everything is open. Any
    key set (or ``configured``, an ``[auth]`` section in the config file, or a
    namespace rule) turns it on; namespaces without a rule then follow
    ``default_subscribe`` / ``default_publish`` (safe defaults: a token to
    subscribe, the API key to publish).
    """

    api_key: str | None = None  #: else the environment variable TIDINGS_API_KEY
    jwt_hs256_secret: str | None = None
    jwt_public_key_file: str | None = None  #: PEM, RSA or EC
    jwt_algorithms: tuple[str, ...] = ()  #: for the public key; default by key type
    #: Keys from an identity provider's JWKS URL (Auth0, Keycloak, Cognito): fetched at
    #: start, every ``jwks_refresh_interval`` seconds, and on a token with an unknown
    #: ``kid`` (at most once per ``jwks_min_refresh_interval`` seconds).
    jwks_url: str | None = None
    jwks_refresh_interval: float = 300.0
    jwks_min_refresh_interval: float = 10.0
    jwt_audience: str | None = None  #: the ``aud`` every token must hold, if set
    jwt_issuer: str | None = None  #: the ``iss`` every token must hold, if set
    jwt_leeway: float = 0.0  #: seconds of clock skew allowed on ``exp``, ``nbf``, ``iat``
    default_subscribe: str = SAFE_DEFAULT_SUBSCRIBE
    default_publish: str = SAFE_DEFAULT_PUBLISH
    rules: dict[str, Rule] = field(default_factory=dict)  #: namespace -> rule
    configured: bool = False

    def __post_init__(self) -> None:
        try:
            Rule(self.default_subscribe, self.default_publish)
        except ValueError as exc:
            raise UsageError(f"[auth] default_{exc}") from None
        if self.jwt_hs256_secret is not None:
            problem = _secret_problem(self.jwt_hs256_secret)
            if problem is not None:
                raise UsageError(f"[auth] jwt_hs256_secret{problem}")
        for key in ("jwks_url", "jwks_refresh_interval", "jwks_min_refresh_interval",
                    "jwt_leeway"):
            problem = _auth_value_problem(key, getattr(self, key))
            if problem is not None:
                raise UsageError(f"[auth] {key}{problem}")

    @property
    def enabled(self) -> bool:
        return self != AuthSettings()

    def policy(self, enabled: bool | None = None) -> Policy:
        """The decision rules; ``enabled`` overrides :attr:`enabled` (an API key from the env)."""
        return Policy(self.enabled if enabled is None else enabled, dict(self.rules),
                      Rule(self.default_subscribe, self.default_publish))


#: Seconds a hook may take by default (``[hooks] timeout``), and at most.
DEFAULT_HOOK_TIMEOUT = 5.0
MAX_HOOK_TIMEOUT = 60.0
#: The shortest ``[hooks] secret`` accepted, in bytes.
MIN_HOOK_SECRET_BYTES = 16
#: The longest hook URL accepted, in bytes.
MAX_HOOK_URL_LENGTH = 2048
#: The hooks ``[hooks]`` may name, each with its ``<name>_url`` key.
HOOK_NAMES = ("connect", "subscribe", "publish", "rpc")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")


@dataclass(frozen=True)
class HooksSettings:
    """The ``[hooks]`` section: the application's hooks as HTTP calls (docs/embedding.md).

    Each ``*_url`` set makes that hook a ``POST`` of JSON to the application
    (server/hooks_http.py); an empty one leaves it to an in-process hook, or none.
    Nothing of a client's request is forwarded but the headers and cookies listed.
    """

    connect_url: str = ""
    subscribe_url: str = ""
    publish_url: str = ""
    rpc_url: str = ""
    #: Seconds each call may take; past it the client gets ``503 hook_unavailable``.
    timeout: float = DEFAULT_HOOK_TIMEOUT
    #: Sent as the ``X-Tidings-Hook-Secret`` header of every call, for the application to check.
    secret: str | None = None
    #: Request headers (case-insensitive names) passed on to ``connect``.
    forward_headers: tuple[str, ...] = ()
    #: Cookies (by name) passed on to ``connect``.
    forward_cookies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "forward_headers",
                           tuple(dict.fromkeys(h.lower() for h in self.forward_headers)))
        object.__setattr__(self, "forward_cookies", tuple(dict.fromkeys(self.forward_cookies)))
        for key in HOOKS_KEYS:
            problem = _hooks_value_problem(key, getattr(self, key))
            if problem is not None:
                raise UsageError(f"[hooks] {key}{problem}")

    @property
    def enabled(self) -> bool:
        """Whether any hook is an HTTP call."""
        return any(self.url(name) for name in HOOK_NAMES)

    def url(self, hook: str) -> str:
        """The URL of ``hook`` (``"connect"``, ...), or ``""``."""
        return str(getattr(self, f"{hook}_url"))


def split_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"``, ``"[::1]:9100"`` or ``":9100"`` (every address) -> host, port;
    raise :class:`UsageError` for anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"metrics_listen must be HOST:PORT, such as 127.0.0.1:9100, "
                         f"not {text[:100]!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


#: The choices of the logging settings (tidings/logs.py).
LOG_CHOICES = {"log_level": ("debug", "info", "warning", "error"),
               "log_format": ("text", "json")}

BROKER_SCHEMES = ("redis://", "rediss://")


def check_broker(broker: str) -> None:
    """Raise :class:`UsageError` unless ``broker`` is ``memory`` or a Redis URL."""
    if broker != "memory" and not broker.startswith(BROKER_SCHEMES):
        raise UsageError(f"broker must be 'memory' or a redis:// or rediss:// URL, "
                         f"not {broker[:100]!r}")


#: :class:`Settings` fields that are not ``[server]`` keys: their own sections
#: (``[namespaces.X]``, ``[[bridges]]``, ``[auth]``) and what is gathered from them.
NOT_SERVER_KEYS = ("namespaces", "bridges", "auth", "slow_readers", "namespace_presence",
                   "hooks")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000

    # Retention, per channel; namespaces override it.
    history_size: int = 1000
    history_ttl: float = 3600.0
    #: Seconds a publish's idempotency key is remembered (core/idempotency.py).
    idempotency_window: float = 300.0
    namespaces: dict[str, Retention] = field(default_factory=dict)

    # Request limits.
    max_message_size: int = 64 * 1024  #: bytes in a published body or WebSocket message
    max_url_length: int = 8 * 1024  #: bytes in the request target
    max_header_size: int = 16 * 1024  #: bytes in all request headers together
    max_headers: int = 100  #: header fields in a request
    max_channels_per_subscription: int = 64  #: channels in one subscription or WebSocket
    header_timeout: float = 10.0  #: seconds a client may take to send request headers
    keep_alive_timeout: float = 60.0  #: seconds an idle keep-alive connection is kept

    # Client limits (docs/security.md); 0 turns a limit off.
    #: Open connections in total; more get 503 and are closed. By default the soft file
    #: limit less FD_RESERVE (see :func:`max_connections_for`): over the file limit, a
    #: connection could not even be accepted to be told 503.
    max_connections: int = field(default_factory=default_max_connections)
    #: Open connections from one client address; more get 429 and are closed. Off by
    #: default: behind a reverse proxy every client has the proxy's address.
    max_connections_per_ip: int = 0
    max_publish_rate: float = 1000.0  #: publishes per second per client address (HTTP and WS)
    publish_burst: int = 1000  #: publishes one address may make at once before the rate applies

    # Reading.
    poll_limit: int = 100  #: messages in a poll answer when ``limit`` is not given
    max_poll_limit: int = 1000  #: the largest ``limit`` accepted
    max_wait: float = 60.0  #: the longest long-poll wait, in seconds (longer asks are cut)

    # Long-lived connections.
    heartbeat_interval: float = 20.0  #: seconds between SSE comments / WebSocket pings
    sse_retry_ms: int = 2000  #: the ``retry:`` hint sent to EventSource
    output_buffer_limit: int = 256 * 1024  #: unsent bytes before a subscriber is cut off
    #: Seconds a subscriber may leave its backlog unread before it is cut off.
    slow_consumer_timeout: float = 30.0
    #: What a stream past ``output_buffer_limit`` gets: ``"disconnect"`` (cut off),
    #: ``"skip"`` (a gap to the end of the log) or ``"latest"`` (a gap and the newest
    #: message); per namespace in ``slow_readers`` (``[namespaces.X] slow_reader``).
    slow_reader: str = DISCONNECT
    slow_readers: dict[str, str] = field(default_factory=dict)
    #: Negotiate permessage-deflate with WebSocket clients that offer it (each message
    #: is compressed once for all of them: wire/deflate.py).
    websocket_compression: bool = True
    #: Messages shorter than this many bytes go uncompressed.
    websocket_compression_threshold: int = 256

    #: Where channel logs live: ``"memory"`` (this process) or a ``redis://`` /
    #: ``rediss://`` URL shared by several nodes (a Redis Cluster is detected).
    broker: str = "memory"

    cors_origins: tuple[str, ...] = ("*",)
    #: The reading techniques served; a request for another gets ``403 transport_disabled``.
    transports: tuple[str, ...] = TRANSPORTS
    #: Database bridges ``tidings serve`` runs in-process.
    bridges: tuple[BridgeConfig, ...] = ()
    #: Who may subscribe and publish (``[auth]`` and namespace rules); open by default.
    auth: AuthSettings = field(default_factory=AuthSettings)
    #: The application's hooks as HTTP calls (``[hooks]``); none by default.
    hooks: HooksSettings = field(default_factory=HooksSettings)

    # Presence (docs/topics/presence.md), for channels whose namespace does not set it.
    #: Whether ``GET /channels/{channel}/presence`` and joins and leaves are served.
    presence: bool = False
    #: Seconds a poller or long poller stays present after its last request.
    presence_timeout: float = DEFAULT_PRESENCE_TIMEOUT
    #: ``presence`` / ``presence_timeout`` of the ``[namespaces.NAME]`` tables that set them.
    namespace_presence: dict[str, PresencePolicy] = field(default_factory=dict)
    # Operations (docs/operations.md).
    #: Addresses or networks of reverse proxies whose ``X-Forwarded-For`` is believed:
    #: per-address publish rates and logs then use the client's address (core/forwarded.py).
    trusted_proxies: tuple[str, ...] = ()
    #: Seconds over which a node stopped with SIGTERM tells its streams to reconnect
    #: elsewhere, spread evenly so that the other nodes are not stormed (``Server.drain``).
    drain_period: float = 10.0
    #: Serve Prometheus metrics at ``/metrics`` (with the API key when access control is on).
    metrics: bool = True
    #: ``HOST:PORT`` where ``/metrics`` is served instead, open (keep it private); ``""``:
    #: on the main port.
    metrics_listen: str = ""
    #: What ``tidings serve`` logs to stderr: ``debug``, ``info``, ``warning``, ``error``.
    log_level: str = "info"
    #: ``text`` or ``json`` (one object per line; tidings/logs.py).
    log_format: str = "text"
    #: Log every request answered and stream opened (the ``tidings.access`` logger).
    access_log: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "transports", tuple(dict.fromkeys(self.transports)))
        check_transports(self.transports)
        check_broker(self.broker)
        if self.idempotency_window <= 0:
            raise UsageError("idempotency_window must be positive")
        for where, policy in [("slow_reader", self.slow_reader), *self.slow_readers.items()]:
            check_slow_reader(policy, where)
        problem = _timeout_problem(self.presence_timeout)
        if problem is not None:
            raise UsageError(f"presence_timeout{problem}")
        for name, presence in self.namespace_presence.items():
            problem = _timeout_problem(presence.timeout)
            if problem is not None:
                raise UsageError(f"[namespaces.{name}] presence_timeout{problem}")
        if self.metrics_listen:
            split_listen(self.metrics_listen)
        if self.drain_period < 0:
            raise UsageError("drain_period must be 0 or more")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise UsageError(f"trusted_proxies: {exc}") from None
        for key, choices in LOG_CHOICES.items():
            if getattr(self, key) not in choices:
                raise UsageError(f"{key} must be one of {', '.join(choices)}, "
                                 f"not {getattr(self, key)!r}")

    def slow_reader_of(self, channel: str) -> str:
        """The slow-reader policy of ``channel``: its namespace's, or the server default."""
        return self.slow_readers.get(namespace_of(channel), self.slow_reader)

    def slow_reader_policy(self) -> Callable[[str], str] | None:
        """:meth:`slow_reader_of`, or ``None`` if every channel's policy is ``disconnect``."""
        if self.slow_reader == DISCONNECT and all(
                policy == DISCONNECT for policy in self.slow_readers.values()):
            return None
        return self.slow_reader_of

    def presence_of(self, channel: str) -> PresencePolicy:
        """The presence of ``channel``: its namespace's, or the server's."""
        policy = self.namespace_presence.get(namespace_of(channel))
        if policy is not None:
            return policy
        return PresencePolicy(self.presence, self.presence_timeout)

    @property
    def presence_anywhere(self) -> bool:
        """Whether any channel may have presence."""
        return self.presence or any(p.enabled for p in self.namespace_presence.values())

    def retention(self, channel: str) -> Retention:
        """The retention of ``channel``: its namespace's, or the server default."""
        namespace = self.namespaces.get(namespace_of(channel))
        if namespace is not None:
            return namespace
        return Retention(self.history_size, self.history_ttl, self.idempotency_window)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``; ``None`` values are ignored (unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_file(cls, path: str | Path) -> Settings:
        """Read a TOML config file.

        Raises :class:`UsageError` naming every bad key at once, one line each:
        the file, the ``[section]``, the key and what is wrong (with the nearest
        known key for an unknown one). Values are checked here under their file
        names; the CLI checks its flags under theirs.
        """
        return cls.from_config(read_config_file(path), ConfigErrors(path))

    @classmethod
    def from_config(cls, config: dict[str, Any], errors: ConfigErrors) -> Settings:
        """Settings from ``config``, a table shaped like a config file.

        Each problem is recorded in ``errors``, which names where it was found
        (the file's :class:`ConfigErrors`, or the environment's in
        ``tidings.configuration``); raises :class:`UsageError` listing them all.
        A relative ``jwt_public_key_file`` is relative to the file's directory.
        """
        path = errors.path
        for section in config:
            if section not in SECTIONS:
                errors.unknown("", section, SECTIONS, what="section")
        server = _server(errors, config.get("server", {}))
        base = cls(**server)
        auth = _auth(errors, path, config.get("auth"))
        namespaces, rules, presence = _namespaces(errors, config.get("namespaces", {}), base,
                                                  auth)
        slow_readers = _slow_readers(errors, config.get("namespaces", {}))
        bridges = _bridges(errors, config.get("bridges", []))
        hooks = _hooks(errors, config.get("hooks"))
        errors.raise_any()
        if rules:
            auth = dataclasses.replace(auth, rules=rules)
        return dataclasses.replace(base, namespaces=namespaces, bridges=bridges, auth=auth,
                                   slow_readers=slow_readers, namespace_presence=presence,
                                   hooks=hooks)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The TOML table of a config file; raise :class:`UsageError` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}") from None


#: The sections of a config file.
SECTIONS = ("server", "namespaces", "auth", "bridges", "hooks")
#: The keys of ``[auth]``.
AUTH_KEYS = ("api_key", "jwt_hs256_secret", "jwt_public_key_file", "jwt_algorithms",
             "jwks_url", "jwks_refresh_interval", "jwks_min_refresh_interval", "jwt_audience",
             "jwt_issuer", "jwt_leeway", "default_subscribe", "default_publish")


#: The keys of ``[hooks]``.
HOOKS_KEYS = ("connect_url", "subscribe_url", "publish_url", "rpc_url", "timeout", "secret",
              "forward_headers", "forward_cookies")


def hooks_default(key: str) -> Any:
    """The default of a ``[hooks]`` key, as a value of its type (``""`` for an unset string)."""
    default = getattr(HooksSettings(), key)
    return "" if default is None else default


def _hooks(errors: ConfigErrors, section: Any) -> HooksSettings:
    """The ``[hooks]`` section (absent: no HTTP hooks)."""
    if section is None:
        return HooksSettings()
    if not isinstance(section, dict):
        errors.add("", "hooks", " must be a table: [hooks]")
        return HooksSettings()
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in HOOKS_KEYS:
            errors.unknown("[hooks]", key, HOOKS_KEYS)
            continue
        problem = _type_problem(value, hooks_default(key))
        if problem is None:
            problem = _hooks_value_problem(key, value)
        if problem is not None:
            errors.add("[hooks]", key, problem)
            continue
        values[key] = tuple(value) if isinstance(value, list) else value
    return HooksSettings(**values)


def _hooks_value_problem(key: str, value: Any) -> str | None:
    """What is wrong with a ``[hooks]`` value of the right type, or ``None``."""
    if key.endswith("_url") and value:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or (
                not value.isascii() or not value.isprintable() or " " in value):
            return f" must be an http:// or https:// URL (ASCII), not {value[:100]!r}"
        if parts.username is not None or parts.fragment:
            return " must have no user, password or #fragment: send the secret instead"
        if len(value) > MAX_HOOK_URL_LENGTH:
            return f" must be at most {MAX_HOOK_URL_LENGTH} bytes"
    if key == "timeout" and not 0 < value <= MAX_HOOK_TIMEOUT:
        return f" must be more than 0 and at most {MAX_HOOK_TIMEOUT:.0f} seconds, not {value!r}"
    if key == "secret" and value is not None and not (value.isascii() and value.isprintable()):
        return " must be printable ASCII (it is sent as a header)"
    if key == "secret" and value is not None and len(value.encode()) < MIN_HOOK_SECRET_BYTES:
        return (f" is {len(value.encode())} bytes; use {MIN_HOOK_SECRET_BYTES} random bytes or "
                "more, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if key in ("forward_headers", "forward_cookies"):
        bad = [name for name in value if not _TOKEN_RE.fullmatch(name)]
        if bad:
            return f" must hold header or cookie names, not {bad[0][:100]!r}"
    return None


def auth_default(key: str) -> Any:
    """The default of an ``[auth]`` key, as a value of its type (``""`` for an unset string)."""
    default = getattr(AuthSettings(), key)
    return "" if default is None else default


def _auth_value_problem(key: str, value: Any) -> str | None:
    """What is wrong with an ``[auth]`` value of the right type, or ``None``."""
    if key == "jwks_url" and value is not None and not value.startswith(("https://",
                                                                         "http://")):
        return f" must be an https:// (or http://) URL, not {value[:100]!r}"
    if key in ("jwks_refresh_interval", "jwks_min_refresh_interval") and value <= 0:
        return f" must be positive, not {value!r}"
    if key == "jwt_leeway" and not 0 <= value <= 3600:
        return f" must be from 0 to 3600 seconds, not {value!r}"
    return None
#: The keys of a ``[namespaces.NAME]`` table.
NAMESPACE_KEYS = ("history_size", "history_ttl", "idempotency_window", "slow_reader",
                  "subscribe", "publish", "presence", "presence_timeout")
#: The keys of a ``[[bridges]]`` entry.
BRIDGE_KEYS = ("dsn", "schema", "tables")
#: The shortest ``jwt_hs256_secret`` accepted, in bytes (HS256 keys shorter than the
#: hash are guessable offline from one token; RFC 7518 section 3.2).
MIN_HS256_SECRET_BYTES = 32


class ConfigErrors:
    """What is wrong with one config file, gathered so that all of it is reported at once.

    Call :meth:`add` (or :meth:`unknown`) for each problem, then :meth:`raise_any`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, where: str, key: str, problem: str) -> None:
        """Record that ``key`` in ``where`` (``"[server]"``, ``"[[bridges]] #2"``, ``""`` for
        the top level) is wrong: ``problem`` follows the key's name."""
        self.lines.append(f"{self.path}: {where} {key}{problem}"
                          if where else f"{self.path}: {key}{problem}")

    def unknown(self, where: str, key: str, known: Any, what: str = "key") -> None:
        """Record an unknown ``key``, suggesting the nearest of ``known`` if one is close."""
        near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else f"; known: {', '.join(known)}"
        self.add(where, f"unknown {what} {key!r}", hint)

    def raise_any(self) -> None:
        """Raise one :class:`UsageError` listing every problem, one per line, if there is one."""
        if self.lines:
            raise UsageError("\n".join(self.lines))


def _server(errors: ConfigErrors, section: Any) -> dict[str, Any]:
    """The good keys of ``[server]``, converted for :class:`Settings`; the bad ones go to
    ``errors``."""
    if not isinstance(section, dict):
        errors.add("", "server", " must be a table: [server]")
        return {}
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    known = [name for name in fields if name not in NOT_SERVER_KEYS]
    defaults = Settings()
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in known:
            errors.unknown("[server]", key, known)
            continue
        problem = _type_problem(value, getattr(defaults, key))
        if problem is None:
            problem = _value_problem(key, value)
        if problem is not None:
            errors.add("[server]", key, problem)
            continue
        values[key] = tuple(value) if isinstance(value, list) else value
    return values


def _value_problem(key: str, value: Any) -> str | None:
    """What is wrong with a ``[server]`` value of the right type, or ``None``."""
    if key == "history_size" and value < 1:
        return f" must be at least 1, not {value!r}"
    if key in ("history_ttl", "idempotency_window") and value <= 0:
        return f" must be positive, not {value!r}"
    if key == "websocket_compression_threshold" and value < 0:
        return f" must be 0 or more, not {value!r}"
    if key == "presence_timeout":
        return _timeout_problem(value)
    if key == "drain_period" and value < 0:
        return f" must be 0 or more, not {value!r}"
    if key == "trusted_proxies":
        try:
            parse_networks(value)
        except ValueError as exc:
            return f": {exc}"
    try:
        if key == "transports":
            check_transports(tuple(dict.fromkeys(value)))
        elif key == "broker":
            check_broker(value)
        elif key == "slow_reader":
            check_slow_reader(value)
        elif key == "metrics_listen" and value:
            split_listen(value)
        elif key in LOG_CHOICES and value not in LOG_CHOICES[key]:
            return f" must be one of {', '.join(LOG_CHOICES[key])}, not {value!r}"
    except UsageError as exc:
        return f": {exc}"
    return None


def _namespaces(errors: ConfigErrors, section: Any, base: Settings, auth: AuthSettings
                ) -> tuple[dict[str, Retention], dict[str, Rule], dict[str, PresencePolicy]]:
    """The ``[namespaces.NAME]`` tables: retention, access rules and presence by namespace."""
    namespaces: dict[str, Retention] = {}
    rules: dict[str, Rule] = {}
    presence: dict[str, PresencePolicy] = {}
    if not isinstance(section, dict):
        errors.add("", "namespaces", " holds tables such as [namespaces.prices]")
        return namespaces, rules, presence
    for name, values in section.items():
        where = f"[namespaces.{name}]"
        if not isinstance(values, dict):
            errors.add("[namespaces]", name, f" must be a table such as [namespaces.{name}]")
            continue
        ok = True
        for key in values:
            if key not in NAMESPACE_KEYS:
                errors.unknown(where, key, NAMESPACE_KEYS)
                ok = False
        size = values.get("history_size", base.history_size)
        ttl = values.get("history_ttl", base.history_ttl)
        window = values.get("idempotency_window", base.idempotency_window)
        for key, value, default in (("history_size", size, base.history_size),
                                    ("history_ttl", ttl, base.history_ttl),
                                    ("idempotency_window", window, base.idempotency_window)):
            problem = _type_problem(value, default) or _value_problem(key, value)
            if problem is not None:
                errors.add(where, key, problem)
                ok = False
        if "subscribe" in values or "publish" in values:
            try:
                rules[name] = Rule(values.get("subscribe", auth.default_subscribe),
                                   values.get("publish", auth.default_publish))
            except ValueError as exc:
                errors.add(where, "", str(exc))  # it names the key
                ok = False
        if "presence" in values or "presence_timeout" in values:
            enabled = values.get("presence", base.presence)
            timeout = values.get("presence_timeout", base.presence_timeout)
            for key, value, default in (("presence", enabled, base.presence),
                                        ("presence_timeout", timeout, base.presence_timeout)):
                problem = _type_problem(value, default) or _value_problem(key, value)
                if problem is not None:
                    errors.add(where, key, problem)
                    ok = False
            if ok:
                presence[name] = PresencePolicy(bool(enabled), float(timeout))
        if ok:
            namespaces[name] = Retention(int(size), float(ttl), float(window))
    return namespaces, rules, presence


def _slow_readers(errors: ConfigErrors, section: Any) -> dict[str, str]:
    """The ``slow_reader`` of each ``[namespaces.NAME]`` table that sets one."""
    policies: dict[str, str] = {}
    if not isinstance(section, dict):
        return policies  # _namespaces reported it
    for name, values in section.items():
        if isinstance(values, dict) and "slow_reader" in values:
            value = values["slow_reader"]
            try:
                policies[name] = check_slow_reader(value)
            except UsageError as exc:
                errors.add(f"[namespaces.{name}]", "slow_reader", f": {exc}")
    return policies


def check_slow_reader(value: object, where: str = "slow_reader") -> str:
    """``value`` if it is a slow-reader policy, else :class:`UsageError`."""
    if value not in SLOW_READER_POLICIES:
        raise UsageError(f"{where} must be one of {', '.join(SLOW_READER_POLICIES)}, "
                         f"not {str(value)[:40]!r}")
    assert isinstance(value, str)
    return value


def _auth(errors: ConfigErrors, path: str | Path, section: Any) -> AuthSettings:
    """The ``[auth]`` section (absent: access control stays off unless a namespace has rules)."""
    if section is None:
        return AuthSettings()
    if not isinstance(section, dict):
        errors.add("", "auth", " must be a table: [auth]")
        return AuthSettings()
    values: dict[str, Any] = {}
    choices = {"default_subscribe": SUBSCRIBE_RULES, "default_publish": PUBLISH_RULES}
    for key, value in section.items():
        if key not in AUTH_KEYS:
            errors.unknown("[auth]", key, AUTH_KEYS)
            continue
        problem = _type_problem(value, auth_default(key))
        if problem is None:
            problem = _auth_value_problem(key, value)
        if problem is None and key in choices and value not in choices[key]:
            problem = f" must be one of {', '.join(choices[key])}, not {value!r}"
        if problem is None and key == "jwt_hs256_secret":
            problem = _secret_problem(value)
        if problem is not None:
            errors.add("[auth]", key, problem)
            continue
        values[key] = tuple(value) if key == "jwt_algorithms" else value
    if isinstance(values.get("jwt_public_key_file"), str):
        # A relative path is relative to the config file, not to the working directory.
        values["jwt_public_key_file"] = str(Path(path).parent / values["jwt_public_key_file"])
    return AuthSettings(**values, configured=True)


def _timeout_problem(seconds: float) -> str | None:
    """Why a ``presence_timeout`` is refused, or ``None``."""
    if not 0 < seconds <= MAX_PRESENCE_TIMEOUT:
        return (f" must be more than 0 and at most {MAX_PRESENCE_TIMEOUT:.0f} seconds, "
                f"not {seconds!r}")
    return None


def _secret_problem(secret: str) -> str | None:
    """Why an HS256 secret is refused (too short to resist guessing), or ``None``."""
    size = len(secret.encode())
    if size >= MIN_HS256_SECRET_BYTES:
        return None
    return (f" is {size} bytes; use {MIN_HS256_SECRET_BYTES} random bytes or more, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' (docs/security.md)")


def _bridges(errors: ConfigErrors, entries: Any) -> tuple[BridgeConfig, ...]:
    """The ``[[bridges]]`` entries; the bad ones go to ``errors``."""
    usage = ('write each as [[bridges]] with dsn = "postgresql://..." and optionally '
             'schema = "tidings" and tables = [{table = "prices", channel = "prices:{symbol}"}]')
    if not isinstance(entries, list):
        errors.add("", "bridges", f": {usage}")
        return ()
    bridges = []
    for number, entry in enumerate(entries, 1):
        where = f"[[bridges]] #{number}"
        if not isinstance(entry, dict):
            errors.add(where, "", f"must be a table: {usage}")
            continue
        count = len(errors.lines)
        for key in entry:
            if key not in BRIDGE_KEYS:
                errors.unknown(where, key, BRIDGE_KEYS)
        dsn, schema = entry.get("dsn"), entry.get("schema", "tidings")
        if not isinstance(dsn, str) or not dsn:
            errors.add(where, "dsn", ' must be a connection string such as '
                       '"postgresql://user@host/dbname"')
        if not isinstance(schema, str):
            errors.add(where, "schema", f" must be a string, not {schema!r}")
        tables = entry.get("tables", [])
        pairs = []
        if not isinstance(tables, list):
            errors.add(where, "tables", f" must be a list; {usage}")
            tables = []
        for table in tables:
            if (not isinstance(table, dict) or set(table) != {"table", "channel"}
                    or not all(isinstance(value, str) for value in table.values())):
                errors.add(where, "tables", " each need table and channel (strings) "
                           f"and nothing else, not {table!r}")
                continue
            pairs.append((table["table"], table["channel"]))
        if len(errors.lines) == count:
            bridges.append(BridgeConfig(str(dsn), str(schema), tuple(pairs)))
    return tuple(bridges)


def check_transports(transports: tuple[str, ...]) -> None:
    """Raise :class:`UsageError` unless ``transports`` is a non-empty set of known names."""
    unknown = [name for name in transports if name not in TRANSPORTS]
    if unknown:
        raise UsageError(f"unknown transports {unknown}; choose from {', '.join(TRANSPORTS)}")
    if not transports:
        raise UsageError(f"enable at least one transport of {', '.join(TRANSPORTS)}")


def _type_problem(value: Any, default: Any) -> str | None:
    """What is wrong with ``value`` if it lacks the type of the setting's ``default``."""
    if isinstance(default, tuple):
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        kind = "a list of strings"
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
        kind = "true or false"
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        kind = "a number"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    else:
        ok = isinstance(value, str)
        kind = "a string"
    return None if ok else f" must be {kind}, not {value!r}"
