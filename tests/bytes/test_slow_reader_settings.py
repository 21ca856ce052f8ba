"""``slow_reader`` in the config file: ``[server]`` and ``[namespaces.X]``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings import Settings
from tidings.errors import UsageError


def test_server_default_and_namespaces(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('[server]\nslow_reader = "skip"\n\n'
                      '[namespaces.prices]\nslow_reader = "latest"\nhistory_size = 10\n\n'
                      '[namespaces.orders]\nslow_reader = "disconnect"\n')
    settings = Settings.from_file(config)
    assert settings.slow_reader == "skip"
    assert settings.slow_readers == {"prices": "latest", "orders": "disconnect"}
    assert settings.retention("prices:aapl").size == 10  # the other keys still apply
    assert [settings.slow_reader_of(c) for c in ("prices:aapl", "orders:7", "news")] == [
        "latest", "disconnect", "skip"]
    assert settings.slow_reader_policy() is not None


def test_disconnect_everywhere_is_no_policy_at_all() -> None:
    assert Settings().slow_reader_policy() is None
    assert Settings(slow_readers={"a": "disconnect"}).slow_reader_policy() is None
    assert Settings(slow_readers={"a": "latest"}).slow_reader_policy() is not None


def test_every_bad_value_is_named(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('[server]\nslow_reader = "drop"\n\n'
                      '[namespaces.prices]\nslow_reader = 3\n')
    with pytest.raises(UsageError) as error:
        Settings.from_file(config)
    lines = str(error.value).splitlines()
    assert len(lines) == 2
    assert "[server] slow_reader" in lines[0] and "'drop'" in lines[0]
    assert "[namespaces.prices] slow_reader" in lines[1]
    assert "disconnect, skip, latest" in lines[1]


def test_websocket_compression_settings(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text("[server]\nwebsocket_compression = false\n"
                      "websocket_compression_threshold = 1024\n")
    settings = Settings.from_file(config)
    assert (settings.websocket_compression, settings.websocket_compression_threshold) == (
        False, 1024)
    assert Settings().websocket_compression is True
    config.write_text('[server]\nwebsocket_compression = "no"\n'
                      "websocket_compression_threshold = -1\n")
    with pytest.raises(UsageError) as error:
        Settings.from_file(config)
    lines = str(error.value).splitlines()
    assert "websocket_compression must be true or false" in lines[0]
    assert "websocket_compression_threshold must be 0 or more" in lines[1]
