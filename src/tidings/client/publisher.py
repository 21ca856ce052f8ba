"""A synchronous publisher, for code that is not async (a Django view, a cron job)."""

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
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(timeout=timeout, headers=headers)
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
        checked_channel(channel)
        body = encode_data(data)
        headers = publish_headers(idempotency_key)
        try:
            response = self._http.post(f"{self.url}/channels/{channel}", content=body,
                                       headers=headers)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot publish to {self.url}: "
                                   f"{exc or type(exc).__name__}") from None
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
