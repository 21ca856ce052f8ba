"""Configuration from the environment, its precedence, and ``tidings config``.

The layering (``tidings.configuration.load``) is driven directly with a
mapping for the environment; the command is run as a child process with a
real environment, as a deploy would run it.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import UNIT
from tidings import Settings, UsageError
from tidings.configuration import MASK, load, server_keys, variable_of
from tidings.core.log import Retention
from tidings.server.auth import Authenticator

SECRET = "s" * 40
API_KEY = "the-api-key-0123456789"
REDIS_PASSWORD = "hunter2hunter2"
DSN_PASSWORD = "pgpassword42"


def write(tmp_path: Path, text: str, name: str = "tidings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# the layers ----------------------------------------------------------------------


def test_precedence_flags_over_environment_over_file_over_defaults(tmp_path: Path) -> None:
    config = write(tmp_path, "[server]\nport = 9001\nhistory_size = 50\nhistory_ttl = 70\n")
    environ = {"TIDINGS_HISTORY_SIZE": "60", "TIDINGS_HISTORY_TTL": "80"}
    flags = {"history_ttl": (90.0, "--history-ttl"), "host": (None, "--host")}
    loaded = load(config, environ, flags)
    settings = loaded.settings
    assert settings.port == 9001  # file over default
    assert settings.history_size == 60  # environment over file
    assert settings.history_ttl == 90.0  # flag over environment
    assert settings.host == Settings().host  # a flag not given changes nothing
    assert loaded.source(("server", "port")) == f"file {config}"
    assert loaded.source(("server", "history_size")) == "env TIDINGS_HISTORY_SIZE"
    assert loaded.source(("server", "history_ttl")) == "flag --history-ttl"
    assert loaded.source(("server", "host")) == "default"


def example_text(key: str, default: Any) -> tuple[str, Any]:
    """A variable's text for ``key`` that differs from its default, and the value it gives."""
    if key == "broker":
        return "redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/3"
    if key == "transports":
        return "sse,poll", ("sse", "poll")
    if key == "trusted_proxies":
        return "10.0.0.0/8, 127.0.0.1", ("10.0.0.0/8", "127.0.0.1")
    if key == "metrics_listen":
        return "127.0.0.1:9100", "127.0.0.1:9100"
    if key == "slow_reader":
        return "latest", "latest"
    if key in ("log_level", "log_format"):
        other = {"log_level": "debug", "log_format": "json"}[key]
        return other, other
    if isinstance(default, tuple):
        return "https://a.example, https://b.example", ("https://a.example",
                                                        "https://b.example")
    if isinstance(default, bool):
        return ("false" if default else "true"), not default
    if isinstance(default, int):
        return str(default + 7), default + 7
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    return "0.0.0.0", "0.0.0.0"


@pytest.mark.parametrize("key", server_keys())
def test_every_server_setting_has_its_variable(key: str) -> None:
    variable = variable_of(("server", key))
    assert variable == "TIDINGS_" + key.upper()
    text, value = example_text(key, getattr(Settings(), key))
    loaded = load(None, {variable: text})
    assert getattr(loaded.settings, key) == value
    assert loaded.source(("server", key)) == f"env {variable}"


def test_lists_as_commas_or_toml() -> None:
    environ = {"TIDINGS_CORS_ORIGINS": '["https://a.example", "https://b,c.example"]'}
    assert load(None, environ).settings.cors_origins == ("https://a.example",
                                                         "https://b,c.example")


def test_auth_from_the_environment_turns_access_control_on(tmp_path: Path) -> None:
    loaded = load(None, {"TIDINGS_AUTH_JWT_HS256_SECRET": SECRET,
                         "TIDINGS_AUTH_DEFAULT_SUBSCRIBE": "anyone"})
    auth = loaded.settings.auth
    assert auth.enabled
    assert (auth.jwt_hs256_secret, auth.default_subscribe) == (SECRET, "anyone")
    assert loaded.source(("auth", "jwt_hs256_secret")) == "env TIDINGS_AUTH_JWT_HS256_SECRET"
    # TIDINGS_API_KEY (the older name, which the client commands read too) is [auth] api_key.
    loaded = load(write(tmp_path, '[auth]\napi_key = "from-the-file"\n'),
                  {"TIDINGS_API_KEY": API_KEY})
    assert loaded.settings.auth.api_key == API_KEY
    assert Authenticator(loaded.settings.auth).enabled


def test_namespaces_by_variable_and_as_toml(tmp_path: Path) -> None:
    config = write(tmp_path, "[server]\nhistory_ttl = 120\n[namespaces.prices]\n"
                             "history_size = 10\npublish = \"anyone\"\n")
    loaded = load(config, {
        "TIDINGS_NAMESPACES_PRICES_HISTORY_TTL": "5",
        "TIDINGS_NAMESPACES_CHAT_ROOMS_IDEMPOTENCY_WINDOW": "30",
        "TIDINGS_NAMESPACES": '{"Odd.Name" = {history_size = 3}}',
    })
    namespaces = loaded.settings.namespaces
    assert namespaces["prices"] == Retention(10, 5.0)  # the file's size, the variable's ttl
    assert namespaces["chat_rooms"] == Retention(1000, 120.0, 30.0)
    assert namespaces["Odd.Name"] == Retention(3, 120.0)
    assert loaded.settings.auth.rules["prices"].publish == "anyone"
    assert (loaded.source(("namespaces", "prices", "history_ttl"))
            == "env TIDINGS_NAMESPACES_PRICES_HISTORY_TTL")
    assert loaded.source(("namespaces", "Odd.Name", "history_size")) == "env TIDINGS_NAMESPACES"
    assert loaded.source(("namespaces", "prices", "history_size")) == f"file {config}"


