"""``tidings demo`` run as ``python -m tidings demo`` in a child process."""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys

import httpx

from conftest import UNIT

PREFIX = "tidings demo on "


def start_demo(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start the demo on a free port; return the process and the page URL it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tidings", "demo", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=10 * UNIT):
            process.kill()
            raise AssertionError("tidings demo printed nothing")
    line = process.stdout.readline()
    if not line.startswith(PREFIX):
        process.kill()
        _out, err = process.communicate(timeout=10 * UNIT)
        raise AssertionError(f"unexpected first line {line!r}; stderr: {err}")
    return process, line[len(PREFIX):].strip()


def stop(process: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    process.send_signal(sig)
    try:
        _out, err = process.communicate(timeout=10 * UNIT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("tidings demo did not stop") from None
    return process.returncode, err


def test_demo_serves_pages_and_the_feed_then_stops_on_sigint() -> None:
    process, url = start_demo("--rate", "20")
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        with httpx.Client(base_url=url, timeout=10 * UNIT) as client:
            page = client.get("/")
            assert page.status_code == 200
            assert "/demo.js" in page.text
            assert client.get("/lab").status_code == 200
            assert client.get("/tidings.js").status_code == 200
            ticks = client.get("/channels/stocks", params={"wait": str(5 * UNIT)}).json()
            assert ticks["messages"], "no tick within the long poll"
            assert {"tick", "quotes"} <= set(ticks["messages"][0]["data"])
    finally:
        code, err = stop(process, signal.SIGINT)
    assert code == 0, err
    assert "shutting down" in err


def test_demo_with_some_transports_and_a_bad_rate() -> None:
    process, url = start_demo("--transports", "sse,poll")
    try:
        with httpx.Client(base_url=url, timeout=10 * UNIT) as client:
            assert client.get("/lab").status_code == 200
    finally:
        code, err = stop(process, signal.SIGTERM)
    assert code == 0, err
    bad = subprocess.run([sys.executable, "-m", "tidings", "demo", "--port", "0", "--rate", "0"],
                         capture_output=True, text=True, timeout=10 * UNIT)
    assert bad.returncode == 2
    assert "--rate" in bad.stderr
