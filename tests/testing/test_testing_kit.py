"""The test kit's own rules, without a server: parsing, frames, addresses, failures.

Everything else in tidings.testing is exercised against real servers by the
rest of the suite and by the conformance checks built on it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tidings.testing import (
    CheckFailed,
    SseStream,
    check_poll_answer,
    client_frame,
    fail_after,
    request_head,
    require_error,
    ws_url,
)


async def chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def stream_of(*parts: bytes, within: float | None = 1.0) -> SseStream:
    return SseStream(chunks(parts), within=within)


async def test_sse_lines_end_at_cr_lf_or_crlf_even_split_across_chunks() -> None:
    stream = stream_of(b"retry: 1000\r", b"\nid: e-0\r\r", b": beat\n\nevent: gap\rdata: {\"a\"",
                       b":\n", b"data: 1}\nid: e-3\n\n", "data: x\u2028y\n\n".encode())
    opening = await stream.opening()
    assert (opening.retry, opening.id) == (1000, "e-0")
    heartbeat = await stream.next_block()
    assert heartbeat.comments == [" beat"] and heartbeat.data is None
    gap = await stream.next_event()
    assert (gap.event, gap.data, gap.id, gap.is_message) == ("gap", '{"a":\n1}', "e-3", False)
    assert gap.json() == {"a": 1}
    assert stream.last_id == "e-3"
    (message,) = await stream.messages(1)
    assert message.data == "x\u2028y"  # U+2028 ends no line
    with pytest.raises(EOFError):
        await stream.next_block()


async def test_next_event_skips_heartbeats_and_message_objects_check_ids() -> None:
    stream = stream_of(b": hb\n\n", b'id: c-1\ndata: {"id": "c-1", "data": 5}\n\n',
                       b'id: c-9\ndata: {"id": "c-2", "data": 6}\n\n')
    (first,) = await stream.message_objects(1)
    assert first == {"id": "c-1", "data": 5}
    with pytest.raises(CheckFailed, match="is not the message's id"):
        await stream.message_objects(1)


async def test_a_bad_opening_or_a_silent_stream_fails_with_what_was_awaited() -> None:
    with pytest.raises(CheckFailed, match="must open with a retry"):
        await stream_of(b"data: 1\n\n").opening()

    async def silent() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    with pytest.raises(CheckFailed, match=r"nothing within 0\.01 s while waiting for an SSE event"):
        await SseStream(silent(), within=0.01).next_event()
    quiet = SseStream(silent())  # no bound of its own: the caller's
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await quiet.next_block()


async def test_fail_after_names_the_wait_and_none_is_no_bound() -> None:
    with pytest.raises(CheckFailed, match=r"^nothing within 0\.01 s while waiting for Godot$"):
        async with fail_after(0.01, "waiting for Godot"):
            await asyncio.sleep(1)
    async with fail_after(None, "anything"):
        await asyncio.sleep(0)


def unmask(frame: bytes) -> tuple[int, int, bytes]:
    """``(first byte, length, payload)`` of a masked client frame."""
    assert frame[1] & 0x80, "client frames are masked"
    length, offset = frame[1] & 0x7F, 2
    if length == 126:
        (length,), offset = struct.unpack("!H", frame[2:4]), 4
    elif length == 127:
        (length,), offset = struct.unpack("!Q", frame[2:10]), 10
    mask, payload = frame[offset:offset + 4], frame[offset + 4:]
    return frame[0], length, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_client_frames_of_any_length_are_masked(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert unmask(client_frame(0x2, payload)) == (0x82, size, payload)
    assert unmask(client_frame(0x1, b"x", fin=False))[0] == 0x01


@pytest.mark.parametrize(("server", "host"), [
    ("http://127.0.0.1:8000", "127.0.0.1:8000"),
    ("http://[::1]:8000/", "[::1]:8000"),
    ("https://example.com", "example.com:443"),
    (SimpleNamespace(url="http://localhost"), "localhost:80"),
])
def test_request_heads_name_the_host(server: Any, host: str) -> None:
    head = request_head(server, "GET", "/healthz", "Accept: */*")
    assert head == f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()


def test_ws_urls_follow_the_scheme() -> None:
    assert ws_url("http://127.0.0.1:8000/", "/subscribe?channel=a") == (
        "ws://127.0.0.1:8000/subscribe?channel=a")
    assert ws_url(SimpleNamespace(url="https://example.com"), "/x") == "wss://example.com/x"


def test_poll_answers_and_errors_are_checked() -> None:
    assert check_poll_answer({"messages": [], "next": "e-1"}) == {"messages": [], "next": "e-1"}
    with pytest.raises(CheckFailed, match="come together"):
        check_poll_answer({"messages": [], "next": "e-1", "gap": True})
    refusal = httpx.Response(400, json={"error": "invalid_cursor", "message": "bad since"})
    assert require_error(refusal, 400, "invalid_cursor", "a poll")["message"] == "bad since"
    with pytest.raises(CheckFailed, match=r"^a poll: expected 404 not_found, got 400"):
        require_error(refusal, 404, "not_found", "a poll")
