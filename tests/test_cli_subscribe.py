"""``tidings subscribe``: messages as JSON lines on stdout, what happens on stderr."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import IO

import pytest

from conftest import UNIT
from test_cli import Served, publish_many, tidings

TRANSPORTS = ["websocket", "sse", "longpoll", "poll", "auto"]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    server = Served()
    yield server
    server.stop()


_pending: dict[int, bytes] = {}


def read_line(stream: IO[str], timeout: float) -> str:
    """One line from a child's pipe, or fail after ``timeout`` seconds.

    Reads the file descriptor itself: a buffered reader could hold a second
    line that ``select`` would then wait for in vain.
    """
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in _pending.get(fd, b""):
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"no line in time; got {_pending.get(fd, b'')!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"pipe closed; got {_pending.get(fd, b'')!r}")
            _pending[fd] = _pending.get(fd, b"") + chunk
    line, _, rest = _pending[fd].partition(b"\n")
    _pending[fd] = rest
    return line.decode() + "\n"


def subscribe(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tidings", "subscribe", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            _pending.pop(pipe.fileno(), None)  # the descriptor number will be reused
    process.send_signal(signal.SIGINT)
    try:
        _out, err = process.communicate(timeout=10 * UNIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("tidings subscribe did not end on Ctrl-C") from None
    return process.returncode, err


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_prints_each_message_as_a_json_line(served: Served, transport: str) -> None:
    channels = [f"sub-{transport}-a", f"sub-{transport}-b"]
    before = publish_many(served.url, channels[0], 2)
    process = subscribe(*channels, "--url", served.url, "--transport", transport, "--since", "0")
    try:
        assert process.stdout is not None and process.stderr is not None
        lines = [json.loads(read_line(process.stdout, 10 * UNIT)) for _ in before]
        assert [line["id"] for line in lines] == before
        assert [line["data"] for line in lines] == [1, 2]
        assert "connected over" in read_line(process.stderr, 10 * UNIT)
        after = publish_many(served.url, channels[1], 1)
        line = json.loads(read_line(process.stdout, 10 * UNIT))
        assert (line["channel"], line["id"], line["data"]) == (channels[1], after[0], 1)
        assert set(line) == {"channel", "id", "data", "time"}
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert "Traceback" not in err


def test_reports_a_gap_on_stderr(served: Served) -> None:
    process = subscribe("sub-gap", "--url", served.url, "--transport", "poll",
                        "--since", "zzzzzzzz-1")
    try:
        assert process.stderr is not None
        lines = [read_line(process.stderr, 10 * UNIT) for _ in range(2)]
        assert any("gap on sub-gap" in line and "epoch" in line for line in lines), lines
    finally:
        stop(process)


def test_bad_url_is_a_usage_error() -> None:
    result = tidings("subscribe", "x", "--url", "ftp://nowhere")
    assert result.returncode == 2
    assert "tidings:" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stops_on_a_signal_when_started_with_sigint_ignored(served: Served, sig: int) -> None:
    """``tidings subscribe … &`` in a script: the shell starts it with SIGINT ignored."""
    command = [sys.executable, "-m", "tidings", "subscribe", "sub-ignored", "--url", served.url,
               "--transport", "websocket"]
    process = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        assert "connected over websocket" in read_line(process.stderr, 10 * UNIT)
        _pending.pop(process.stderr.fileno(), None)
        process.send_signal(sig)
        _out, err = process.communicate(timeout=10 * UNIT)
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_a_websocket_refused_while_redis_is_away_keeps_retrying() -> None:
    """Issue 12: a node on a Redis that is not up yet; ``subscribe`` retries, then reads."""
    from rediskit import RedisProcess, redis_missing

    if (missing := redis_missing()) is not None:
        pytest.skip(missing)
    redis = RedisProcess()
    node = Served("--broker", redis.url)
    try:
        process = subscribe("sub-late", "--url", node.url, "--transport", "websocket",
                            "--since", "0")
        try:
            assert process.stdout is not None and process.stderr is not None
            for _ in range(2):  # refused, retried, refused again: still running
                line = read_line(process.stderr, 10 * UNIT)
                assert "broker_unavailable" in line and "reconnecting in" in line, line
            assert process.poll() is None
            redis.start()
            deadline = time.monotonic() + 15 * UNIT
            while True:
                result = tidings("publish", "sub-late", "42", "--url", node.url)
                if result.returncode == 0:
                    break
                assert time.monotonic() < deadline, result.stderr
                time.sleep(0.05)
            message = json.loads(read_line(process.stdout, 15 * UNIT))
            assert message["data"] == 42
        finally:
            code, err = stop(process)
        assert code == 0, err
    finally:
        node.stop()
        redis.stop()
