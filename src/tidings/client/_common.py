"""What the async client and the synchronous publisher share: URLs, bodies, answers."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tidings.core.names import check_channel
from tidings.errors import RequestRefused, TidingsError, UsageError


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


def checked_channel(channel: str) -> str:
    """``channel`` if it is a valid name, else :class:`UsageError`."""
    try:
        return check_channel(channel)
    except TidingsError as exc:
        raise UsageError(str(exc)) from None
    except TypeError:
        raise UsageError(f"a channel name is a string, not {type(channel).__name__}") from None


def encode_data(data: Any) -> bytes:
    """The JSON body of a publish; :class:`UsageError` if ``data`` is not a JSON value."""
    try:
        return json.dumps(data, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"data is not a JSON value: {exc}") from None


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


def published_id(response: httpx.Response) -> str:
    """The new message id from a publish answer; :class:`RequestRefused` if refused."""
    if response.status_code == 201:
        try:
            value = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            value = None
        if isinstance(value, str):
            return value
    raise refused(response)


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
