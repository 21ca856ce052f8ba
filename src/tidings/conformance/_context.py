"""What every check gets (:class:`Context`) and how it labels failures (:func:`labelled`).

Checks fail with :class:`tidings.testing.CheckFailed` (also
``tidings.conformance.CheckFailed``), through :func:`tidings.testing.require`
and the other checks of the test kit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tidings.errors import TidingsError, UsageError
from tidings.testing import CheckFailed, fail_after, http_client

#: The namespace of every channel a run uses: an operator can give it its own
#: retention (``[namespaces.conformance]``), and nothing else is touched.
NAMESPACE = "conformance"


#: The four techniques, best first, named as in the ``transports`` setting.
TECHNIQUES = ("websocket", "sse", "longpoll", "poll")


class NotApplicable(Exception):
    """The check cannot run against this server (it turned off the techniques it needs)."""


@dataclass(frozen=True)
class Context:
    """One run's view of the server under test.

    ``url`` is the base URL (``http://host:port``, no trailing slash);
    ``prefix`` starts every channel name, unique per run so that checks and
    runs never read each other's messages; ``timeout`` bounds every single
    step (one answer, one event); ``heartbeat_timeout`` how long an idle
    stream may wait for a heartbeat. ``nodes`` are the base URLs of the other
    nodes of the same deployment (sharing ``url``'s channels through one
    broker); only the ``across_nodes`` check uses them, through :meth:`at`.
    """

    url: str
    prefix: str
    timeout: float = 10.0
    heartbeat_timeout: float = 30.0
    #: The techniques the server serves (its ``/healthz`` says); ``None``: not asked yet.
    transports: tuple[str, ...] | None = None
    nodes: tuple[str, ...] = ()

    @classmethod
    def create(cls, url: str, *, timeout: float = 10.0, heartbeat_timeout: float = 30.0,
               nodes: Sequence[str] = ()) -> Context:
        """A context with a fresh channel prefix.

        Raises :class:`UsageError` for a URL (``url`` or one of ``nodes``)
        that is not HTTP, or a node given twice.
        """
        base = _base_url(url, "the server URL")
        others = tuple(_base_url(node, "a node URL") for node in nodes)
        for index, node in enumerate(others):
            if node in (base, *others[:index]):
                raise UsageError(f"{node} is given twice: give each node of the deployment once")
        if timeout <= 0 or heartbeat_timeout <= 0:
            raise UsageError("timeouts must be positive")
        return cls(base, f"{NAMESPACE}:{secrets.token_hex(4)}-", timeout, heartbeat_timeout,
                   nodes=others)

    def at(self, url: str) -> Context:
        """This context for the node at ``url``: the same channels and timeouts.

        Its techniques are not asked yet: call :meth:`discover`.
        """
        return dataclasses.replace(self, url=url, transports=None)

    def channel(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def serves(self, technique: str) -> bool:
        return technique in (TECHNIQUES if self.transports is None else self.transports)

    @property
    def techniques(self) -> tuple[str, ...]:
        """The techniques to check, best first."""
        return tuple(t for t in TECHNIQUES if self.serves(t))

    @property
    def readers(self) -> tuple[str, ...]:
        """Every reader to check: the raw techniques, then the same through the tidings client."""
        return (*self.techniques, *(f"client-{t}" for t in self.techniques))

    def require_serving(self, *techniques: str) -> None:
        """Raise :class:`NotApplicable` unless the server serves one of ``techniques``."""
        if not any(self.serves(t) for t in techniques):
            raise NotApplicable(f"the server does not serve {' or '.join(techniques)}")

    async def discover(self) -> Context:
        """This context with :attr:`transports` from the server's ``/healthz`` (all if unsaid)."""
        if self.transports is not None:
            return self
        served: tuple[str, ...] = TECHNIQUES
        with contextlib.suppress(httpx.HTTPError, ValueError):
            async with self.http() as http:
                health = (await http.get("/healthz")).json()
            listed = health.get("transports") if isinstance(health, dict) else None
            if isinstance(listed, list) and listed and set(listed) <= set(TECHNIQUES):
                served = tuple(t for t in TECHNIQUES if t in listed)
        return dataclasses.replace(self, transports=served)

    @property
    def origin(self) -> str:
        """The server's own origin: the one a deployment that restricts CORS most likely allows."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def http(self, **options: Any) -> httpx.AsyncClient:
        """An httpx client for the server; every step is bounded by ``timeout``."""
        return http_client(self.url, timeout=self.timeout, **options)

    def step(self, what: str, within: float | None = None) -> AbstractAsyncContextManager[None]:
        """Bound one step (to ``timeout`` unless told); a timeout fails saying what was awaited."""
        return fail_after(self.timeout if within is None else within, what)


def _base_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what} must be http://HOST[:PORT] or https://..., not {url!r}")
    return url.rstrip("/")


#: A check: a coroutine function that returns when the server passes and
#: raises :class:`CheckFailed` (or any error) when it does not.
Check = Callable[[Context], Coroutine[Any, Any, None]]


@contextlib.contextmanager
def labelled(label: str) -> Iterator[None]:
    """Prefix the reason of a failure inside the block with ``label`` (a technique, a case)."""
    try:
        yield
    except CheckFailed as exc:
        raise CheckFailed(f"{label}: {exc}") from None
    except (OSError, httpx.HTTPError, ConnectionClosed, InvalidHandshake, TidingsError) as exc:
        raise CheckFailed(f"{label}: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, for a failure that is not a :class:`CheckFailed`."""
    if isinstance(exc, CheckFailed):
        return str(exc)
    text = " ".join(str(exc).split())
    if isinstance(exc, httpx.RequestError):
        with contextlib.suppress(RuntimeError):  # no request attached
            request = exc.request
            text = f"{request.method} {request.url.raw_path.decode()}" + (f": {text}" if text
                                                                          else "")
    return f"{type(exc).__name__}: {text or '(no details)'}"
