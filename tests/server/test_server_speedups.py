"""The very request again, answered in C (server/speedups.c), as the Python path answers it.

``answer_again`` takes only the plainest repeat: an anonymous poller sending the same bytes
as the last request its decision's kept answer answered, with nothing new. Everything else
it leaves to the Python path (server/repeat.py), which answers it as before. These tests
count what C answered (``CAnswers``) and compare every answer with the Python path's;
tests/server/test_server_repeat_differential.py runs its programs with C and without.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest
from test_server_repeat import WITHIN, ask, raw

from tidings import Server
from tidings.server import connection, presence, repeat
from tidings.server.connection import HttpConnection
from tidings.server.metrics import BYTES_HTTP
from tidings.testing import (
    RawResponse,
    http_client,
    poll,
    publish,
    read_response,
    request_head,
)


class CAnswers:
    """Wraps ``connection.answer_again``: how many requests C answered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        answer_again = connection.answer_again
        assert answer_again is not None, "the C extension is not built (see setup.py)"

        def counting(conn: HttpConnection, data: bytes) -> bool:
            answered = answer_again(conn, data)
            self.count += answered
            return answered

        monkeypatch.setattr(connection, "answer_again", counting)


async def tagged_poll(server: Server, channel: str = "c", query: str = "") -> bytes:
    """The request tidings' clients repeat: ``since`` the end, with its ``ETag``."""
    async with http_client(server) as client:
        cursor = (await poll(client, f"/channels/{channel}"))["next"]
    return request_head(server, "GET", f"/channels/{channel}?since={cursor}{query}",
                        f'If-None-Match: "{cursor}"')


def size_of(answer: RawResponse) -> int:
    """The bytes of an answer with no body (header names lower-cased: the same length)."""
    return (len(f"HTTP/1.1 {answer.status} Not Modified\r\n\r\n")
            + sum(len(f"{name}: {value}\r\n") for name, value in answer.headers.items()))


def comparable(answer: RawResponse) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in answer.headers.items() if k not in ("date", "tidings-client")}
    return answer.status, headers, json.loads(answer.body) if answer.body else None


def test_the_extension_is_built_and_answers_first() -> None:
    """CI builds it (``pip install -e .`` with a C compiler): its tests must not pass
    vacuously on the Python path."""
    speedups = importlib.import_module("tidings.server.speedups")
    if os.environ.get("TIDINGS_NO_SPEEDUPS"):
        assert connection.answer_again is None
    else:
        assert connection.speedups is speedups
        assert connection.answer_again is speedups.answer_again


