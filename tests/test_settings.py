"""Settings: defaults, the TOML config file, and retention per namespace."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tidings import Settings, UsageError
from tidings.core.log import Retention


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
        ("[server]\nhistory_sise = 3\n", ["unknown keys", "history_sise"]),
        ("[server]\nnamespaces = 3\n", ["unknown keys", "namespaces"]),
        ("[sever]\nport = 1\n", ["unknown sections", "sever"]),
        ("top = 1\n", ["unknown sections", "top"]),
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
