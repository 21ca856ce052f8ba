"""Where a bridge publishes: the server's broker in-process, or a server over HTTP.

A sink does two things: publish one message under an idempotency key (so a
retry of a publish whose answer was lost stores nothing), and tell the
highest ``seq`` of an outbox that a channel still retains (how a bridge
restarted after longer than the key's window recognises what it already
published; see docs/bridge.md).
"""

from __future__ import annotations

import abc

import httpx

from tidings.bridges.changes import seq_from
from tidings.brokers.base import Broker, Replayed
from tidings.core.cursor import ORIGIN, Start, parse_position
from tidings.errors import (
    BrokerError,
    ConnectionFailed,
    IdempotencyConflict,
    PayloadTooLarge,
    RequestRefused,
    TidingsError,
)
from tidings.server_api import base_urls, refused
from tidings.settings import Settings

#: The server's default limit (a smaller one is learnt from ``413`` answers).
DEFAULT_MAX_MESSAGE_SIZE = Settings().max_message_size
#: Messages read per request when a sink scans a channel's retained history.
SCAN_LIMIT = 1000


class SinkUnavailable(ConnectionFailed):
    """The server could not be reached or failed; a publish may or may not have been accepted.

    As with :class:`ConnectionFailed`, whose contract it keeps, the outcome is
    unknown: look (:meth:`Sink.last_seq`) before publishing again. Not a
    :class:`BrokerError`, which promises that nothing was accepted.
    """


class Sink(abc.ABC):
    """Publishes for a bridge; ``max_message_size`` is ``None`` when unknown."""

    max_message_size: int | None = None

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> bool:
        """Publish ``data``; return once it is accepted: ``True`` if stored now,
        ``False`` if the key's first publish had stored it (a replay).

        Raises :class:`PayloadTooLarge` if it is too large,
        :class:`SinkUnavailable` if the outcome is unknown (retry with the same
        key; without one, check :meth:`last_seq` first), :class:`RequestRefused`
        for other refusals.
        """

    @abc.abstractmethod
    async def last_seq(self, channel: str, source: str) -> int:
        """The highest ``seq`` of outbox ``source`` retained in ``channel`` (0 if none)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the sink holds."""


class BrokerSink(Sink):
    """Publish straight into a server's broker (``tidings serve`` with ``[[bridges]]``)."""

    def __init__(self, broker: Broker, max_message_size: int) -> None:
        self.broker = broker
        self.max_message_size = max_message_size

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> bool:
        if self.max_message_size is not None and len(data) > self.max_message_size:
            raise PayloadTooLarge(f"{len(data)} bytes; the limit is {self.max_message_size}")
        try:
            message = await self.broker.publish(channel, data, idempotency_key=idempotency_key)
        except BrokerError as exc:
            raise SinkUnavailable(f"the broker failed: {exc}") from None
        except IdempotencyConflict as exc:
            raise RequestRefused(422, exc.code, str(exc)) from None
        return not isinstance(message, Replayed)

    async def last_seq(self, channel: str, source: str) -> int:
        best = 0
        start: Start = ORIGIN
        while True:
            read = self.broker.read(channel, start, SCAN_LIMIT)
            for message in read.messages:
                best = max(best, seq_from(message.data, source) or 0)
            if not read.more:
                return best
            start = read.next


class HttpSink(Sink):
    """Publish with ``POST /channels/{channel}`` to a running server (``tidings bridge run``)."""

    def __init__(self, url: str, *, timeout: float = 10.0, api_key: str | None = None,
                 max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.url, _ = base_urls(url)
        self.max_message_size = max_message_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> bool:
        headers = {"Content-Type": "application/json"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        try:
            response = await self._http.post(f"{self.url}/channels/{channel}", content=data,
                                             headers=headers)
        except httpx.HTTPError as exc:
            raise SinkUnavailable(f"cannot publish to {self.url}: "
                                  f"{exc or type(exc).__name__}") from None
        status = response.status_code
        if status in (200, 201):
            return status == 201
        if status == 413:
            raise PayloadTooLarge(f"{len(data)} bytes is over the server's limit")
        if status in (400, 422):  # this message can never be published
            raise refused(response)
        # Anything else may pass later: the server recovers, the operator fixes
        # the API key or the rules. Never drop a change for it.
        raise SinkUnavailable(f"{self.url} answered {status}: {response.text[:200]}")

    async def last_seq(self, channel: str, source: str) -> int:
        best = 0
        since = "0"
        while True:
            try:
                response = await self._http.get(f"{self.url}/channels/{channel}",
                                                params={"since": since, "limit": SCAN_LIMIT})
            except httpx.HTTPError as exc:
                raise SinkUnavailable(f"cannot read {channel} at {self.url}: "
                                      f"{exc or type(exc).__name__}") from None
            if response.status_code != 200:
                raise SinkUnavailable(f"reading {channel} back, {self.url} answered "
                                      f"{response.status_code}: {response.text[:200]}")
            try:
                answer = response.json()
                messages = answer["messages"]
                next_cursor = answer["next"]
                parse_position(next_cursor)
            except (ValueError, KeyError, TypeError, TidingsError):
                raise RequestRefused(200, "bad_answer",
                                     f"unexpected poll answer: {response.text[:200]}") from None
            for message in messages:
                data = message.get("data") if isinstance(message, dict) else None
                if isinstance(data, dict) and data.get("source") == source:
                    seq = data.get("seq")
                    if isinstance(seq, int) and not isinstance(seq, bool):
                        best = max(best, seq)
            if not answer.get("more"):
                return best
            since = next_cursor

    async def aclose(self) -> None:
        await self._http.aclose()
