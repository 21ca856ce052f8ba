"""Fuzzing HTTP request parsing over real sockets.

Random bytes and mutated valid requests are sent on fresh connections; the
client then half-closes. Whatever the input, the server answers with HTTP
responses (errors as JSON) or just closes, within a bound, never with a
500, and a good request afterwards is answered. Nothing is logged as an
unhandled error in the server's loop.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hostilekit import ServerThread, assert_json_error, parse_responses, read_all
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def served() -> Iterator[ServerThread]:
    # Small limits so that the fuzzer reaches them; a short header timeout bounds
    # anything that is left half-sent.
    with ServerThread(max_message_size=2048, max_url_length=512, max_header_size=2048,
                      max_headers=20, header_timeout=2.0, keep_alive_timeout=2.0) as server:
        yield server


def exchange(server: ServerThread, data: bytes) -> bytes:
    with server.connect() as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early and closed: what it sent is still readable
        return read_all(sock)


def check_answers(data: bytes, sent: bytes) -> None:
    head = b"HEAD" in sent
    for response in parse_responses(data, first_only=head):
        assert response.status != 500 and response.status < 600, response
        if response.status >= 400:
            assert response.headers.get("content-type") == "application/json", response
            if not head:
                assert_json_error(response)


METHODS = st.sampled_from([b"GET", b"POST", b"OPTIONS", b"HEAD", b"PUT", b"DELETE", b"G\x00T"])
PATHS = st.sampled_from([b"/channels/c", b"/channels/a:b", b"/subscribe?channel=a&channel=b",
                         b"/healthz", b"/tidings.js", b"/channels/c?since=0",
                         b"/channels/c?wait=0", b"/", b"*", b"/channels/%zz"])
HEADER_NAMES = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Accept",
                                b"Last-Event-ID", b"Prefer", b"If-None-Match", b"Origin",
                                b"Connection", b"Expect", b"Authorization", b"X-Junk"])
HEADER_VALUES = st.one_of(
    st.sampled_from([b"0", b"5", b"chunked", b"text/event-stream", b"wait=0", b"close",
                     b"keep-alive", b"100-continue", b"Bearer x", b"-1", b"99999999999999"]),
    st.binary(max_size=40),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request that is mostly well-formed: sensible pieces, sometimes absurd ones."""
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    lines = [draw(METHODS) + b" " + draw(PATHS) + b" " + draw(
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"]))]
    lines += [name + b": " + value for name, value in headers]
    body = draw(st.sampled_from([b"", b"{}", b'{"a": 1}', b"5\r\nhello\r\n0\r\n\r\n", b"[" * 50]))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A request with bytes flipped, inserted, deleted, or cut off."""
    data = bytearray(draw(requests()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif kind == "delete":
            del data[at]
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at:at + 200] * draw(st.integers(2, 30))
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(served: ServerThread, data: bytes) -> None:
    check_answers(exchange(served, data), data)
    served.check_healthy()


@FUZZ
@given(data=requests())
def test_generated_requests(served: ServerThread, data: bytes) -> None:
    check_answers(exchange(served, data), data)
    served.check_healthy()


@FUZZ
@given(data=mutated())
def test_mutated_requests(served: ServerThread, data: bytes) -> None:
    check_answers(exchange(served, data), data)
    served.check_healthy()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(requests(), min_size=2, max_size=5))
def test_pipelined_requests(served: ServerThread, pieces: list[bytes]) -> None:
    """Several requests on one connection: answers in order, each a whole HTTP response."""
    data = b"".join(pieces)
    check_answers(exchange(served, data), data)
    served.check_healthy()


def test_a_half_sent_request_is_cut_at_the_header_timeout(served: ServerThread) -> None:
    """Without the half-close the server must end it by itself (within the bound)."""
    with served.connect() as sock:
        sock.sendall(b"GET /channels/c HTTP/1.1\r\nHost: x\r\nX-Half: ")
        data = read_all(sock)
    (response,) = parse_responses(data)
    assert response.status == 408
    assert_json_error(response)
