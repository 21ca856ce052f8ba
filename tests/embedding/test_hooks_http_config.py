"""``[hooks]`` in the config file and ``TIDINGS_HOOKS_*`` in the environment.

The layering is driven directly (``tidings.configuration.load``); ``tidings
config`` and ``tidings serve`` run as child processes with a real
environment, ``serve`` calling a real application's hooks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from hookapp import SECRET, hook_app

from tidings import Settings, UsageError
from tidings.configuration import MASK, load
from tidings.settings import HooksSettings
from tidings.testing import UNIT, require_error

FILE = f"""
[hooks]
connect_url = "http://app.internal:8001/tidings/connect"
publish_url = "http://app.internal:8001/tidings/publish"
timeout = 2.5
secret = "{SECRET}"
forward_headers = ["Authorization", "X-Request-Id"]
forward_cookies = ["sessionid"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return path


def test_hooks_from_the_file(tmp_path: Path) -> None:
    hooks = Settings.from_file(write(tmp_path, FILE)).hooks
    assert hooks == HooksSettings(
        connect_url="http://app.internal:8001/tidings/connect",
        publish_url="http://app.internal:8001/tidings/publish", timeout=2.5, secret=SECRET,
        forward_headers=("authorization", "x-request-id"), forward_cookies=("sessionid",))
    assert hooks.enabled
    assert (hooks.url("connect"), hooks.url("subscribe")) == (
        "http://app.internal:8001/tidings/connect", "")
    assert not Settings().hooks.enabled


def test_the_environment_overrides_the_file_key_by_key(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, FILE), {
        "TIDINGS_HOOKS_SUBSCRIBE_URL": "https://app.internal/tidings/subscribe",
        "TIDINGS_HOOKS_TIMEOUT": "1",
        "TIDINGS_HOOKS_FORWARD_COOKIES": "sessionid,csrftoken",
        "TIDINGS_HOOKS_SECRET": "another-secret-of-16-bytes-or-more"})
    hooks = loaded.settings.hooks
    assert hooks.connect_url == "http://app.internal:8001/tidings/connect"  # the file's
    assert hooks.subscribe_url == "https://app.internal/tidings/subscribe"
    assert hooks.timeout == 1
    assert hooks.forward_cookies == ("sessionid", "csrftoken")
    assert hooks.secret == "another-secret-of-16-bytes-or-more"
    assert loaded.source(("hooks", "timeout")) == "env TIDINGS_HOOKS_TIMEOUT"
    assert loaded.source(("hooks", "connect_url")) == f"file {tmp_path / 'tidings.toml'}"


@pytest.mark.parametrize(("text", "message"), [
    ('connect_url = "ftp://app/connect"', "[hooks] connect_url must be an http:// or https://"),
    ('rpc_url = "http://"', "[hooks] rpc_url must be an http:// or https:// URL"),
    ('connect_url = "http://user:pw@app/c"', "[hooks] connect_url must have no user, password"),
    ('connect_url = "http://app/caf\u00e9"', "[hooks] connect_url must be an http:// or https://"),
    ('connect_url = "http://app:99999/c"', "[hooks] connect_url must be an http:// or https://"),
    ('secret = "0123456789abcdef\\r\\nX-Evil: 1"', "[hooks] secret must be printable ASCII"),
    ("timeout = 0", "[hooks] timeout must be more than 0 and at most 60 seconds"),
    ("timeout = 61", "[hooks] timeout must be more than 0 and at most 60 seconds"),
    ('secret = "short"', "[hooks] secret is 5 bytes; use 16 random bytes or more"),
    ('forward_headers = ["X Bad"]', "[hooks] forward_headers must hold header or cookie names"),
    ("forward_cookies = 'sessionid'", "[hooks] forward_cookies must be a list of strings"),
    ('conect_url = "http://app/c"', "unknown key 'conect_url' (did you mean 'connect_url'?)"),
])
def test_mistakes_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError) as refused:
        Settings.from_file(write(tmp_path, f"[hooks]\n{text}\n"))
    assert message in str(refused.value)


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("TIDINGS_HOOKS_TIMEOUT", "soon", "TIDINGS_HOOKS_TIMEOUT must be a number"),
    ("TIDINGS_HOOKS_TIMEOUT", "-1", "TIDINGS_HOOKS_TIMEOUT must be more than 0"),
    ("TIDINGS_HOOKS_CONNECT_URL", "app:8001", "TIDINGS_HOOKS_CONNECT_URL must be an http://"),
    ("TIDINGS_HOOKS_TIMOUT", "1", "did you mean TIDINGS_HOOKS_TIMEOUT?"),
])
def test_environment_mistakes_are_refused_by_variable(variable: str, value: str,
                                                      message: str) -> None:
    with pytest.raises(UsageError) as refused:
        load(None, {variable: value})
    assert message in str(refused.value)


def test_settings_made_in_code_are_checked() -> None:
    with pytest.raises(UsageError, match="timeout"):
        HooksSettings(connect_url="http://app/c", timeout=0)
    with pytest.raises(UsageError, match="secret"):
        HooksSettings(connect_url="http://app/c", secret="")


def _environment(**variables: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environment.update(variables)
    return environment


def test_config_shows_the_hooks_and_masks_the_secret(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidings", "config", "--config", str(write(tmp_path, FILE))],
        capture_output=True, text=True, timeout=30 * UNIT,
        env=_environment(TIDINGS_HOOKS_RPC_URL="http://app.internal:8001/tidings/rpc"))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout
    table = tomllib.loads(result.stdout)["hooks"]
    assert table["secret"] == MASK
    assert table["rpc_url"] == "http://app.internal:8001/tidings/rpc"
    assert table["forward_headers"] == ["authorization", "x-request-id"]
    assert "env TIDINGS_HOOKS_RPC_URL" in result.stdout


async def test_serve_calls_the_hooks_the_environment_names() -> None:
    """``tidings serve`` with ``TIDINGS_HOOKS_*``: a real application decides."""
    async with hook_app() as app:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidings", "serve", "--port", "0", "--log-level", "warning",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_environment(
                TIDINGS_HOOKS_CONNECT_URL=f"{app.url}/connect",
                TIDINGS_HOOKS_SUBSCRIBE_URL=f"{app.url}/subscribe",
                TIDINGS_HOOKS_SECRET=SECRET, TIDINGS_HOOKS_FORWARD_COOKIES="session"))
        try:
            assert process.stdout is not None
            async with asyncio.timeout(15 * UNIT):
                line = (await process.stdout.readline()).decode()
            assert line.startswith("tidings serving on "), line
            async with httpx.AsyncClient(base_url=line.split()[-1], timeout=10 * UNIT) as http:
                anonymous = await http.get("/channels/news")
                theirs = await http.get("/channels/private:bob",
                                        headers={"Cookie": "session=s-alice"})
                mine = await http.get("/channels/private:alice",
                                      headers={"Cookie": "session=s-alice"})
        finally:
            process.terminate()
            async with asyncio.timeout(15 * UNIT):
                await process.communicate()
    require_error(anonymous, 401, "login_required", "an anonymous read")
    require_error(theirs, 403, "not_yours", "another user's channel")
    assert mine.status_code == 200
    assert [call.headers["x-tidings-hook-secret"] for call in app.calls] == [SECRET] * 5
