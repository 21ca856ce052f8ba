"""The whole tidings error tree.

::

    TidingsError
    ├── UsageError            you called the API wrongly (a bug in the caller's code)
    ├── ProtocolError         the peer sent something we refuse; carries the answer to give
    │   ├── BadRequest            400  malformed JSON, query, command, ...
    │   │   ├── InvalidChannel        400  channel name outside the documented alphabet/length
    │   │   │   └── RenderError           400  a row names no valid channel (tidings.bridges)
    │   │   └── InvalidCursor         400  malformed cursor, or one ahead of the log
    │   ├── Unauthorized          401  no valid credentials (WebSocket close 4001)
    │   ├── Forbidden             403  the credentials do not allow it (WebSocket close 4003)
    │   ├── TransportDisabled     403  the operator turned this reading technique off
    │   ├── OriginNotAllowed      403  a WebSocket upgrade from an origin not in cors_origins
    │   ├── NotFound              404
    │   ├── MethodNotAllowed      405  (knows which methods the URL takes)
    │   ├── RequestTimeout        408  request not sent in time
    │   ├── PayloadTooLarge       413
    │   ├── TooManyRequests       429  over a rate or per-address limit; may carry Retry-After
    │   ├── HeadersTooLarge       431
    │   ├── UnsupportedMediaType  415  a publish whose body is not declared as JSON
    │   ├── IdempotencyConflict   422  an idempotency key already used with another body
    │   ├── ServerBusy            503  the server holds max_connections already
    │   ├── ShuttingDown          503  the server began shutting down while the request waited
    │   ├── FrameError            a WebSocket frame broke RFC 6455 (its close code says how)
    │   └── CommandError          a WebSocket command was refused (the connection stays open)
    ├── BrokerError           the message store failed (503); nothing was accepted
    │   └── BrokerUnanswered      asked, but the answer was lost: it may have been carried out
    └── ClientError           raised by code that calls a server (tidings.client, a bridge's sink)
        ├── ClientClosed          the client or publisher was closed; open a new one
        ├── ConnectionFailed      the server could not be reached, or the link broke mid-request
        │   └── SinkUnavailable       a bridge's sink failed or is out of reach (tidings.bridges)
        ├── RequestRefused        the server answered with an error; carries status, code, message
        └── MissedMessages        a gap, raised only with on_gap="raise"; carries the Gap event

Besides errors, a connection can be ended on purpose by the server: the
reasons are the :class:`Closing` values at the end of this module, and every
WebSocket close code tidings uses is in one table, :class:`CloseCode`.

Each :class:`ProtocolError` knows the HTTP status and the WebSocket close code
to answer with, plus a short machine-readable ``code`` and a message a person
can read. The server turns them into JSON bodies
(``{"error": code, "message": text}``) or WebSocket error replies; the client
turns those answers back into :class:`RequestRefused`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "BadRequest",
    "BrokerError",
    "BrokerUnanswered",
    "ClientClosed",
    "ClientError",
    "CloseCode",
    "Closing",
    "CommandError",
    "ConnectionFailed",
    "Forbidden",
    "FrameError",
    "HeadersTooLarge",
    "InvalidChannel",
    "InvalidCursor",
    "MethodNotAllowed",
    "MissedMessages",
    "NotFound",
    "OriginNotAllowed",
    "PayloadTooLarge",
    "ProtocolError",
    "RequestRefused",
    "RequestTimeout",
    "ServerBusy",
    "ShuttingDown",
    "TidingsError",
    "TooManyRequests",
    "TransportDisabled",
    "Unauthorized",
    "UnsupportedMediaType",
    "UsageError",
]


class CloseCode(enum.IntEnum):
    """Every WebSocket close code tidings sends (docs/protocol.md has the same table)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_DATA = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    IDLE_TIMEOUT = 4000
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    SLOW_CONSUMER = 4008


class TidingsError(Exception):
    """Base class of every error tidings raises on purpose."""


class UsageError(TidingsError):
    """The caller used a tidings API wrongly; fix the calling code."""


class ProtocolError(TidingsError):
    """The peer sent something tidings refuses.

    ``status`` is the HTTP status to answer with, ``close_code`` the WebSocket
    close code to use when the error ends a WebSocket, ``code`` a stable
    machine-readable name and ``str(error)`` the human explanation.
    """

    status = 400
    close_code: int = CloseCode.POLICY
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, object]:
        """The JSON body of an error answer."""
        return {"error": self.code, "message": str(self)}


class BadRequest(ProtocolError):
    status = 400
    code = "bad_request"


class InvalidChannel(BadRequest):
    code = "invalid_channel"


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


class Unauthorized(ProtocolError):
    """Credentials are missing, expired or invalid (``code`` says which)."""

    status = 401
    close_code = CloseCode.UNAUTHORIZED
    code = "unauthorized"


class Forbidden(ProtocolError):
    """Valid credentials that do not allow the action."""

    status = 403
    close_code = CloseCode.FORBIDDEN
    code = "forbidden"


class TransportDisabled(ProtocolError):
    """The technique a read asked for is not in the server's ``transports`` setting."""

    status = 403
    code = "transport_disabled"


class OriginNotAllowed(ProtocolError):
    """A browser page from an origin not in ``cors_origins`` tried to open a WebSocket."""

    status = 403
    code = "origin_not_allowed"


