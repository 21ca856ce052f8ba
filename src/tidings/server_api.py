"""A tidings server's HTTP API as its callers see it: where it is, and what a refusal means.

Shared by everything that calls a server: the Python client and publisher
(:mod:`tidings.client`), the bridges' :class:`~tidings.bridges.HttpSink`.

* :func:`base_urls` checks a server URL and gives its HTTP and WebSocket bases;
* :func:`refused` turns any answer that is not a success into the
  :class:`~tidings.errors.RequestRefused` to raise;
* :func:`refusal_of_status` does so only for a 4xx the server explained in
  JSON (``{"error": code, "message": text}``), the answers retrying cannot help.
"""

from __future__ import annotations

import json

import httpx

from tidings.errors import RequestRefused, UsageError

__all__ = ["base_urls", "refusal_of_status", "refused"]


def base_urls(url: str) -> tuple[str, str]:
    """The HTTP and WebSocket base URLs of a server URL, without a trailing slash.

    Accepts ``http``, ``https``, ``ws`` and ``wss`` URLs (a path is a prefix,
    e.g. behind a proxy); anything else raises :class:`UsageError`.
    """
    if not isinstance(url, str):
        raise UsageError(f"the server URL must be a string, not {type(url).__name__}")
    if not url or any(c.isspace() for c in url):
        raise UsageError(f"invalid server URL {url!r}: empty, or has spaces")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UsageError(f"invalid server URL {url!r}: {exc}") from None
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parsed.scheme not in schemes or not parsed.host:
        raise UsageError(
            f"invalid server URL {url!r}: expected http://HOST[:PORT] (or https, ws, wss)"
        )
    if parsed.query or parsed.fragment:
        raise UsageError(f"invalid server URL {url!r}: no query or fragment, please")
    http_scheme = {"ws": "http", "wss": "https"}.get(parsed.scheme, parsed.scheme)
    path = parsed.raw_path.decode("ascii").rstrip("/")
    netloc = parsed.netloc.decode("ascii")
    return f"{http_scheme}://{netloc}{path}", f"{schemes[parsed.scheme]}://{netloc}{path}"


#: 4xx answers that depend on the request, not on the technique: retrying cannot help.
_RETRYABLE_4XX = frozenset({408, 425, 429})


def refusal_of_status(status: int, body: bytes | bytearray) -> RequestRefused | None:
    """The :class:`RequestRefused` for a 4xx the server explained in JSON, else ``None``."""
    if not 400 <= status < 500 or status in _RETRYABLE_4XX:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("error"), str):
        return None
    return RequestRefused(status, value["error"], str(value.get("message", "")))


def refused(response: httpx.Response) -> RequestRefused:
    """A :class:`RequestRefused` for an answer, with the server's JSON error text if any."""
    try:
        value = response.json()
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return RequestRefused(response.status_code, value["error"], str(value.get("message", "")))
    return RequestRefused(response.status_code, "http_error",
                          response.text[:200] or response.reason_phrase)
