"""The ``tidings`` command, run as ``python -m tidings`` in a child process.

Each wait on the child is bounded by a multiple of ``UNIT`` seconds.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import UNIT

PREFIX = "tidings serving on "


class Served:
    """A ``tidings serve`` child process; :attr:`url` is parsed from its first line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", "0", "--log-level", "warning",
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.url = self._await_url()

    def _await_url(self) -> str:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=10 * UNIT):
                self.process.kill()
                raise AssertionError("tidings serve printed nothing")
        line = self.process.stdout.readline()
        if not line.startswith(PREFIX):
            _out, err = self.process.communicate(timeout=10 * UNIT)
            raise AssertionError(f"unexpected first line {line!r}; stderr: {err}")
        url = line[len(PREFIX):].strip()
        assert url.startswith("http://127.0.0.1:")
        return url

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send ``sig``; return the exit code and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            _out, err = self.process.communicate(timeout=10 * UNIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise AssertionError(f"tidings serve did not stop on signal {sig}") from None
        return self.process.returncode, err


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served("--history-size", "5", "--history-ttl", "60")
    yield server
    code, err = server.stop()
    assert code == 0, err


def tidings(*args: str, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TIDINGS_URL"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "tidings", *args], input=input,
                          capture_output=True, text=True, timeout=20 * UNIT, env=environment)


def poll_all(url: str, channel: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/channels/{channel}", params={"since": "0"}, timeout=5 * UNIT)
    assert response.status_code == 200, response.text
    return dict(response.json())


def publish_many(url: str, channel: str, count: int) -> list[str]:
    with httpx.Client(base_url=url, timeout=5 * UNIT) as client:
        ids = []
        for n in range(1, count + 1):
            response = client.post(f"/channels/{channel}", json=n)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# publish -----------------------------------------------------------------------


def test_publish_argument(served: Served) -> None:
    result = tidings("publish", "cli-arg", '{"a":1}', "--url", served.url)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["channel"] == "cli-arg"
    messages = poll_all(served.url, "cli-arg")["messages"]
    assert [(m["id"], m["data"]) for m in messages] == [(answer["id"], {"a": 1})]


def test_publish_from_stdin(served: Served) -> None:
    result = tidings("publish", "cli-stdin", "--url", served.url + "/",
                     input='{"b": [1, 2, "drei"]}\n')
    assert result.returncode == 0, result.stderr
    messages = poll_all(served.url, "cli-stdin")["messages"]
    assert [m["data"] for m in messages] == [{"b": [1, 2, "drei"]}]


def test_publish_url_from_environment(served: Served) -> None:
    result = tidings("publish", "cli-env", '"hello"', env={"TIDINGS_URL": served.url})
    assert result.returncode == 0, result.stderr
    assert [m["data"] for m in poll_all(served.url, "cli-env")["messages"]] == ["hello"]


@pytest.mark.parametrize("text", ["{bad", "", "NaN", "[1,]"])
def test_publish_invalid_json_exits_2(served: Served, text: str) -> None:
    result = tidings("publish", "cli-bad", text, "--url", served.url)
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr
    assert poll_all(served.url, "cli-bad")["messages"] == []


def test_publish_refused_by_server_exits_1(served: Served) -> None:
    too_big = '"' + "x" * (64 * 1024) + '"'  # over the server's max_message_size
    result = tidings("publish", "cli-big", "--url", served.url, input=too_big)
    assert result.returncode == 1
    assert "413" in result.stderr


def test_publish_unreachable_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = tidings("publish", "c", "1", "--url", url)
    assert result.returncode == 1
    assert "cannot reach" in result.stderr and url in result.stderr


# serve -------------------------------------------------------------------------


def test_history_size_is_honored(served: Served) -> None:
    ids = publish_many(served.url, "cli-history", 7)
    answer = poll_all(served.url, "cli-history")
    assert [m["id"] for m in answer["messages"]] == ids[2:]
    assert [int(m["id"].rpartition("-")[2]) for m in answer["messages"]] == [3, 4, 5, 6, 7]
    assert [m["data"] for m in answer["messages"]] == [3, 4, 5, 6, 7]
    assert "gap" not in answer  # since=0 starts at the oldest retained message
    # Resuming from the first message: two were dropped, and the answer says so.
    resumed = httpx.get(f"{served.url}/channels/cli-history", params={"since": ids[0]},
                        timeout=5 * UNIT).json()
    assert resumed["gap"] is True
    assert [m["id"] for m in resumed["messages"]] == ids[2:]


def test_config_file_with_namespaces(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(
        "[server]\nhistory_size = 3\ncors_origins = [\"https://a.example\"]\n\n"
        "[namespaces.x]\nhistory_size = 2\nhistory_ttl = 30\n"
    )
    server = Served("--config", str(config))
    try:
        assert len(poll_all(server.url, "plain")["messages"]) == 0
        publish_many(server.url, "plain", 4)
        publish_many(server.url, "x:a", 4)
        publish_many(server.url, "xa", 4)
        assert [m["data"] for m in poll_all(server.url, "plain")["messages"]] == [2, 3, 4]
        assert [m["data"] for m in poll_all(server.url, "x:a")["messages"]] == [3, 4]
        assert [m["data"] for m in poll_all(server.url, "xa")["messages"]] == [2, 3, 4]
        response = httpx.get(f"{server.url}/channels/plain",
                             headers={"Origin": "https://a.example"}, timeout=5 * UNIT)
        assert response.headers["access-control-allow-origin"] == "https://a.example"
    finally:
        code, err = server.stop()
    assert code == 0, err


def test_flags_override_config_file(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text("[server]\nhistory_size = 3\n")
    server = Served("--config", str(config), "--history-size", "4")
    try:
        publish_many(server.url, "plain", 6)
        assert [m["data"] for m in poll_all(server.url, "plain")["messages"]] == [3, 4, 5, 6]
    finally:
        code, err = server.stop()
    assert code == 0, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_down_cleanly(sig: int) -> None:
    server = Served()
    # A client with an open keep-alive connection does not hold the shutdown up.
    with httpx.Client(base_url=server.url, timeout=5 * UNIT) as client:
        assert client.get("/healthz").status_code == 200
        code, err = server.stop(sig)
    assert code == 0, err
    assert "shutting down" in err
    assert "Traceback" not in err


def test_signal_at_once_after_the_url_line() -> None:
    """The URL line means the server can be stopped: no window without signal handlers."""
    for _ in range(3):
        code, err = Served().stop(signal.SIGINT)
        assert code == 0, err


def test_port_in_use_exits_non_zero() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tidings("serve", "--port", str(port))
    assert result.returncode != 0
    assert "cannot listen" in result.stderr and str(port) in result.stderr
    assert "Traceback" not in result.stderr
    assert PREFIX not in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--history-size", "0"], "--history-size"),
        (["serve", "--history-ttl", "0"], "--history-ttl"),
        (["serve", "--config", "/nonexistent/tidings.toml"], "cannot read config file"),
        (["serve", "--broker", "postgres://x"], "broker must be 'memory' or a redis://"),
    ],
)
def test_serve_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = tidings(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "config",
    ["[server]\nhistory_sise = 3\n", "[sever]\nport = 1\n", "[namespaces.x]\nsize = 3\n",
     "[server\n", "[server]\nport = \"eighty\"\n", "[namespaces.x]\nhistory_size = \"many\"\n"],
    ids=["unknown-key", "unknown-section", "unknown-namespace-key", "not-toml", "bad-port",
         "bad-namespace-size"],
)
def test_bad_config_file_exits_2(tmp_path: Path, config: str) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text(config)
    result = tidings("serve", "--port", "0", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_prints_help_and_exits_2() -> None:
    result = tidings()
    assert result.returncode == 2
    assert "serve" in result.stdout and "publish" in result.stdout


# what a new user trips over (issue 12) -------------------------------------------


@pytest.mark.parametrize("channel", ["x#y", "x?y", "../healthz", "x/y", "x y", ""])
def test_publish_refuses_a_bad_channel_name_before_sending(served: Served, channel: str) -> None:
    result = tidings("publish", channel, "1", "--url", served.url)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("tidings: channel name"), result.stderr
    assert "Traceback" not in result.stderr
    assert poll_all(served.url, "x")["messages"] == []  # 'x#y' did not land on 'x'


def test_publish_api_key_flag_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('[auth]\napi_key = "k-0123456789"\ndefault_subscribe = "anyone"\n')
    server = Served("--config", str(config))
    try:
        refused = tidings("publish", "keyed", "1", "--url", server.url)
        assert refused.returncode == 1 and "401" in refused.stderr
        by_flag = tidings("publish", "keyed", "2", "--url", server.url,
                          "--api-key", "k-0123456789")
        assert by_flag.returncode == 0, by_flag.stderr
        by_env = tidings("publish", "keyed", "3", "--url", server.url,
                         env={"TIDINGS_API_KEY": "k-0123456789"})
        assert by_env.returncode == 0, by_env.stderr
        assert [m["data"] for m in poll_all(server.url, "keyed")["messages"]] == [2, 3]
    finally:
        code, err = server.stop()
    assert code == 0, err
    assert "TIDINGS_API_KEY" in tidings("publish", "--help").stdout


def test_help_is_plain_text() -> None:
    result = tidings("--help")
    assert result.returncode == 0
    assert "``" not in result.stdout and ":class:" not in result.stdout


def test_log_level_has_help_and_says_its_default() -> None:
    assert "(default info)" in " ".join(tidings("serve", "--help").stdout.split())
    assert "(default warning)" in " ".join(tidings("demo", "--help").stdout.split())


def test_serve_prints_its_start_line_once() -> None:
    server = Served("--log-level", "info")
    code, err = server.stop()
    assert code == 0, err
    assert "serving on" not in err  # only the line on stdout Served already read


def test_demo_database_without_psycopg_prints_a_hint_not_a_traceback() -> None:
    # psycopg is installed here: make importing it fail, as in an install without the extra.
    program = ("import sys; sys.modules['psycopg'] = None; from tidings.cli import main; "
               "sys.exit(main(['demo', '--port', '0', '--database', 'postgresql://x/y']))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=20 * UNIT)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert "pip install -e '.[postgres]'" in line and "tidings[postgres]" not in line


def test_serve_on_redis_without_redis_py_prints_an_install_line_that_works() -> None:
    # The Redis broker needs hiredis (from the redis extra): make importing it fail.
    program = ("import sys; sys.modules['hiredis'] = None; from tidings.cli import main; "
               "sys.exit(main(['serve', '--port', '0', '--broker', 'redis://127.0.0.1:1/0']))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=20 * UNIT)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    # tidings is not on the package index: the hint says what works from a checkout or a wheel.
    assert "pip install -e '.[redis]'" in line and ".whl[redis]" in line
    assert "tidings[redis]" not in line
