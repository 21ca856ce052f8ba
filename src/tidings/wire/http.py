"""HTTP/1.1 responses as bytes."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from tidings.errors import BrokerError, MethodNotAllowed, ProtocolError, TooManyRequests
from tidings.wire import jsonvalue

Headers = Sequence[tuple[str, str]]

_STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus
}


@functools.lru_cache(maxsize=1024)
def _header_line(name: str, value: str) -> bytes:
    # Most header lines repeat (content types, CORS, common lengths): encode each once.
    return b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1"))


def head(status: int, headers: Headers, *, keep_alive: bool = True) -> bytes:
    """Status line and headers, ending with the blank line."""
    lines = [_STATUS_LINES[status]]
    lines.extend(_header_line(name, value) for name, value in headers)
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def response(status: int, headers: Headers, body: bytes = b"", *, keep_alive: bool = True,
             lead: bytes = b"") -> bytes:
    """A whole response with a ``Content-Length`` body.

    Heads repeat (every long-poll waiter of a channel gets the same one), so
    each distinct set of header lines is built once and cached. ``lead`` is
    header lines (each ending in CRLF) that differ from one answer to the
    next, such as a client id: they go right after the status line, outside
    the cache, so that they do not make every head new.

    What follows ``lead`` (the cached header lines and the body) is kept for
    the last answer built: the waiters woken by one message are answered one
    after the other with the same body and head, so each of them after the
    first costs the join of three pieces, not a cache lookup and the body copied
    again.
    """
    global _last
    last_status, last_headers, last_keep_alive, last_body, tail = _last
    if not (body is last_body and status == last_status and keep_alive is last_keep_alive
            and headers == last_headers):
        fields = tuple(headers)  # (a list given is copied: the caller may change it later)
        tail = _cached_fields(status, fields, keep_alive, len(body)) + body
        # One tuple, replaced whole: a server on another thread never sees half of it.
        _last = (status, fields, keep_alive, body, tail)
    return b"".join((_STATUS_LINES[status], lead, tail))


def response_parts(status: int, headers: Headers, body: bytes = b"", *,
                   keep_alive: bool = True) -> tuple[bytes, bytes]:
    """:func:`response` in two parts, before and after where its ``lead`` goes: answers
    that differ only there (a client id each) are each the join of the two around it."""
    whole = response(status, headers, body, keep_alive=keep_alive)
    cut = len(_STATUS_LINES[status])
    return whole[:cut], whole[cut:]


#: The inputs of the last :func:`response` (status, header fields, keep-alive, body) and
#: what follows its ``lead``. The body is compared by identity (and held, so that its id is
#: not reused): a long poll's body is one object shared by every waiter of the message
#: (``wire.poll.tail_body``); the empty body of a ``304`` is one object too.
_last: tuple[int, tuple[tuple[str, str], ...], bool, bytes | None, bytes] = (
    0, (), True, None, b"")


@functools.lru_cache(maxsize=1024)
def _cached_fields(status: int, headers: tuple[tuple[str, str], ...], keep_alive: bool,
                   length: int) -> bytes:
    """The header lines of a response and the blank line, without the status line."""
    if status >= 200 and status not in (204, 304):
        headers = (*headers, ("Content-Length", str(length)))
    return head(status, headers, keep_alive=keep_alive)[len(_STATUS_LINES[status]):]


JSON = ("Content-Type", "application/json")


def json_response(status: int, value: Any, headers: Headers = (), *,
                  keep_alive: bool = True) -> bytes:
    return response(status, [JSON, *headers], jsonvalue.encode(value), keep_alive=keep_alive)


def error_response(error: ProtocolError | BrokerError, headers: Headers = (), *,
                   keep_alive: bool = True) -> bytes:
    """The JSON error answer for ``error`` (``{"error": code, "message": text}``)."""
    extra = list(headers)
    if isinstance(error, MethodNotAllowed):
        extra.append(("Allow", ", ".join(error.allow)))
    elif isinstance(error, TooManyRequests) and error.retry_after is not None:
        extra.append(("Retry-After", str(max(1, math.ceil(error.retry_after)))))
    return json_response(error.status, error.to_json(), extra, keep_alive=keep_alive)


def local_url(host: str, port: int) -> str:
    """The ``http://HOST:PORT`` that reaches a listener on ``host``: an IPv6 address in
    brackets, a wildcard address (``0.0.0.0``, ``""``) as ``127.0.0.1``."""
    if ":" in host:
        host = f"[{host}]"
    elif host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"
