"""What the async client and the synchronous publisher share: channel names, bodies, ids.

Server URLs and refusals are in :mod:`tidings.server_api`, which the bridges use too.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tidings.core.idempotency import check_idempotency_key
from tidings.core.names import check_channel
from tidings.errors import BadRequest, TidingsError, UsageError
from tidings.server_api import refused


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


def published_id(response: httpx.Response) -> str:
    """The message id from a publish answer; :class:`RequestRefused` if refused.

    A ``200`` is a replay: a publish with the same idempotency key stored the
    message already, under this id.
    """
    if response.status_code in (200, 201):
        try:
            value = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            value = None
        if isinstance(value, str):
            return value
    raise refused(response)


def publish_headers(idempotency_key: str | None) -> dict[str, str]:
    """The headers of a publish ``POST``; checks the key (:class:`UsageError` if invalid)."""
    if idempotency_key is None:
        return _JSON_HEADERS
    try:
        key = check_idempotency_key(idempotency_key)
    except BadRequest as exc:
        raise UsageError(str(exc)) from None
    return {**_JSON_HEADERS, "Idempotency-Key": key}


_JSON_HEADERS = {"Content-Type": "application/json"}
