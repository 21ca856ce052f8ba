"""Publishers over HTTP: :class:`Publisher` for code that is not async (a Django view, a
cron job), :class:`AsyncPublisher` for asyncio applications that talk to a separate tidings.

Both send the same request and read the same answer (the helpers below); only the
HTTP client differs (``httpx.Client`` or ``httpx.AsyncClient``).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from tidings.client._common import checked_channel, encode_data, publish_headers, published_id
from tidings.errors import ClientClosed, ConnectionFailed
from tidings.server_api import base_urls


class Publisher:
    """Publish with plain HTTP ``POST`` requests over one kept-alive connection::

        with tidings.Publisher("http://127.0.0.1:8000") as publisher:
            message_id = publisher.publish("prices", {"AAPL": 187.2})

    Raises :class:`tidings.UsageError` for a bad URL (at once) or a value that
    is not JSON, :class:`tidings.ConnectionFailed` if the server cannot be
    reached, :class:`tidings.RequestRefused` with the server's explanation if it
    refuses, and :class:`tidings.ClientClosed` after :meth:`close`. Nothing is
    retried: a publish that broke may have been accepted. To retry safely,
    give each message an ``idempotency_key`` and send the same key again: the
    server stores the message once (within its ``idempotency_window``) and
    answers the first id. Threads may share one publisher (``httpx.Client``
    is thread-safe).

    ``token`` is the server's API key or a token granting the channels
    (docs/security.md), sent as ``Authorization: Bearer``.
    """

    def __init__(self, url: str, *, timeout: float = 10.0,
                 headers: dict[str, str] | None = None, token: str | None = None) -> None:
        self.url, _ = base_urls(url)
        self._http = httpx.Client(timeout=timeout, headers=_with_token(headers, token))
        self.closed = False

    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None) -> str:
        """Publish ``data`` (any JSON value) on ``channel``; return the message id.

        With an ``idempotency_key``, a publish the server has seen already
        returns the first one's id and stores nothing; retry a
        :class:`tidings.ConnectionFailed` or a ``503`` with the same key. The
        same key with other data raises :class:`tidings.RequestRefused` (``422``).
        """
        if self.closed:
            raise ClientClosed("the publisher is closed; create a new one")
        url, body, headers = _publish_request(self.url, channel, data, idempotency_key)
        try:
            response = self._http.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        return published_id(response)

    def close(self) -> None:
        """Close the connection. Idempotent."""
        if not self.closed:
            self.closed = True
            self._http.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncPublisher:
    """:class:`Publisher` for asyncio: the same methods, awaited, over ``httpx.AsyncClient``::

        async with tidings.AsyncPublisher("http://127.0.0.1:8000") as publisher:
            message_id = await publisher.publish("prices", {"AAPL": 187.2})

    It raises what :class:`Publisher` raises, in the same cases; nothing is
    retried, and an ``idempotency_key`` makes a retry safe. Tasks of one
    event loop may share it: concurrent publishes use a pool of kept-alive
    connections. :meth:`aclose` (or leaving the ``async with`` block) ends them.
    For a server in the same process, ``await server.publish(...)`` needs no
    HTTP at all (docs/embedding.md).
    """

    def __init__(self, url: str, *, timeout: float = 10.0,
                 headers: dict[str, str] | None = None, token: str | None = None) -> None:
        self.url, _ = base_urls(url)
        self._http = httpx.AsyncClient(timeout=timeout, headers=_with_token(headers, token))
        self.closed = False

    async def publish(self, channel: str, data: Any, *,
                      idempotency_key: str | None = None) -> str:
        """Publish ``data`` (any JSON value) on ``channel``; return the message id.

        As :meth:`Publisher.publish`: retry a :class:`tidings.ConnectionFailed`
        or a ``503`` with the same ``idempotency_key`` and the message is stored once.
        """
        if self.closed:
            raise ClientClosed("the publisher is closed; create a new one")
        url, body, headers = _publish_request(self.url, channel, data, idempotency_key)
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from None
        return published_id(response)

    async def aclose(self) -> None:
        """Close the connections. Idempotent."""
        if not self.closed:
            self.closed = True
            await self._http.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _publish_request(base: str, channel: str, data: Any,
                     idempotency_key: str | None) -> tuple[str, bytes, dict[str, str]]:
    """The URL, body and headers of a publish; :class:`UsageError` for what the server
    would refuse anyway (a channel name, a value that is not JSON, a key)."""
    checked_channel(channel)
    return f"{base}/channels/{channel}", encode_data(data), publish_headers(idempotency_key)


def _unreachable(url: str, exc: httpx.TransportError) -> ConnectionFailed:
    return ConnectionFailed(f"cannot publish to {url}: {exc or type(exc).__name__}")


def _with_token(headers: dict[str, str] | None, token: str | None) -> dict[str, str]:
    """``headers`` (copied), with ``Authorization: Bearer`` for ``token`` if there is one."""
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers
