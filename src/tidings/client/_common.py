"""What the async client and the synchronous publisher share: channel names, bodies, ids.

Server URLs and refusals are in :mod:`tidings.server_api`, which the bridges use too.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tidings.core.names import check_channel
from tidings.errors import TidingsError, UsageError
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
    """The new message id from a publish answer; :class:`RequestRefused` if refused."""
    if response.status_code == 201:
        try:
            value = response.json()["id"]
        except (ValueError, KeyError, TypeError):
            value = None
        if isinstance(value, str):
            return value
    raise refused(response)
