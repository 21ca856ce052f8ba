"""How the kit waits and fails: one unit of time, bounded steps, readable failures."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import urlsplit

from tidings.errors import UsageError


def _unit() -> float:
    text = os.environ.get("TIDINGS_TEST_UNIT", "1.0")
    try:
        unit = float(text)
    except ValueError:
        unit = 0.0
    if not unit > 0:
        raise UsageError(f"TIDINGS_TEST_UNIT must be a positive number of seconds, not {text!r}")
    return unit


#: Seconds of the kit's unit of time: 1.0, or ``$TIDINGS_TEST_UNIT`` (raise it on
#: a slow machine instead of editing tests). Every default wait is a multiple of it.
UNIT = _unit()
#: How long one step (an answer, an event, a frame) may take unless told: ``5 * UNIT``.
WAIT = 5 * UNIT


class CheckFailed(AssertionError):
    """The server broke the protocol, or did not answer in time; the message says how."""


def require(condition: object, reason: str) -> None:
    """Fail with ``reason`` unless ``condition`` holds (never stripped by ``python -O``)."""
    if not condition:
        raise CheckFailed(reason)


def require_equal(actual: object, expected: object, what: str) -> None:
    """Fail unless ``actual == expected``, saying ``what`` was compared and both values."""
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


@contextlib.asynccontextmanager
async def fail_after(seconds: float | None, what: str) -> AsyncIterator[None]:
    """Bound the block to ``seconds`` (``None``: no bound); past it, fail saying ``what``.

    ``what`` completes "nothing within 5 s while ...", e.g. "waiting for a
    ping". Raises :class:`CheckFailed`, not :class:`TimeoutError`.
    """
    if seconds is None:
        yield
        return
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise CheckFailed(f"nothing within {seconds:g} s while {what}") from None


class HasUrl(Protocol):
    """Anything with the base URL of a server: a ``tidings.Server``, a conformance ``Context``."""

    @property
    def url(self) -> str: ...


#: Where a server is: its base URL (``http://host:port``), or an object with a ``url``.
ServerAddress = str | HasUrl


def url_of(server: ServerAddress) -> str:
    """The base URL of ``server``, without a trailing slash."""
    return (server if isinstance(server, str) else server.url).rstrip("/")


def host_and_port(server: ServerAddress) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of ``server``'s URL; the port defaults to 80 or 443."""
    parts = urlsplit(url_of(server))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"a server URL is http://HOST[:PORT] or https://..., "
                         f"not {parts.geturl()!r}")
    tls = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if tls else 80), tls