async def test_the_very_request_again_is_answered_in_c_as_in_python(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    request = await tagged_poll(server)
    counted = CAnswers(monkeypatch)
    async with raw(server) as on:
        python = [await ask(on, request) for _ in range(2)]  # the second keeps the answer
        assert counted.count == 0
        before = server.stats[BYTES_HTTP]
        in_c = [await ask(on, request) for _ in range(5)]
    assert counted.count == 5
    cursor = request.split(b'"')[1].decode()
    etag = f'"{cursor}"'
    assert all(comparable(answer) == (304, {"etag": etag}, None) for answer in python + in_c)
    clients = [answer.headers["tidings-client"] for answer in python + in_c]
    assert len(set(clients)) == len(clients)  # a fresh client id each time
    assert all(len(client) == len(clients[0]) for client in clients)
    assert server.stats[BYTES_HTTP] - before == sum(map(size_of, in_c))


async def test_every_poller_of_one_request_is_answered_in_c(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pollers on their own connections share the decision's kept answer."""
    request = await tagged_poll(server)
    counted = CAnswers(monkeypatch)
    async with raw(server) as one, raw(server) as two, raw(server) as three:
        for _ in range(3):
            for on in (one, two, three):
                assert (await ask(on, request)).status == 304
    assert counted.count >= 4


async def test_a_message_is_read_by_the_python_path(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    request = await tagged_poll(server)
    counted = CAnswers(monkeypatch)
    async with raw(server) as on, http_client(server) as client:
        for _ in range(3):
            assert (await ask(on, request)).status == 304
        answered = counted.count
        await publish(client, "c", "news")
        found = await ask(on, request)
        assert counted.count == answered
        assert found.status == 200
        assert [m["data"] for m in json.loads(found.body)["messages"]] == ["news"]
        assert (await ask(on, request)).status == 200  # still new to that cursor


async def left_to_python(server: Server, request: bytes, monkeypatch: pytest.MonkeyPatch,
                         change: Any) -> list[RawResponse]:
    """Four answers to ``request`` after ``change()``: C must answer none of them."""
    async with raw(server) as on:
        for _ in range(2):
            assert (await ask(on, request)).status == 304
        change()
        counted = CAnswers(monkeypatch)
        answers = [await ask(on, request) for _ in range(4)]
        assert counted.count == 0
        return answers


async def test_a_named_poller_is_left_to_python(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """``?client=``: its presence is touched at each poll, in Python."""
    request = await tagged_poll(server, query="&client=alice")
    answers = await left_to_python(server, request, monkeypatch, lambda: None)
    assert {(a.status, a.headers["tidings-client"]) for a in answers} == {(304, "alice")}


async def test_an_empty_pool_of_client_ids_is_left_to_python(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """C pops drawn ids but never draws: the Python path draws more, then C goes on."""
    request = await tagged_poll(server)
    pool = presence.ascii_client_ids()
    async with raw(server) as on:
        for _ in range(2):
            assert (await ask(on, request)).status == 304
        pool.clear()
        counted = CAnswers(monkeypatch)
        assert (await ask(on, request)).status == 304
        assert counted.count == 0 and pool  # drawn again
        assert (await ask(on, request)).status == 304
        assert counted.count == 1


async def test_a_draining_node_is_left_to_python(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    request = await tagged_poll(server)
    async with raw(server) as on:
        for _ in range(2):
            assert (await ask(on, request)).status == 304
        monkeypatch.setattr(server, "draining", True)
        counted = CAnswers(monkeypatch)
        on[1].write(request)
        answer = await read_response(on[0], WITHIN)
        assert counted.count == 0
        assert answer.status == 304
        assert await on[0].read() == b""  # a draining node keeps no connection


async def test_a_failure_in_c_stays_with_its_client(
        server: Server, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The broker raising under C: that client gets ``500`` and is closed, the server
    logs it, and another poller and a publisher go on."""
    request = await tagged_poll(server)
    async with raw(server) as failing, raw(server) as other, http_client(server) as client:
        for _ in range(2):
            assert (await ask(failing, request)).status == 304
        same_read = server.broker.same_read
        broken: list[bool] = []

        def once_broken(*args: Any) -> bool:
            if not broken:
                broken.append(True)
                raise RuntimeError("a bug")
            return same_read(*args)

        monkeypatch.setattr(server.broker, "same_read", once_broken)
        with caplog.at_level(logging.ERROR, "tidings.server"):
            refused = await ask(failing, request)
        assert refused.status == 500
        assert await failing[0].read() == b""
        assert "answering a repeated request failed" in caplog.text
        assert (await ask(other, request)).status == 304
        await publish(client, "c", "after")
        found = await ask(other, request)
        assert [m["data"] for m in json.loads(found.body)["messages"]] == ["after"]


def test_tidings_no_speedups_turns_c_off() -> None:
    """``TIDINGS_NO_SPEEDUPS=1``: every request in Python (to compare, or to rule C out);
    and it is not taken for a setting."""
    code = ("from tidings.server import connection, repeat\n"
            "from tidings import configuration\n"
            "import os\n"
            "assert connection.answer_again is None\n"
            "configuration.load(environ=dict(os.environ))\n")
    env = {**os.environ, "TIDINGS_NO_SPEEDUPS": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_answer_again_says_no_to_anything_but_a_connection_and_bytes() -> None:
    answer_again = importlib.import_module("tidings.server.speedups").answer_again
    assert answer_again(object(), b"GET / HTTP/1.1\r\n\r\n") is False
    with pytest.raises(TypeError):
        answer_again(object())


def test_configure_refuses_a_class_whose_fields_are_not_slots() -> None:
    """A renamed or unslotted field fails at import, and changes nothing before."""
    speedups = importlib.import_module("tidings.server.speedups")

    class Unslotted:
        pass

    layout = {"connection": HttpConnection, "repeat": repeat.Repeat,
              "unchanged": repeat.Unchanged, "read": repeat.PollRead,
              "client_ids": presence.ascii_client_ids(), "bytes_key": BYTES_HTTP}
    for name in ("connection", "repeat", "unchanged"):
        with pytest.raises(TypeError, match="Unslotted"):
            speedups.configure(**{**layout, name: Unslotted})
    with pytest.raises((TypeError, AttributeError)):
        speedups.configure(**{**layout, "read": Unslotted})
    speedups.configure(**layout)  # (what repeat.py did at import: unchanged by the above)
