"""Settings: defaults, the TOML config file, and retention per namespace."""

from __future__ import annotations

import asyncio
import dataclasses
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import UNIT
from tidings import Settings, UsageError
from tidings.core.log import Retention
from tidings.settings import (
    FD_RESERVE,
    UNLIMITED_FILES_MAX_CONNECTIONS,
    AuthSettings,
    max_connections_for,
    soft_file_limit,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.retention("anything") == Retention(1000, 3600.0)
    assert settings.cors_origins == ("*",)
    assert settings.max_message_size == 64 * 1024
    assert 15 <= settings.heartbeat_interval <= 25


def test_from_file_server_and_namespaces(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
host = "0.0.0.0"
port = 9000
history_size = 50
history_ttl = 120
cors_origins = ["https://a.example", "https://b.example"]
max_message_size = 2048
heartbeat_interval = 15.5

[namespaces.prices]
history_size = 10
history_ttl = 5

[namespaces.news]
history_ttl = 30

[namespaces.chat]
history_size = 7
""")
    settings = Settings.from_file(path)
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    assert (settings.history_size, settings.history_ttl) == (50, 120)
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.max_message_size == 2048
    assert settings.heartbeat_interval == 15.5
    # Unset limits keep their defaults.
    assert settings.max_headers == Settings().max_headers
    # A namespace inherits what it does not set from [server].
    assert settings.namespaces == {
        "prices": Retention(10, 5.0),
        "news": Retention(50, 30.0),
        "chat": Retention(7, 120.0),
    }


def test_from_file_accepts_str_path_and_empty_file(tmp_path: Path) -> None:
    assert Settings.from_file(str(write(tmp_path, ""))) == Settings()


def test_retention_per_namespace() -> None:
    settings = Settings(history_size=100, history_ttl=60,
                        namespaces={"prices": Retention(10, 5.0)})
    assert settings.retention("prices:AAPL") == Retention(10, 5.0)
    assert settings.retention("prices:") == Retention(10, 5.0)
    assert settings.retention("prices:a:b") == Retention(10, 5.0)
    # Not in the namespace: no colon, another namespace, or a longer name.
    assert settings.retention("prices") == Retention(100, 60.0)
    assert settings.retention("pricesx:AAPL") == Retention(100, 60.0)
    assert settings.retention("news:today") == Retention(100, 60.0)
    assert settings.retention("PRICES:AAPL") == Retention(100, 60.0)


def test_retention_from_file(tmp_path: Path) -> None:
    settings = Settings.from_file(write(tmp_path, "[namespaces.x]\nhistory_size = 2\n"))
    assert settings.retention("x:a") == Retention(2, 3600.0)
    assert settings.retention("y:a") == Retention(1000, 3600.0)


def test_replace_ignores_none() -> None:
    settings = Settings(port=1).replace(port=None, host="::1", history_size=None)
    assert (settings.port, settings.host, settings.history_size) == (1, "::1", 1000)
    assert Settings().replace() == Settings()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[server]\nhistory_sise = 3\n",
         ["unknown key", "history_sise", "did you mean 'history_size'"]),
        ("[server]\nnamespaces = 3\n", ["unknown key", "namespaces"]),
        ("[sever]\nport = 1\n", ["unknown section", "sever", "did you mean 'server'"]),
        ("top = 1\n", ["unknown section", "top"]),
        ("[namespaces.x]\nsize = 3\n", ["namespaces.x", "size"]),
        ("[namespaces.x]\nhistory_size = 3\nmax_headers = 1\n", ["namespaces.x", "max_headers"]),
        ("[server\n", ["cannot read"]),
        ("[server]\nport = \"eighty\"\n", ["port"]),
        ("[server]\nhistory_ttl = \"1h\"\n", ["history_ttl"]),
        ("[server]\ncors_origins = \"https://a.example\"\n", ["cors_origins"]),
        ("[server]\ncors_origins = [1]\n", ["cors_origins"]),
        ("[server]\nmax_headers = true\n", ["max_headers"]),
        ("[namespaces.x]\nhistory_size = \"many\"\n", ["namespaces.x", "history_size"]),
        ("[namespaces.x]\nhistory_size = 0\n", ["namespaces.x", "history_size"]),
        ("[namespaces.x]\nhistory_ttl = -1\n", ["namespaces.x", "history_ttl"]),
        ("[namespaces]\nx = 3\n", ["namespaces"]),
    ],
)
def test_bad_config_is_a_usage_error(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        Settings.from_file(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read config file"):
        Settings.from_file(tmp_path / "missing.toml")


def test_integers_are_accepted_for_seconds(tmp_path: Path) -> None:
    settings = Settings.from_file(write(tmp_path, "[server]\nheader_timeout = 3\nmax_wait = 30\n"))
    assert settings.header_timeout == 3
    assert settings.max_wait == 30


def test_broker_memory_by_default_or_a_redis_url(tmp_path: Path) -> None:
    assert Settings().broker == "memory"
    path = write(tmp_path, '[server]\nbroker = "redis://10.0.0.5:6379/2"\n')
    assert Settings.from_file(path).broker == "redis://10.0.0.5:6379/2"
    assert Settings(broker="rediss://user:pw@redis.example/0").broker.startswith("rediss://")


@pytest.mark.parametrize("broker", ["", "redis", "nats://127.0.0.1:4222", "Memory"])
def test_unknown_broker_is_refused(broker: str) -> None:
    with pytest.raises(UsageError, match="broker must be"):
        Settings(broker=broker)


# max_connections and the file limit ---------------------------------------------------


@pytest.mark.parametrize(("file_limit", "connections"), [
    (1_048_576, 1_048_576 - FD_RESERVE), (65_536, 65_536 - FD_RESERVE), (20_000, 19_744),
    (1024, 768), (512, 256), (300, 150), (256, 128), (2, 1), (1, 1),
    (None, UNLIMITED_FILES_MAX_CONNECTIONS),
])
def test_max_connections_for_a_file_limit(file_limit: int | None, connections: int) -> None:
    assert max_connections_for(file_limit) == connections


def test_max_connections_defaults_to_what_the_file_limit_holds() -> None:
    limit = soft_file_limit()
    settings = Settings()
    assert settings.max_connections == max_connections_for(limit)
    if limit is not None:
        assert 0 < settings.max_connections <= limit - min(FD_RESERVE, limit // 2)


@pytest.mark.parametrize(("rlimit", "connections"), [
    ((4096, 8192), 4096 - FD_RESERVE), ((100, 100), 50),
    ((-1, -1), UNLIMITED_FILES_MAX_CONNECTIONS),
])
def test_max_connections_follows_the_soft_limit(monkeypatch: pytest.MonkeyPatch,
                                                rlimit: tuple[int, int], connections: int) -> None:
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "RLIM_INFINITY", -1)
    monkeypatch.setattr(resource, "getrlimit", lambda _which: rlimit)
    assert Settings().max_connections == connections
    assert Settings(max_connections=7).max_connections == 7


def test_max_connections_set_explicitly_is_kept(tmp_path: Path) -> None:
    assert Settings(max_connections=500_000).max_connections == 500_000
    assert Settings().replace(max_connections=3).max_connections == 3
    for value in (10, 0, 250_000):  # 0: no limit
        path = write(tmp_path, f"[server]\nmax_connections = {value}\n")
        assert Settings.from_file(path).max_connections == value
    with pytest.raises(UsageError, match="max_connections"):
        Settings.from_file(write(tmp_path, "[server]\nmax_connections = 1.5\n"))


# The child sets its own file limit, then runs ``tidings serve`` with the default limits.
SERVE_UNDER_FILE_LIMIT = """
import resource, sys
from tidings.cli import main
soft = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
sys.exit(main(["serve", "--port", "0", "--log-level", "error"]))
"""
CHILD_FILE_LIMIT = 600


@pytest.fixture
def served_under_file_limit(tmp_path: Path) -> Iterator[str]:
    """A ``tidings serve`` child whose soft file limit is :data:`CHILD_FILE_LIMIT`; its URL."""
    pytest.importorskip("resource")
    with (open(tmp_path / "stderr", "w+") as stderr,
          subprocess.Popen([sys.executable, "-c", SERVE_UNDER_FILE_LIMIT, str(CHILD_FILE_LIMIT)],
                           stdout=subprocess.PIPE, stderr=stderr, text=True) as process):
        try:
            assert process.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ)
                assert selector.select(timeout=10 * UNIT), "tidings serve printed nothing"
            line = process.stdout.readline()
            assert line.startswith("tidings serving on "), line
            yield line.split()[-1]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10 * UNIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stderr.seek(0)
        errors = stderr.read()
        assert process.returncode == 0 and "Traceback" not in errors, errors


async def read_status(reader: asyncio.StreamReader) -> int:
    async with asyncio.timeout(5 * UNIT):
        status_line = await reader.readline()
    return int(status_line.split()[1])


async def test_past_the_file_limit_connections_get_503_not_a_reset(
        served_under_file_limit: str) -> None:
    """The default max_connections leaves the server descriptors to accept and refuse with:
    more connections than its file limit are each answered ``503``."""
    admitted = max_connections_for(CHILD_FILE_LIMIT)
    refused = CHILD_FILE_LIMIT - admitted + 50  # together, past the child's file limit
    limit = soft_file_limit()
    if limit is not None and limit < admitted + 100:
        pytest.skip(f"this process may open only {limit} files")
    host, _, port = served_under_file_limit.removeprefix("http://").rpartition(":")
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(admitted):
            held.append(await asyncio.open_connection(host, int(port)))
        for _ in range(refused):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                assert await read_status(reader) == 503
            finally:
                writer.close()
        # The admitted ones are served.
        reader, writer = held[-1]
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await read_status(reader) == 200
    finally:
        for _reader, writer in held:
            writer.close()


def test_idempotency_window_per_namespace(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text("[server]\nidempotency_window = 60\n"
                      "[namespaces.orders]\nidempotency_window = 86400\n"
                      "[namespaces.prices]\nhistory_size = 5\n")
    settings = Settings.from_file(config)
    assert Settings().retention("a").idempotency_window == 300.0
    assert settings.retention("orders:1").idempotency_window == 86400.0
    assert settings.retention("prices:1").idempotency_window == 60.0
    assert settings.retention("other").idempotency_window == 60.0
    config.write_text("[namespaces.orders]\nidempotency_window = 0\n")
    with pytest.raises(UsageError, match="idempotency_window"):
        Settings.from_file(config)


# config errors say where, all at once (issue 12) ---------------------------------------


def test_a_bad_value_is_named_by_file_section_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nhistory_ttl = -5\n")
    with pytest.raises(UsageError) as info:
        Settings.from_file(path)
    assert str(info.value) == f"{path}: [server] history_ttl must be positive, not -5"
    assert "--history-ttl" not in str(info.value)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
history_ttl = -5
history_size = 0
transports = ["ws"]

[auth]
default_publish = "everyone"

[namespaces.p]
history_ttl = "1h"

[[bridges]]
dsn = ""
""")
    with pytest.raises(UsageError) as info:
        Settings.from_file(path)
    lines = str(info.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert [line.removeprefix(f"{path}: ").split(" ")[:2] for line in lines] == [
        ["[server]", "history_ttl"], ["[server]", "history_size"], ["[server]", "transports:"],
        ["[auth]", "default_publish"], ["[namespaces.p]", "history_ttl"],
        ["[[bridges]]", "#1"],
    ]


@pytest.mark.parametrize(("text", "suggestion"), [
    ("[server]\nhistroy_size = 3\n", "[server] unknown key 'histroy_size' "
                                     "(did you mean 'history_size'?)"),
    ("[server]\nmax_conections = 3\n", "(did you mean 'max_connections'?)"),
    ("[auth]\napi_kye = 'x'\n", "[auth] unknown key 'api_kye' (did you mean 'api_key'?)"),
    ("[namespaces.x]\nhistory_tll = 3\n", "[namespaces.x] unknown key 'history_tll' "
                                          "(did you mean 'history_ttl'?)"),
    ("[[bridges]]\ndns = 'postgresql://x'\n", "[[bridges]] #1 unknown key 'dns' "
                                              "(did you mean 'dsn'?)"),
    ("[namespace.x]\nhistory_size = 3\n", "unknown section 'namespace' "
                                          "(did you mean 'namespaces'?)"),
])
def test_an_unknown_key_gets_the_nearest_known_one(tmp_path: Path, text: str,
                                                   suggestion: str) -> None:
    with pytest.raises(UsageError) as info:
        Settings.from_file(write(tmp_path, text))
    assert suggestion in str(info.value)


def test_a_short_hs256_secret_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[auth]\njwt_hs256_secret = "changeme"\n')
    with pytest.raises(UsageError) as info:
        Settings.from_file(path)
    assert f"{path}: [auth] jwt_hs256_secret is 8 bytes; use 32" in str(info.value)
    with pytest.raises(UsageError, match="jwt_hs256_secret is 31 bytes"):
        AuthSettings(jwt_hs256_secret="x" * 31)
    assert AuthSettings(jwt_hs256_secret="x" * 32).jwt_hs256_secret == "x" * 32


def test_the_cli_reports_a_bad_file_value_under_its_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nhistory_ttl = -5\nhistory_sise = 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--config", str(path)],
        capture_output=True, text=True, timeout=20 * UNIT)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tidings: {path}: [server] history_ttl must be positive, not -5",
        f"{path}: [server] unknown key 'history_sise' (did you mean 'history_size'?)",
    ]
    flag = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--history-ttl", "-5"],
        capture_output=True, text=True, timeout=20 * UNIT)
    assert flag.returncode == 2 and "--history-ttl must be positive" in flag.stderr