def test_bridges_as_toml() -> None:
    loaded = load(None, {"TIDINGS_BRIDGES": '[{dsn = "postgresql://app@db/shop", '
                                            'tables = [{table = "t", channel = "c:{id}"}]}]'})
    (bridge,) = loaded.settings.bridges
    assert (bridge.dsn, bridge.tables) == ("postgresql://app@db/shop", (("t", "c:{id}"),))


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path, "[server]\nport = 9002\n")
    assert load(None, {"TIDINGS_CONFIG": str(config)}).settings.port == 9002
    other = write(tmp_path, "[server]\nport = 9003\n", "other.toml")
    assert load(other, {"TIDINGS_CONFIG": str(config)}).settings.port == 9003  # --config wins


def test_key_file_relative_to_the_file_or_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    config = write(tmp_path / "conf", '[auth]\njwt_public_key_file = "key.pem"\n')
    assert load(config, {}).settings.auth.jwt_public_key_file == str(
        (tmp_path / "conf" / "key.pem").absolute())
    monkeypatch.chdir(tmp_path)
    loaded = load(config, {"TIDINGS_AUTH_JWT_PUBLIC_KEY_FILE": "env.pem"})
    assert loaded.settings.auth.jwt_public_key_file == str((tmp_path / "env.pem").absolute())


def test_kubernetes_service_links_are_ignored() -> None:
    environ = {"TIDINGS_PORT": "tcp://10.0.0.7:8000", "TIDINGS_SERVICE_HOST": "10.0.0.7",
               "TIDINGS_SERVICE_PORT": "8000", "TIDINGS_PORT_8000_TCP": "tcp://10.0.0.7:8000",
               "TIDINGS_PORT_8000_TCP_ADDR": "10.0.0.7", "TIDINGS_URL": "http://x",
               "TIDINGS_TEST_UNIT": "3"}
    loaded = load(None, environ)
    assert loaded.settings == Settings()
    assert {name for name, _why in loaded.ignored} == {
        "TIDINGS_PORT", "TIDINGS_SERVICE_HOST", "TIDINGS_SERVICE_PORT", "TIDINGS_PORT_8000_TCP",
        "TIDINGS_PORT_8000_TCP_ADDR"}


def test_every_problem_is_reported_at_once_under_its_own_name(tmp_path: Path) -> None:
    config = write(tmp_path, "[server]\nhistroy_size = 3\n")
    environ = {"TIDINGS_HISTORY_SISE": "3", "TIDINGS_PORT": "eighty",
               "TIDINGS_HISTORY_TTL": "-1", "TIDINGS_AUTH_JWT_HS256_SECRET": "short",
               "TIDINGS_TRANSPORTS": "sse,carrier-pigeon", "TIDINGS_NAMESPACES_X_SIZE": "1",
               "TIDINGS_BRIDGES": "[{dsn = }", "TIDINGS_MAX_HEADERS": "1.5"}
    with pytest.raises(UsageError) as info:
        load(config, environ)
    lines = str(info.value).splitlines()
    expected = [
        f"{config}: [server] unknown key 'histroy_size' (did you mean 'history_size'?)",
        "TIDINGS_HISTORY_SISE is not a setting (did you mean TIDINGS_HISTORY_SIZE?)",
        "TIDINGS_PORT must be an integer, not 'eighty'",
        "TIDINGS_MAX_HEADERS must be an integer, not '1.5'",
        "TIDINGS_HISTORY_TTL must be positive, not -1",
        "TIDINGS_AUTH_JWT_HS256_SECRET is 5 bytes",
        "TIDINGS_TRANSPORTS: unknown transports ['carrier-pigeon']",
        "TIDINGS_NAMESPACES_X_SIZE is not TIDINGS_NAMESPACES_<NAME>_<KEY>",
        "TIDINGS_BRIDGES must be a TOML array",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, lines)
    assert "short" not in str(info.value)  # a secret is never repeated in an error


def test_both_api_key_variables_is_an_error() -> None:
    with pytest.raises(UsageError, match="both set"):
        load(None, {"TIDINGS_API_KEY": API_KEY, "TIDINGS_AUTH_API_KEY": API_KEY})


# the command ----------------------------------------------------------------------


def tidings(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "tidings", *args], capture_output=True,
                          text=True, timeout=20 * UNIT, env=environment, cwd=cwd)


