"""In-process hooks: the application decides who connects, what they read and publish, and
answers their ``rpc`` commands.

The application registers async functions on its server::

    @server.on_connect
    async def on_connect(request: tidings.ConnectRequest) -> tidings.Identity:
        user = await sessions.user_of(request.cookies.get("session"))
        if user is None:
            raise tidings.Refuse("log in first", status=401, code="login_required")
        return tidings.Identity(user.name, info={"avatar": user.avatar})

Each runs once per connection (``on_connect``: an HTTP request, a WebSocket
handshake), per subscription (``on_subscribe``), per publish (``on_publish``)
or per ``rpc`` command; never per delivered message. A hook allows by
returning, refuses by raising :class:`Refuse` (its status, code and message
reach the client as every refusal does), and ``on_publish`` may return
:class:`Replace` to store other data. A hook that raises anything else, or
does not answer within :attr:`Hooks.timeout` seconds, is answered ``503
hook_unavailable`` (retryable): never a silent allow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

from tidings.core.policy import Claims
from tidings.errors import CloseCode, NotFound, ProtocolError, UsageError
from tidings.server.metrics import LatencyHistogram
from tidings.server.request import Request
from tidings.settings import DEFAULT_HOOK_TIMEOUT
from tidings.wire import jsonvalue

logger = logging.getLogger("tidings.server")


class Refuse(ProtocolError):
    """Raised by a hook to refuse: ``401`` (who are you?) or ``403`` (not you).

    The client gets ``status`` and ``{"error": code, "message": message}``
    over HTTP, an ``error`` reply to a WebSocket command, or a refused
    WebSocket handshake.
    """

    def __init__(self, message: str = "refused by the application", *, status: int = 403,
                 code: str | None = None) -> None:
        if status not in (401, 403):
            raise UsageError(f"a hook refuses with 401 or 403, not {status}")
        super().__init__(message, code=code or ("unauthorized" if status == 401 else "forbidden"))
        self.status = status
        self.close_code = CloseCode.UNAUTHORIZED if status == 401 else CloseCode.FORBIDDEN


class HookFailed(Exception):
    """Raised by a hook that could not decide (the application it asks over HTTP is down,
    or answered nonsense) and has logged why: the client gets ``503 hook_unavailable``."""


class HookUnavailable(ProtocolError):
    """A hook failed or did not answer in time: nothing was allowed; retry."""

    status = 503
    close_code = CloseCode.TRY_AGAIN_LATER
    code = "hook_unavailable"


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What ``on_connect`` sees of a request."""

    #: ``"websocket"``, ``"sse"``, ``"longpoll"``, ``"poll"`` or ``"publish"``.
    technique: str
    path: str
    #: Request headers, lower-case names.
    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    #: The client's address (the peer's IP), if known.
    client: str | None
    #: A verified token's claims (``sub``, ``expires``, ``subscribe``, ``publish``), or ``None``.
    claims: Claims | None
    #: The channels asked for (the publish's channel for a publish).
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Identity:
    """What ``on_connect`` returns: who the user is, what the application says of them,
    and the channels ``GET /subscribe`` without ``channel`` reads (server/subscriptions.py)."""

    user: str | None = None
    info: Any = None
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Replace:
    """Returned by ``on_publish``: store ``data`` instead (checked as any publish is)."""

    data: Any


ANONYMOUS_IDENTITY = Identity()

Hook = Callable[..., Awaitable[Any]]


