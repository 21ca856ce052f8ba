"""Fuzzing cursors and channel names through the HTTP API: 200/201 or a 400 JSON error."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from hostilekit import BOUND, ServerThread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

NAMES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abcxyz:_-.0123456789", min_size=1, max_size=260),
    st.sampled_from(["c", "a:b", ":", "a:", ":b", ".", "..", "x" * 255, "x" * 256, "é", "a b"]),
)
CURSOR_PIECES = st.sampled_from(["0", "1", "-", "=", ",", "a", "c", "99999999999999999999",
                                 "00", "-1", " ", "%", "\x00", "ü", "0-0", "1-1"])
CURSORS = st.one_of(
    st.lists(CURSOR_PIECES, max_size=8).map("".join),
    st.text(max_size=30),
    st.builds(lambda epoch, seq: f"{epoch}-{seq}", st.integers(-5, 2**70), st.integers(-5, 2**70)),
)


@pytest.fixture(scope="module")
def served() -> Iterator[ServerThread]:
    with ServerThread() as server:
        yield server


@pytest.fixture(scope="module")
def client(served: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=BOUND) as client:
        client.post("/channels/c", json="first")  # a log with something in it
        yield client


def check(response: httpx.Response, *ok: int) -> None:
    assert response.status_code in (*ok, 400), (response.status_code, response.text)
    if response.status_code == 400:
        body = response.json()
        assert isinstance(body["error"], str) and isinstance(body["message"], str)


@FUZZ
@given(name=NAMES)
def test_channel_names(served: ServerThread, client: httpx.Client, name: str) -> None:
    segment = quote(name, safe="")
    if segment in (".", ".."):  # else the client itself resolves the dot segment away
        segment = segment.replace(".", "%2E")
    path = "/channels/" + segment
    check(client.get(path), 200)
    check(client.post(path, json=1), 201)
    check(client.get("/subscribe", params={"channel": name}), 200)
    assert not served.errors


@FUZZ
@given(cursor=CURSORS, wait=st.sampled_from([None, "0"]))
def test_cursors(served: ServerThread, client: httpx.Client, cursor: str, wait: str | None) -> None:
    params = {"since": cursor} if wait is None else {"since": cursor, "wait": wait}
    check(client.get("/channels/c", params=params), 200)
    check(client.get("/subscribe", params={"channel": ["c", "d"], "since": cursor}), 200)
    # A header value cannot hold control characters (the client refuses to send them).
    header = "".join(c for c in cursor if c >= " " and c != "\x7f").strip()
    check(client.get("/channels/c", headers=[(b"Last-Event-ID", header.encode())]), 200)
    assert not served.errors


@FUZZ
@given(cursor=CURSORS)
def test_cursors_on_an_event_stream(served: ServerThread, client: httpx.Client,
                                    cursor: str) -> None:
    headers = {"Accept": "text/event-stream"}
    with client.stream("GET", "/channels/c", params={"since": cursor}, headers=headers) as sse:
        if sse.status_code != 200:
            sse.read()
        check(sse, 200)
    assert not served.errors