def test_config_prints_values_sources_and_masks_secrets(tmp_path: Path) -> None:
    config = write(tmp_path, f"""
[server]
port = 9004
broker = "redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0"
[auth]
api_key = "{API_KEY}"
[[bridges]]
dsn = "postgresql://app:{DSN_PASSWORD}@db/shop"
""")
    result = tidings("config", "--config", str(config), "--host", "0.0.0.0",
                     env={"TIDINGS_AUTH_JWT_HS256_SECRET": SECRET,
                          "TIDINGS_HISTORY_SIZE": "42", "TIDINGS_SERVICE_HOST": "10.0.0.7"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for secret in (SECRET, API_KEY, REDIS_PASSWORD, DSN_PASSWORD):
        assert secret not in out
    # The output is a config file (the masked one): it parses as TOML.
    table = tomllib.loads(out)
    assert table["server"]["port"] == 9004
    assert table["server"]["history_size"] == 42
    assert table["server"]["broker"] == f"redis://:{MASK}@127.0.0.1:6379/0"
    assert table["auth"]["api_key"] == table["auth"]["jwt_hs256_secret"] == MASK
    assert table["bridges"][0]["dsn"] == f"postgresql://app:{MASK}@db/shop"
    sources = dict(re.findall(r"^(\w+) = .*# (.+)$", out, re.M))
    assert sources["host"] == "flag --host"
    assert sources["history_size"] == "env TIDINGS_HISTORY_SIZE"
    assert sources["port"] == f"file {config}"
    assert sources["max_headers"] == "default"
    assert "# Access control: on." in out
    assert "# ignored: TIDINGS_SERVICE_HOST" in out


def test_config_as_json(tmp_path: Path) -> None:
    result = tidings("config", "--format", "json", env={"TIDINGS_API_KEY": API_KEY,
                                                        "TIDINGS_BROKER": "memory"})
    assert result.returncode == 0, result.stderr
    assert API_KEY not in result.stdout
    table = json.loads(result.stdout)
    assert table["server"]["broker"] == {"value": "memory", "source": "env TIDINGS_BROKER"}
    assert table["server"]["port"] == {"value": 8000, "source": "default"}
    assert table["auth"]["api_key"] == {"value": MASK, "source": "env TIDINGS_API_KEY"}
    assert table["access_control"] == "on"


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"TIDINGS_HISTORY_SIZE": "0"}, [], "TIDINGS_HISTORY_SIZE must be at least 1"),
    ({"TIDINGS_HISTROY_SIZE": "3"}, [], "did you mean TIDINGS_HISTORY_SIZE?"),
    ({}, ["--config", "missing.toml"], "cannot read config file"),
    ({"TIDINGS_CONFIG": "missing.toml"}, [], "cannot read config file"),
    ({}, ["--history-size", "0"], "--history-size must be at least 1"),
    ({}, ["--broker", "postgres://x"], "--broker: broker must be"),
    ({"TIDINGS_AUTH_JWT_PUBLIC_KEY_FILE": "missing.pem"}, [], "missing.pem"),
])
def test_config_exits_2_on_any_error(tmp_path: Path, env: dict[str, str], args: list[str],
                                     message: str) -> None:
    result = tidings("config", *args, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_serve_takes_its_settings_from_the_environment(tmp_path: Path) -> None:
    """``tidings serve`` reads the same layers: the environment's transports are served,
    and ``--port 0`` wins over ``TIDINGS_PORT``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environment.update(TIDINGS_TRANSPORTS="poll", TIDINGS_PORT="1", TIDINGS_HISTORY_SIZE="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=10 * UNIT), "tidings serve printed nothing"
        line = process.stdout.readline()
        assert line.startswith("tidings serving on "), line
        url = line.split()[-1]
        with httpx.Client(base_url=url, timeout=10 * UNIT) as http:
            ids = [http.post("/channels/c", json=n).json()["id"] for n in range(3)]
            answer = http.get("/channels/c", params={"since": "0"}).json()
            assert [m["id"] for m in answer["messages"]] == ids[1:]  # history_size 2
            refused = http.get("/channels/c", headers={"Accept": "text/event-stream"})
            assert refused.status_code == 403
            assert refused.json()["error"] == "transport_disabled"
    finally:
        process.terminate()
        process.communicate(timeout=10 * UNIT)


def test_a_variable_of_the_operators_own_is_refused_with_what_to_do() -> None:
    """Not a typo: no far-fetched suggestion (TIDINGS_DEBUG is not TIDINGS_BRIDGES), but
    what to do; the variables other tools read pass."""
    with pytest.raises(UsageError) as info:
        load(None, {"TIDINGS_DEBUG": "1", "TIDINGS_TEST_UNIT": "3",
                    "TIDINGS_URL": "http://x", "TIDINGS_LOGLEVEL": "debug"})
    lines = str(info.value).splitlines()
    assert [line.split(" is not")[0] for line in lines] == ["TIDINGS_DEBUG", "TIDINGS_LOGLEVEL"]
    assert "did you mean" not in lines[0]
    assert "(did you mean TIDINGS_LOG_LEVEL?)" in lines[1]
    assert all("rename or unset it" in line for line in lines)
    assert load(None, {"TIDINGS_TEST_UNIT": "3"}).settings == load(None, {}).settings
