"""Structured logs: ``--log-format json``, the access log, and no credential in any line.

``tidings serve`` runs as a child process at debug level with JSON logs and
the access log on; clients we did not write (httpx, the ``websockets``
package) use every way a credential can travel; then every line of stderr is
parsed as JSON and searched for the credentials.
"""

from __future__ import annotations

import io
import json
import logging
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import UNIT
from tidings import Server, Settings, logs

API_KEY = "api-key-that-must-never-be-logged-1234"
WRONG_KEY = "wrong-key-that-must-never-be-logged-5678"
SECRET = "hs256-secret-that-must-never-be-logged-0123456789"


def token(sub: str = "alice", **claims: object) -> str:
    grants = {"subscribe": ["*"], "publish": ["*"]}
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, "channels": grants, **claims},
                      SECRET, "HS256")


class Serving:
    """``tidings serve`` with JSON logs at debug level; :meth:`stop` returns its log lines."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        environment.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=10 * UNIT):
                self.process.kill()
                raise AssertionError("tidings serve printed nothing")
        line = self.process.stdout.readline()
        assert line.startswith("tidings serving on "), (line, self.process.stderr.read()
                                                        if self.process.stderr else "")
        self.url = line.split()[-1]

    def stop(self) -> str:
        self.process.terminate()
        _out, err = self.process.communicate(timeout=10 * UNIT)
        return err


@pytest.fixture
def serving() -> Iterator[Serving]:
    server = Serving("--log-level", "debug", "--log-format", "json",
                     env={"TIDINGS_API_KEY": API_KEY, "TIDINGS_AUTH_JWT_HS256_SECRET": SECRET,
                          "TIDINGS_ACCESS_LOG": "true",
                          "TIDINGS_AUTH_DEFAULT_PUBLISH": "token"})
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.communicate()


async def use_every_credential(url: str) -> list[str]:
    """Send credentials every way a client can; return every credential sent."""
    good, expired = token(), token("bob", exp=int(time.time()) - 600)
    forged = jwt.encode({"sub": "mallory"}, "another-secret-of-32-bytes-or-more!!", "HS256")
    ws_url = url.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=url, timeout=10 * UNIT) as http:
        ok = await http.post("/channels/c", json=1, headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 201
        assert (await http.post("/channels/c", json=2,
                                headers={"Authorization": f"Bearer {good}"})).status_code == 201
        assert (await http.get("/channels/c", params={"token": good})).status_code == 200
        assert (await http.get("/channels/c", params={"since": "0", "token": expired})
                ).status_code == 401
        assert (await http.get("/channels/c", params={"token": forged})).status_code == 401
        assert (await http.get("/channels/c", headers={
            "Cookie": f"tidings_token={good}; other=1"})).status_code == 200
        assert (await http.get("/metrics", headers={"Authorization": f"Bearer {WRONG_KEY}"})
                ).status_code == 401
        assert (await http.get("/channels/c", params={"wait": "0"},
                               headers={"Authorization": f"Bearer {WRONG_KEY}"})
                ).status_code == 401
        async with http.stream("GET", "/channels/c", headers={
                "Accept": "text/event-stream", "Authorization": f"Bearer {good}"}) as stream:
            assert stream.status_code == 200
    async with connect(f"{ws_url}/channels/c?token={good}") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token("alice"), "req": 1}))
        assert json.loads(await ws.recv())["type"] in ("subscribed", "ack")
    with pytest.raises(InvalidStatus):
        async with connect(f"{ws_url}/channels/c?token={forged}"):
            pass
    return [API_KEY, WRONG_KEY, SECRET, good, expired, forged]


async def test_no_log_line_holds_a_credential(serving: Serving) -> None:
    credentials = await use_every_credential(serving.url)
    err = serving.stop()
    lines = err.splitlines()
    assert len(lines) > 5
    for credential in credentials:
        for part in {credential, *credential.split(".")}:  # a JWT's signature alone, too
            assert part not in err, f"a credential is in the log: {part[:12]}..."
    # Every line is one JSON object with the stable fields.
    records = [json.loads(line) for line in lines]
    for record in records:
        assert {"time", "level", "logger", "event"} <= set(record), record
    access = [r for r in records if r["logger"] == "tidings.access"]
    assert {r.get("technique") for r in access} >= {"publish", "poll", "longpoll", "sse",
                                                "websocket"}
    assert {r["status"] for r in access} >= {201, 200, 401, 101}
    for record in access:
        assert {"client", "method", "path", "status", "duration_ms"} <= set(record)
        assert record["client"] == "127.0.0.1"
    refused = [r for r in records if r["event"].startswith("refused")]
    assert {r["code"] for r in refused} >= {"invalid_token", "token_expired"}
    assert any("[redacted]" in r["path"] for r in access)


async def test_the_access_log_is_off_by_default() -> None:
    server = Serving("--log-level", "debug", "--log-format", "json", env={})
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as http:
        assert (await http.get("/channels/c")).status_code == 200
    err = server.stop()
    records = [json.loads(line) for line in err.splitlines()]
    assert records  # debug lines are there
    assert not [r for r in records if r["logger"] == "tidings.access"]


async def test_a_server_with_the_access_log_writes_it_after_a_configure_without(
        caplog: pytest.LogCaptureFixture) -> None:
    """``access_log = true`` on a server started after ``configure`` turned the access log
    off (as ``tidings serve`` does without it, in the same process): the lines are written."""
    logs.configure("warning", "text", stream=io.StringIO(), access_log=False)
    assert logging.getLogger(logs.ACCESS_LOGGER).disabled
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER)
    async with (Server(Settings(host="127.0.0.1", port=0, access_log=True)) as server,
                httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as http):
        assert (await http.get("/channels/c")).status_code == 200
    assert [r.status for r in caplog.records  # type: ignore[attr-defined]
            if r.name == logs.ACCESS_LOGGER] == [200]


async def test_text_format_keeps_its_shape_with_fields() -> None:
    server = Serving("--log-level", "info", env={"TIDINGS_ACCESS_LOG": "1"})
    async with httpx.AsyncClient(base_url=server.url, timeout=10 * UNIT) as http:
        await http.get("/channels/c", params={"token": "abc.def.ghi"})
    err = server.stop()
    (line,) = [line for line in err.splitlines() if "tidings.access" in line]
    assert " GET /channels/c?token=[redacted] 200 " in line
    assert "technique=poll" in line and "status=200" in line and "client=127.0.0.1" in line


def test_scrubber_patterns() -> None:
    scrub = logs.Scrubber(["s3cret-value"])
    assert scrub("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert scrub("GET /c?since=0&token=xyz&x=1") == "GET /c?since=0&token=[redacted]&x=1"
    assert scrub("cookie tidings_token=abc; b=2") == "cookie tidings_token=[redacted]; b=2"
    assert scrub("key s3cret-value!") == "key [redacted]!"
    jwt_text = token()
    assert scrub(f"bad {jwt_text} here") == "bad [redacted] here"
    assert scrub("since=0-1 and tokens=3") == "since=0-1 and tokens=3"


def test_json_formatter_fields_and_exceptions() -> None:
    stream = io.StringIO()
    logs.configure("debug", "json", stream=stream, secrets=["topsecretvalue"])
    log = logging.getLogger("tidings.test")
    log.info("hello %s", "topsecretvalue", extra={"client": "10.0.0.1", "code": "x"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "hello [redacted]"
    assert (first["level"], first["logger"], first["client"], first["code"]) == (
        "info", "tidings.test", "10.0.0.1", "x")
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["error"] == "ValueError: boom" and "Traceback" in second["traceback"]
    logs.configure("warning", "text", stream=io.StringIO())  # leave a quiet root handler


@pytest.mark.parametrize(("env", "message"), [
    ({"TIDINGS_LOG_FORMAT": "xml"}, "TIDINGS_LOG_FORMAT must be one of text, json"),
    ({"TIDINGS_LOG_LEVEL": "loud"}, "TIDINGS_LOG_LEVEL must be one of debug"),
    ({"TIDINGS_ACCESS_LOG": "maybe"}, "TIDINGS_ACCESS_LOG must be true or false"),
])
def test_bad_log_settings_exit_2(env: dict[str, str], message: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    result = subprocess.run([sys.executable, "-m", "tidings", "serve", "--port", "0"],
                            env={**environment, **env}, capture_output=True, text=True,
                            timeout=20 * UNIT)
    assert result.returncode == 2
    assert message in result.stderr
