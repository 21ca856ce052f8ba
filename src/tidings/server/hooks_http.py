"""The application's hooks over HTTP (``[hooks]``), for a tidings that runs apart from it.

Each hook named by a ``*_url`` of :class:`~tidings.settings.HooksSettings` is
a ``POST`` of JSON to the application, made by :class:`HttpHooks`, whose
methods are the hooks :class:`~tidings.server.hooks.Hooks` calls: the same
interface as an application's in-process ``@server.on_connect`` and the
others, so that the drivers know nothing of HTTP and every decision (once per
connection or subscription, never per delivered message) is taken where the
in-process ones are.

The contract (docs/embedding.md, "Hooks over HTTP"):

- the call carries ``X-Tidings-Hook-Secret`` (``[hooks] secret``) and a JSON
  object naming the hook (``"hook": "connect"``) and what it decides on;
- ``200`` with a JSON object (or ``204``) allows, with what the hook returns
  (``user``, ``info``, ``channels``; ``data`` replacing a publish; ``result``);
- ``401`` or ``403`` refuses: the client gets that status and the answer's
  ``{"error": code, "message": text}`` (``unauthorized``/``forbidden`` if it
  has none);
- anything else (down, slower than ``[hooks] timeout``, another status, a
  ``200`` that is not a JSON object) is ``503 hook_unavailable`` for the
  client, retryable, and a warning in the log: never a silent allow.

Calls go over kept-alive connections (server/hooks_client.py), at most
:data:`MAX_CONNECTIONS` at once, closed by :meth:`HttpHooks.aclose` when the
server closes. The headers and cookies forwarded, the secret and the URL's
query are never logged.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from tidings.core.names import check_channel
from tidings.core.policy import Claims
from tidings.errors import BadRequest, InvalidChannel, UsageError
from tidings.server.hooks import ConnectRequest, HookFailed, Hooks, Identity, Refuse, Replace
from tidings.server.hooks_client import HookCallFailed, HookClient, Origin
from tidings.settings import HOOK_NAMES, HooksSettings
from tidings.wire import jsonvalue

logger = logging.getLogger("tidings.server")

#: The header carrying ``[hooks] secret`` on every call.
SECRET_HEADER = "X-Tidings-Hook-Secret"
#: Bytes of an answer read at most; a longer one is a failure (``503``).
MAX_ANSWER_BYTES = 1024 * 1024
#: Connections open to the application at once, per server; more calls wait for one
#: (within ``[hooks] timeout``).
MAX_CONNECTIONS = 100
#: The longest ``user`` a connect hook may name.
MAX_USER_LENGTH = 256
#: A refusal's ``error`` code: what tidings' own codes look like.
_CODE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: The longest refusal message passed on to a client (longer ones are cut).
MAX_MESSAGE_LENGTH = 500
#: Seconds between two warnings about the same failing hook (the failures between are
#: counted).
FAILURE_LOG_INTERVAL = 10.0


class HttpHooks:
    """The hooks of ``[hooks]``: :meth:`install` them on a server's :class:`Hooks`."""

    def __init__(self, settings: HooksSettings) -> None:
        if not settings.enabled:
            raise UsageError("[hooks] names no URL: no hook to call")
        self.settings = settings
        self._client = HookClient(MAX_CONNECTIONS, MAX_ANSWER_BYTES)
        secret = b"" if settings.secret is None else (
            SECRET_HEADER.encode() + b": " + settings.secret.encode() + b"\r\n")
        #: hook -> where its calls go, and the head of each (but its Content-Length).
        self._targets: dict[str, tuple[Origin, bytes]] = {}
        for name in HOOK_NAMES:
            url = settings.url(name)
            if url:
                parts = urlsplit(url)
                port = parts.port or (443 if parts.scheme == "https" else 80)
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                host = parts.netloc.rpartition("@")[2]  # never the URL's credentials
                head = (f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
                        "Content-Type: application/json\r\nUser-Agent: tidings-hooks\r\n"
                        ).encode() + secret
                self._targets[name] = (Origin(parts.scheme, parts.hostname or "", port), head)
        #: hook -> (when its failure was last logged, failures not logged since).
        self._failures: dict[str, tuple[float, int]] = {}

    def install(self, hooks: Hooks) -> None:
        """Make each hook that has a URL one of ``hooks``; their timeout becomes
        ``[hooks] timeout``; ``hooks.aclose()`` closes the connections."""
        for name in HOOK_NAMES:
            if self.settings.url(name):
                setattr(hooks, name, getattr(self, name))
        hooks.timeout = self.settings.timeout
        hooks.closers += (self.aclose,)

    async def aclose(self) -> None:
        """Close the connections to the application."""
        await self._client.aclose()

    # the hooks -----------------------------------------------------------------

    async def connect(self, request: ConnectRequest) -> Identity:
        """``on_connect``: who the user is, from what the application answers."""
        headers = {name: request.headers[name] for name in self.settings.forward_headers
                   if name in request.headers}
        cookies = {name: request.cookies[name] for name in self.settings.forward_cookies
                   if name in request.cookies}
        answer = await self._call("connect", {
            "technique": request.technique, "path": request.path,
            "channels": list(request.channels), "client": request.client,
            "claims": _claims(request.claims), "headers": headers, "cookies": cookies})
        user = answer.get("user")
        if user is not None and not (isinstance(user, str) and 0 < len(user) <= MAX_USER_LENGTH
                                     and user.isprintable()):
            raise self._failed("connect", f"its user is not null or a string of 1 to "
                               f"{MAX_USER_LENGTH} printable characters: {str(user)[:100]!r}")
        channels = answer.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise self._failed("connect", f"its channels are not a list of channel names: "
                               f"{str(channels)[:100]!r}")
        try:
            names = tuple(check_channel(name) for name in channels)
        except InvalidChannel as exc:
            raise self._failed("connect", f"its channels hold a bad name: {exc}") from None
        return Identity(user, info=answer.get("info"), channels=names)

    async def subscribe(self, user: str | None, channel: str) -> None:
        """``on_subscribe``: returns to allow (the application answered 200)."""
        await self._call("subscribe", {"user": user, "channel": channel})

    async def publish(self, user: str | None, channel: str, data: Any) -> Replace | None:
        """``on_publish``: ``data`` in the answer replaces the published value."""
        answer = await self._call("publish", {"user": user, "channel": channel, "data": data})
        return Replace(answer["data"]) if "data" in answer else None

    async def rpc(self, user: str | None, method: str, data: Any) -> Any:
        """``on_rpc``: the answer's ``result`` (``null`` if it has none)."""
        answer = await self._call("rpc", {"user": user, "method": method, "data": data})
        return answer.get("result")

    # the call ------------------------------------------------------------------

    async def _call(self, hook: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to the hook's URL: the answer's object; raise :class:`Refuse`
        (401/403) or :class:`HookFailed` (anything else)."""
        body = jsonvalue.encode({"hook": hook, **payload})
        origin, head = self._targets[hook]
        try:
            status, content = await self._client.post(
                origin, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except HookCallFailed as exc:
            raise self._failed(hook, f"no answer: {exc}") from None
        if status == 204:
            return {}
        if status not in (200, 401, 403):
            raise self._failed(hook, f"it answered {status} {content[:200]!r}; a hook answers "
                                     "200 (or 204) to allow, 401 or 403 to refuse")
        try:
            answer = jsonvalue.decode(content, "the answer")
        except BadRequest:
            answer = None
        if status != 200:
            raise _refusal(status, answer)
        if not isinstance(answer, dict):
            raise self._failed(hook, f"it answered 200 with {content[:200]!r}, not a JSON "
                                     "object")
        return answer

    def _failed(self, hook: str, why: str) -> HookFailed:
        """Log why ``hook`` failed (at most every :data:`FAILURE_LOG_INTERVAL` seconds, with
        the count of failures since); the :class:`HookFailed` to raise."""
        now = time.monotonic()
        logged, unlogged = self._failures.get(hook, (float("-inf"), 0))
        if now - logged >= FAILURE_LOG_INTERVAL:
            self._failures[hook] = (now, 0)
            more = f" ({unlogged} more failures since the last warning)" if unlogged else ""
            url = self.settings.url(hook).partition("?")[0]  # a query may hold a key
            logger.warning("the application's %s hook at %s failed: %s%s", hook, url[:200],
                           why, more)
        else:
            self._failures[hook] = (logged, unlogged + 1)
        return HookFailed(why)


def _refusal(status: int, answer: Any) -> Refuse:
    """The :class:`Refuse` of a 401 or 403 answer: its ``{"error": code, "message": text}``,
    or the defaults of ``status`` for a body that does not say (an HTML page, nothing)."""
    if not isinstance(answer, dict):
        return Refuse(status=status)
    code, message = answer.get("error"), answer.get("message")
    return Refuse(message[:MAX_MESSAGE_LENGTH] if isinstance(message, str) and message
                  else "refused by the application", status=status,
                  code=code if isinstance(code, str) and _CODE_RE.fullmatch(code) else None)


def _claims(claims: Claims | None) -> dict[str, Any] | None:
    """A verified token's claims as the connect hook gets them."""
    if claims is None:
        return None
    return {"sub": claims.sub, "expires": claims.expires, "subscribe": list(claims.subscribe),
            "publish": list(claims.publish), "info": claims.info}