class NotFound(ProtocolError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ProtocolError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow


class RequestTimeout(ProtocolError):
    status = 408
    code = "request_timeout"


class PayloadTooLarge(ProtocolError):
    status = 413
    close_code = CloseCode.TOO_BIG
    code = "payload_too_large"


class IdempotencyConflict(ProtocolError):
    """A publish reused an idempotency key, within its window, with a different body."""

    status = 422
    code = "idempotency_conflict"


class TooManyRequests(ProtocolError):
    """Over a limit on how often or how much one client may ask.

    ``retry_after`` (seconds, or ``None``) is sent as ``Retry-After`` on HTTP.
    """

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class HeadersTooLarge(ProtocolError):
    status = 431
    code = "headers_too_large"


class UnsupportedMediaType(ProtocolError):
    """A publish declared a body type other than JSON (a cross-site form can send those)."""

    status = 415
    code = "unsupported_media_type"


class ServerBusy(ProtocolError):
    """The server is at ``max_connections``; the client should try again later."""

    status = 503
    close_code = CloseCode.TRY_AGAIN_LATER
    code = "too_many_connections"


class ShuttingDown(ProtocolError):
    """The server began shutting down while the request waited; retry on another node."""

    status = 503
    close_code = CloseCode.GOING_AWAY
    code = "shutdown"


class FrameError(ProtocolError):
    """The peer broke RFC 6455; close the connection with ``close_code`` and ``reason``."""

    code = "invalid_frame"

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason


class CommandError(ProtocolError):
    """A WebSocket command was refused: answer ``error`` to request ``req``, keep the connection.

    It takes the status, code and close code of the ``error`` it wraps.
    """

    def __init__(self, req: str | int | None, error: ProtocolError) -> None:
        super().__init__(str(error), code=error.code)
        self.req = req
        self.error = error
        self.status = error.status
        self.close_code = error.close_code


class BrokerError(TidingsError):
    """The message store failed; the operation was not carried out."""

    status = 503
    close_code = CloseCode.INTERNAL_ERROR
    code = "broker_unavailable"

    def to_json(self) -> dict[str, object]:
        return {"error": self.code, "message": str(self)}


class BrokerUnanswered(BrokerError):
    """The store was asked, and the connection broke before it answered.

    Unlike its parent, it does not say that nothing was done: Redis may have
    run the command (a publish may be stored). Whoever retries a publish then
    should use an idempotency key.
    """


class ClientError(TidingsError):
    """An error of the Python client (:mod:`tidings.client`)."""


class ClientClosed(ClientError):
    """The client (or publisher) was closed; it cannot be used again. Open a new one."""


class ConnectionFailed(ClientError):
    """The server could not be reached (refused, DNS, timeout) or the connection broke.

    Publishing raises it at once: the caller decides whether to retry. A
    publish that broke after it was sent may or may not have been accepted.
    Subscriptions never raise it; they reconnect by themselves.
    """


class RequestRefused(ClientError):
    """The server refused a request.

    ``status`` is the HTTP status (``None`` for a WebSocket command error),
    ``code`` the server's machine-readable ``error`` (e.g. ``invalid_channel``)
    and ``message`` its explanation, also in ``str(error)``.
    """

    def __init__(self, status: int | None, code: str, message: str) -> None:
        where = f"{status} " if status is not None else ""
        super().__init__(f"{where}{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class MissedMessages(ClientError):
    """Messages were lost (a gap), raised only when the subscription asked for it.

    ``gap`` is the :class:`tidings.Gap` event that would have been delivered.
    The subscription ends; subscribe again with ``since=gap.to`` to go on.
    """

    def __init__(self, gap: object) -> None:
        super().__init__(f"missed messages: {gap}")
        self.gap = gap


@dataclass(frozen=True, slots=True)
class Closing:
    """Why the server ends a stream on purpose: ``code`` names it on every technique
    (the SSE ``close`` event's ``error``), ``close_code`` is the WebSocket close code,
    and ``message`` tells a person what to do next."""

    code: str
    close_code: CloseCode
    message: str


SLOW_CONSUMER = Closing(
    "slow_consumer", CloseCode.SLOW_CONSUMER,
    "the client did not read what was sent in time; resume from your last cursor")
SHUTDOWN = Closing("shutdown", CloseCode.GOING_AWAY,
                   "the server is shutting down; reconnect and resume")
#: A rolling restart: the node drains (``Server.drain``) and its clients move to others.
RESTART = Closing("restart", CloseCode.SERVICE_RESTART,
                  "this node is restarting; reconnect (another node will answer) and resume "
                  "from your last cursor")
TOKEN_EXPIRED = Closing("token_expired", CloseCode.UNAUTHORIZED,
                        "the token has expired; reconnect with a new one and resume from "
                        "your last cursor")
#: A channel the server subscribed the stream's user to could not be read (its broker).
USER_CHANNEL_UNAVAILABLE = Closing(
    "broker_unavailable", CloseCode.TRY_AGAIN_LATER,
    "a channel the server subscribed you to cannot be read now; reconnect and resume from "
    "your last cursor")
IDLE_TIMEOUT = Closing("idle_timeout", CloseCode.IDLE_TIMEOUT, "no answer to pings")
INTERNAL_ERROR = Closing("internal_error", CloseCode.INTERNAL_ERROR,
                         "the server failed while serving this connection; reconnect and "
                         "resume from your last cursor")
