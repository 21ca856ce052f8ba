"""The whole tidings error tree.

::

    TidingsError
    ├── UsageError            you called the API wrongly (a bug in the caller's code)
    ├── ProtocolError         the peer sent something we refuse; carries the answer to give
    │   ├── BadRequest            400  malformed JSON, query, command, ...
    │   │   ├── InvalidChannel        400  channel name outside the documented alphabet/length
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
    │   ├── ServerBusy            503  the server holds max_connections already
    │   └── ShuttingDown          503  the server began shutting down while the request waited
    ├── BrokerError           the message store failed (503); nothing was accepted
    └── ClientError           raised by the Python client (tidings.client)
        ├── ClientClosed          the client or publisher was closed; open a new one
        ├── ConnectionFailed      the server could not be reached, or the link broke mid-request
        ├── RequestRefused        the server answered with an error; carries status, code, message
        └── MissedMessages        a gap, raised only with on_gap="raise"; carries the Gap event

Each :class:`ProtocolError` knows the HTTP status and the WebSocket close code
to answer with, plus a short machine-readable ``code`` and a message a person
can read. The server turns them into JSON bodies
(``{"error": code, "message": text}``) or WebSocket error replies; the client
turns those answers back into :class:`RequestRefused`.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "BrokerError",
    "ClientClosed",
    "ClientError",
    "ConnectionFailed",
    "Forbidden",
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
    "UsageError",
]


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
    close_code = 1008  # policy violation
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
    close_code = 4001
    code = "unauthorized"


class Forbidden(ProtocolError):
    """Valid credentials that do not allow the action."""

    status = 403
    close_code = 4003
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
    close_code = 1009  # message too big
    code = "payload_too_large"


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


class ServerBusy(ProtocolError):
    """The server is at ``max_connections``; the client should try again later."""

    status = 503
    close_code = 1013  # try again later
    code = "too_many_connections"


class ShuttingDown(ProtocolError):
    """The server began shutting down while the request waited; retry on another node."""

    status = 503
    close_code = 1001  # going away
    code = "shutdown"


class BrokerError(TidingsError):
    """The message store failed; the operation was not carried out."""

    status = 503
    close_code = 1011
    code = "broker_unavailable"

    def to_json(self) -> dict[str, object]:
        return {"error": self.code, "message": str(self)}


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
