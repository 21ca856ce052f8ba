"""The client's token: a string, or a function that fetches a fresh one.

The token is sent as ``Authorization: Bearer`` on every HTTP request (an
``httpx`` auth flow) and on the WebSocket handshake. It is fetched once and
kept; when the server says it expired (``401 token_expired``, an SSE ``close``
event or WebSocket close ``4001``) the subscription calls :meth:`invalidate`
and reconnects, which fetches a new one and resumes from the cursor.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable

import httpx

from tidings.errors import UsageError

TokenGetter = Callable[[], str | Awaitable[str]]


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
                value = self._getter()
                if inspect.isawaitable(value):
                    value = await value
                if not isinstance(value, str) or not value:
                    raise UsageError(f"the token function returned {value!r}, not a string")
                self._value = value
            return self._value

    def invalidate(self) -> None:
        """The server refused the token as expired: fetch a new one next time."""
        if self._getter is not None:
            self._value = None

    async def headers(self) -> dict[str, str]:
        token = await self.get()
        return {"Authorization": f"Bearer {token}"} if token is not None else {}


class BearerAuth(httpx.Auth):
    """Adds the current token to each ``httpx`` request."""

    def __init__(self, tokens: TokenSource) -> None:
        self.tokens = tokens

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers.update(await self.tokens.headers())
        yield request
