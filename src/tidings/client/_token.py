"""The client's token: a string, or a function that fetches a fresh one.

The token is sent as ``Authorization: Bearer`` on every HTTP request (an
``httpx`` auth flow) and on the WebSocket handshake. It is fetched once and
kept; when the server says it expired (``401 token_expired``, an SSE ``close``
event or WebSocket close ``4001``) the subscription calls :meth:`invalidate`
and reconnects, which fetches a new one and resumes from the cursor.

A WebSocket does better when the token is a JWT: it reads the token's ``exp``
(:func:`token_expiry`, without verifying: the server does) and, at the time
:func:`refresh_delay` gives, replaces it on the open connection with an
``auth`` command (:mod:`tidings.client.websocket`), so that expiry costs no
reconnection. An opaque token, one without ``exp``, or a refresh that fails
leaves the fallback above.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import math
from collections.abc import AsyncGenerator, Awaitable, Callable

import httpx

from tidings.errors import UsageError

TokenGetter = Callable[[], str | Awaitable[str]]

#: A token is refreshed this share of its remaining lifetime before it expires...
REFRESH_SHARE = 0.15
#: ...but at least this many seconds before (clock skew, the server's once-a-second
#: sweep, the token function's and the ``auth`` command's round trips)...
REFRESH_MIN_LEAD = 5.0
#: ...and never before half its remaining lifetime has passed. A token with less than
#: this many seconds left is not refreshed ahead: the server's cut and a resume follow.
REFRESH_MIN_REMAINING = 1.0


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT in Unix seconds, unverified; ``None`` if ``token`` has none.

    A token that is not three base64url parts with a JSON object holding a
    numeric ``exp`` in the middle is opaque: nothing is known of its expiry.
    """
    parts = token.split(".")
    if len(parts) != 3 or not parts[1]:
        return None
    segment = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        payload = json.loads(base64.b64decode(segment, altchars=b"-_", validate=True))
    except (ValueError, binascii.Error, RecursionError):  # not base64url, not JSON, not UTF-8
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


def refresh_delay(remaining: float) -> float | None:
    """Seconds to wait before refreshing a token that expires in ``remaining`` seconds.

    The refresh comes ``max(REFRESH_SHARE * remaining, REFRESH_MIN_LEAD)``
    before expiry, but not before half of ``remaining`` has passed: a one-hour
    token is refreshed 9 minutes early, a one-minute token 9 s early, a
    3-second one 1.5 s early. ``None`` (do not refresh ahead) when less than
    ``REFRESH_MIN_REMAINING`` is left. Computing it again from the same
    expiry halves the wait each time, so a function that keeps returning the
    same token is asked a bounded number of times.
    """
    if not remaining >= REFRESH_MIN_REMAINING:
        return None
    lead = min(max(remaining * REFRESH_SHARE, REFRESH_MIN_LEAD), remaining / 2)
    return remaining - lead


def bearer(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token`` (none for ``None``)."""
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


class TokenSource:
    """Holds the current token; fetches a new one after :meth:`invalidate`."""

    def __init__(self, token: str | TokenGetter | None) -> None:
        if token is not None and not isinstance(token, str) and not callable(token):
            raise UsageError("token must be a string or a function returning one, "
                             f"not {type(token).__name__}")
        self._getter = token if callable(token) else None
        self._value = token if isinstance(token, str) else None
        self._lock = asyncio.Lock()

    @property
    def refreshable(self) -> bool:
        """True if a new token can be fetched (the client was given a function)."""
        return self._getter is not None

    async def get(self) -> str | None:
        """The token to send (``None``: none configured); may call the function."""
        if self._value is not None or self._getter is None:
            return self._value
        async with self._lock:
            if self._value is None:
                self._value = await self._call()
            return self._value

    async def fresh(self, stale: str) -> str:
        """A token to replace ``stale`` before it expires; only with a function.

        The token held, if another connection already replaced ``stale``;
        else a new one from the function. What the function raises goes to
        the caller, and the token held stays as it was.
        """
        async with self._lock:
            if self._value is None or self._value == stale:
                self._value = await self._call()
            return self._value

    async def _call(self) -> str:
        if self._getter is None:
            raise UsageError("no token function to call")
        value = self._getter()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str) or not value:
            raise UsageError(f"the token function returned {value!r}, not a string")
        return value

    def invalidate(self) -> None:
        """The server refused the token as expired: fetch a new one next time."""
        if self._getter is not None:
            self._value = None

    async def headers(self) -> dict[str, str]:
        return bearer(await self.get())


class BearerAuth(httpx.Auth):
    """Adds the current token to each ``httpx`` request."""

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers.update(await self.tokens.headers())
        yield request