@dataclass
class Hooks:
    """The hooks an application registered (``Server.on_connect`` and the others)."""

    connect: Hook | None = None
    subscribe: Hook | None = None
    publish: Hook | None = None
    rpc: Hook | None = None
    #: Awaited by :meth:`aclose` (the HTTP hooks' connections: server/hooks_http.py).
    closers: tuple[Callable[[], Awaitable[None]], ...] = ()
    #: Seconds each call may take (``503 hook_unavailable`` after).
    timeout: float = DEFAULT_HOOK_TIMEOUT
    #: Seconds of the calls by hook name, and failures by (hook name, reason): ``/metrics``.
    latency: dict[str, LatencyHistogram] = field(default_factory=dict, compare=False, repr=False)
    failures: Counter[tuple[str, str]] = field(default_factory=Counter, compare=False,
                                               repr=False)

    @property
    def on_reads(self) -> bool:
        """Whether a read must wait for a hook."""
        return self.connect is not None or self.subscribe is not None

    @property
    def on_publishes(self) -> bool:
        """Whether a publish must wait for a hook."""
        return self.connect is not None or self.publish is not None

    async def aclose(self) -> None:
        """Release what the hooks hold (the server calls it as it closes)."""
        for close in self.closers:
            await close()

    async def identify(self, request: ConnectRequest) -> Identity:
        """``on_connect``; without one, the token's subject (or nobody)."""
        if self.connect is None:
            sub = request.claims.sub if request.claims is not None else None
            return Identity(sub) if sub is not None else ANONYMOUS_IDENTITY
        result = await self._call("on_connect", self.connect, request)
        if result is None:
            return ANONYMOUS_IDENTITY
        if isinstance(result, Identity):
            return result
        if isinstance(result, str):
            return Identity(result)
        logger.error("on_connect returned %r, not an Identity, a str or None", result)
        self.failures["on_connect", "invalid_result"] += 1
        raise HookUnavailable("the application's on_connect hook failed; retry")

    async def check_subscribe(self, user: str | None, channels: tuple[str, ...]) -> None:
        """``on_subscribe`` for each channel; raises :class:`Refuse` for the first refused."""
        if self.subscribe is None:
            return
        for channel in channels:
            if await self._call("on_subscribe", self.subscribe, user, channel) is False:
                raise Refuse(f"reading {channel} is not allowed")

    async def check_publish(self, user: str | None, channel: str, data: bytes) -> Replace | None:
        """``on_publish`` with the published value; a :class:`Replace` to store instead."""
        if self.publish is None:
            return None
        value = jsonvalue.decode(data)
        result = await self._call("on_publish", self.publish, user, channel, value)
        if result is False:
            raise Refuse(f"publishing on {channel} is not allowed")
        return result if isinstance(result, Replace) else None

    async def call(self, user: str | None, method: str, data: Any) -> Any:
        """``on_rpc``: its result is the ``ack``'s ``result``."""
        if self.rpc is None:
            raise NotFound("this server answers no rpc commands", code="no_rpc")
        return await self._call("on_rpc", self.rpc, user, method, data)

    async def _call(self, name: str, hook: Hook, *args: Any) -> Any:
        began = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                return await hook(*args)
        except HookFailed:  # it logged why
            self.failures[name, "error"] += 1
            raise HookUnavailable(f"the application's {name} hook failed; retry") from None
        except ProtocolError:
            raise  # Refuse, or a refusal the hook passed on: the client gets it
        except TimeoutError:
            self.failures[name, "timeout"] += 1
            raise HookUnavailable(f"the application's {name} hook did not answer within "
                                  f"{self.timeout:g} s; retry") from None
        except Exception:
            self.failures[name, "error"] += 1
            logger.exception("the application's %s hook failed", name)
            raise HookUnavailable(f"the application's {name} hook failed; retry") from None
        finally:
            histogram = self.latency.get(name)
            if histogram is None:
                histogram = self.latency[name] = LatencyHistogram()
            histogram.observe(time.perf_counter() - began)


def connect_request(technique: str, request: Request, peer: object, claims: Claims | None,
                    channels: tuple[str, ...]) -> ConnectRequest:
    """What ``on_connect`` sees of an HTTP request (``peer``: the socket's peer address)."""
    return ConnectRequest(technique, request.path, request.headers, cookies_of(request.headers),
                          client_of(peer), claims, channels)


def cookies_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The request's cookies (a malformed ``Cookie`` header gives none)."""
    header = headers.get("cookie")
    if not header:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def client_of(peer: object) -> str | None:
    """The IP of a peer address (``transport.get_extra_info("peername")``)."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None
