"""One HTTP/1.1 connection: request parsing with limits, responses, keep-alive.

Requests are parsed by ``httptools``; each complete request goes to
:meth:`Router.dispatch`, which either answers at once (poll, publish, errors),
parks the connection (long poll), or hands the socket to another protocol
object (SSE, WebSocket) with ``transport.set_protocol``, dropping the HTTP
parser so that a long-lived connection costs only what its technique needs.

A parked request is answered from elsewhere: the fan-out of a publish, the
sweep, a timer. The request pipelined behind it is then *not* served there
but in a later step of the loop (``call_soon``), so that nothing a client
sends ever runs inside another client's delivery or the housekeeping task.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from tidings.errors import (
    INTERNAL_ERROR,
    BadRequest,
    BrokerError,
    HeadersTooLarge,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
)
from tidings.server import accesslog
from tidings.server.metrics import BYTES_HTTP, count_refusal
from tidings.server.request import Request
from tidings.wire import http, jsonvalue
from tidings.wire.repeat import RequestShape

if TYPE_CHECKING:
    from tidings.server.app import Server
    from tidings.server.registry import Check

# The very request again, answered in C (server/speedups.c, configured by server/repeat.py);
# without it (not built, or TIDINGS_NO_SPEEDUPS set), in Python: the same answers.
speedups: ModuleType | None
try:
    from tidings.server import speedups
except ImportError:
    speedups = None
if os.environ.get("TIDINGS_NO_SPEEDUPS"):
    speedups = None
answer_again = None if speedups is None else speedups.answer_again

logger = logging.getLogger("tidings.server")

#: Pipelined requests queued behind a slow one before reading pauses.
MAX_PIPELINED = 16

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Header field names as sent → as looked up (lower-cased ``str``): the same few names come
#: in every request, so each is decoded once. Bounded: past it, names are decoded each time.
MAX_FIELD_NAMES = 256
_FIELD_NAMES: dict[bytes, str] = {}
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH")}
#: The body of a ``500``: serving a request raised (a bug, logged with its traceback).
INTERNAL_ANSWER = {"error": INTERNAL_ERROR.code,
                   "message": "the server failed to answer this request; try again"}

#: Seconds a connection refused for a limit is kept (reading and dropping what the
#: client sends) so that it can read the answer before the socket closes.
REFUSAL_LINGER = 1.0


#: Request shapes kept once for every connection that sends the same (pollers of one channel
#: with the same headers): a shape is a few hundred bytes, a third of an idle poll connection.
MAX_SHARED_SHAPES = 1024
_SHAPES: dict[RequestShape, RequestShape] = {}


def _shared(shape: RequestShape) -> RequestShape:
    """The equal shape already kept, or ``shape`` (kept from now on; bounded)."""
    found = _SHAPES.get(shape)
    if found is None:
        if len(_SHAPES) >= MAX_SHARED_SHAPES:
            _SHAPES.clear()  # the connections keep theirs; new ones start a new table
        found = _SHAPES[shape] = shape
    return found


#: A client whose requests never repeat (a cache-busting parameter, a header that changes)
#: would pay for a shape at every request (a fifth of its cost): after this many reads of
#: requests in full in a row, a connection makes one only every ``SHAPE_EVERY``-th read.
SHAPES_BEFORE_BACKING_OFF = 4
SHAPE_EVERY = 8


class Repeatable(Protocol):
    """A request's decision that can answer the same request again (server/repeat.py)."""

    @property
    def tagged(self) -> bool:
        """Its ``If-None-Match`` is ``"SINCE"``: the request's shape is made ``tagged``."""

    def answer(self, conn: HttpConnection, data: bytes, shape: RequestShape) -> bool:
        """Answer ``data`` (one read) if it is the request of ``shape`` again with another
        ``since`` value; ``False`` if it must be read in full instead, with nothing done."""


class HttpConnection(asyncio.Protocol):
    """The protocol object of a connection while it speaks plain HTTP."""

    __slots__ = (
        "_access", "_body", "_body_size", "_completed", "_dispatching", "_error", "_failure",
        "_header_bytes", "_headers", "_misses", "_offered", "_repeat", "_repeat_shape",
        "_request_begun", "_url", "busy", "checked_in", "closing", "deadline", "handed_over",
        "on_lost", "parser", "queue", "refused", "server", "transport",
    )
    #: Whether tidings writes this connection's WebSocket frames itself, and so may agree
    #: to WebSocket extensions (compression); under ASGI the ASGI server frames them.
    frames_websockets = True

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpRequestParser(self)
        #: Requests received but not answered yet (pipelining); a list, as it stays tiny.
        self.queue: list[Request] = []
        self.busy = False  # a request is being answered (long poll, publish)
        self.closing = False
        self.handed_over = False
        self.refused = False  # over a connection limit: answered, waiting to close
        self._dispatching = False  # inside _next: an answer given now needs no new step
        #: Loop time after which the connection is closed (0: no deadline);
        #: checked by the server's sweep, so a request costs no timer object.
        self.deadline = 0.0
        #: Where the sweep looks at it next (server/registry.py); ``None``: nowhere.
        self.checked_in: Check | None = None
        #: Called when the connection is lost while a request is parked (long poll).
        self.on_lost: Any = None
        #: An error answer held back until the parked request is answered (order matters).
        self._failure: bytes | None = None
        #: With the access log on: the request being answered, and when it was dispatched.
        self._access: tuple[Request, float] | None = None
        #: The last request's shape and decision, if the router offered one: the same
        #: request again (another ``since``) is answered from it (wire/repeat.py).
        self._repeat: Repeatable | None = None
        self._repeat_shape: RequestShape | None = None
        self._offered: Repeatable | None = None
        self._completed = 0  # requests completed by the parser in this read
        self._misses = 0  # requests read in full since the last one answered again
        #: The size of the request's header fields, as ``max_header_size`` counts it; kept
        #: once it is complete (reset when the next begins), for its shape.
        self._header_bytes = 0
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._error: ProtocolError | None = None
        self._request_begun = False

    # asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.server.registry.add_connection(self)
        refusal = self.server.admission.admit(transport)
        if refusal is not None:
            self._refuse(refusal)
            return
        self._arm(self.server.settings.header_timeout)

    def _refuse(self, error: ProtocolError) -> None:
        """Answer ``error`` before any request, then close once the client has read it.

        Closing at once could reset the connection under a request the client is
        still sending, and it would never see the answer; so the write side is
        shut and what arrives is dropped until the client closes or the linger ends.
        """
        assert self.transport is not None
        count_refusal(self.server.stats, error)
        self.transport.write(http.error_response(error, keep_alive=False))
        self._linger()

    def _linger(self) -> None:
        """Close after an error answer without losing it ("lingering close").

        A client may still be sending (a request we refused halfway): closing
        at once would make the kernel reset the connection, which can destroy
        the answer before the client reads it. So the write side is shut, what
        arrives is dropped, and the socket is closed when the client closes or
        after :data:`REFUSAL_LINGER` seconds.
        """
        assert self.transport is not None
        self.refused = self.closing = True
        self.parser = None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(min(REFUSAL_LINGER, self.server.settings.header_timeout))

    def data_received(self, data: bytes) -> None:
        try:
            if answer_again is not None and answer_again(self, data):
                return
        except Exception:
            logger.exception("answering a repeated request failed")
            self.abort()
            return
        if self.closing or self._failure is not None:
            return
        shape = self._repeat_shape
        if shape is not None and not self.busy and not self.queue and not self._request_begun:
            # The last request's shape again: answered from its decision (server/repeat.py)
            # unless it says the request must be read in full.
            assert self._repeat is not None
            self._dispatching = True
            try:
                answered = self._repeat.answer(self, data, shape)
            except Exception:
                logger.exception("answering a repeated request failed")
                self.abort()
                return
            finally:
                self._dispatching = False
            if answered:
                self._misses = 0
                if not self.busy and not self.closing:
                    self.deadline = self.server.keep_alive_deadline
                return
        self._repeat = self._repeat_shape = self._offered = None
        self._completed = 0
        begun = self._request_begun  # a read that ends a request begun before is no shape
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0]:])
        except httptools.HttpParserCallbackError:
            error = self._error or BadRequest("malformed HTTP request")
            self.fail(error)
        except httptools.HttpParserError as exc:
            self.fail(BadRequest(f"malformed HTTP request: {exc}"))
        else:
            offered, self._offered = self._offered, None
            if self._completed:
                self._misses += 1
            misses = self._misses
            if (offered is not None and self._completed == 1 and not begun
                    and not self._request_begun
                    and (misses <= SHAPES_BEFORE_BACKING_OFF or misses % SHAPE_EVERY == 0)):
                settings = self.server.settings
                shape = RequestShape.of(data, settings.max_url_length, offered.tagged,
                                        settings.max_header_size - self._header_bytes)
                if shape is not None:
                    self._repeat, self._repeat_shape = offered, _shared(shape)

    def offer(self, decision: Repeatable) -> None:
        """The request being served may be answered again by ``decision`` (server/repeat.py).

        Kept only if the bytes just read were that one request, whole: the next read
        of the same shape is then handed to it instead of the parser and the router.
        """
        self._offered = decision

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._disarm()
        self.server.registry.discard_connection(self)
        self.server.admission.release(self.transport)
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)

    # httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        # The fields were reset when the previous request completed (or the connection
        # opened): a parser that fails stops the connection, so nothing is left over;
        # but for the size of its header fields, kept for its shape (data_received).
        self._request_begun = True
        self._header_bytes = 0
        self.deadline = self.server.loop.time() + self.server.settings.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.settings.max_url_length:
            self._error = BadRequest(
                f"request line is longer than {self.server.settings.max_url_length} bytes",
                code="request_line_too_long",
            )
            raise self._error

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        settings = self.server.settings
        if self._header_bytes > settings.max_header_size:
            self._error = HeadersTooLarge(
                f"request headers are larger than {settings.max_header_size} bytes"
            )
            raise self._error
        if len(self._headers) >= settings.max_headers:
            self._error = HeadersTooLarge(f"more than {settings.max_headers} header fields")
            raise self._error
        key = _FIELD_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_FIELD_NAMES) < MAX_FIELD_NAMES:
                _FIELD_NAMES[name] = key
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        most = self.server.settings.max_message_size
        if length is not None and length.isdigit() and int(length) > most:
            self._error = PayloadTooLarge(
                f"body of {length} bytes is over the limit of {most} bytes"
            )
            raise self._error
        expect = self._headers.get("expect")
        if (expect is not None and expect.lower() == "100-continue" and self.transport
                and ("transfer-encoding" in self._headers
                     or (length is not None and length.strip("0") != ""))):
            # Only for a request with content: its framing says there is none otherwise,
            # nothing waits for the go-ahead (RFC 9110, 10.1.1), and a repeated request
            # answered without being parsed (server/repeat.py) is answered alike.
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.settings.max_message_size:
            self._error = PayloadTooLarge(
                f"body is over the limit of {self.server.settings.max_message_size} bytes"
            )
            raise self._error
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.deadline = 0.0  # (_disarm)
        self._completed += 1
        try:
            method = self.parser.get_method()
            request = Request(
                method=_METHODS.get(method) or method.decode("ascii"),
                target=self._url,
                headers=self._headers,
                body=b"".join(self._body),
                keep_alive=self.parser.should_keep_alive(),
                upgrade=self.parser.should_upgrade(),
            )
        except ProtocolError as exc:
            self._error = exc
            raise
        self._reset()  # nothing is half-received now: an idle timeout is not a 408
        if not self.queue and not self.busy and not request.upgrade:
            self._serve(request)  # the usual case: nothing pipelined, nothing parked
            return
        self.queue.append(request)
        if len(self.queue) > MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        if not self.busy and not request.upgrade:
            self._next()

    # answering ---------------------------------------------------------------

    def _next(self) -> None:
        """Serve the queued requests in order until one parks the connection."""
        self._dispatching = True
        try:
            while self.queue and not self.busy and not self.closing and not self.handed_over:
                request = self.queue.pop(0)
                if self.transport is not None and len(self.queue) == MAX_PIPELINED:
                    self.transport.resume_reading()
                if self.server.settings.access_log:
                    self._access = (request, self.server.loop.time())
                self.server.router.dispatch(self, request)
        finally:
            self._dispatching = False
        if not self.busy and not self.queue and not self.closing and not self.handed_over:
            self.deadline = self.server.keep_alive_deadline

    def _serve(self, request: Request) -> None:
        """:meth:`_next` for a request that arrived with none queued before it."""
        if self.closing or self.handed_over:
            return
        if self.server.settings.access_log:
            self._access = (request, self.server.loop.time())
        self._dispatching = True
        try:
            self.server.router.dispatch(self, request)
        finally:
            self._dispatching = False
        # (Nothing is queued meanwhile: the parser hands over the next request after this.)
        if not self.busy and not self.closing and not self.handed_over:
            self.deadline = self.server.keep_alive_deadline

    def _upgrade(self, rest: bytes) -> None:
        """The parser stopped at an ``Upgrade`` request; ``rest`` follows it."""
        if not self.queue:
            self.fail(BadRequest("malformed upgrade request"))
            return
        request = self.queue.pop()
        if self.busy or self.queue:
            self.fail(BadRequest("upgrade request pipelined behind other requests"))
            return
        request.keep_alive = False  # the parser cannot go on after an upgrade
        if self.server.settings.access_log:
            self._access = (request, self.server.loop.time())
        self.server.router.dispatch(self, request, rest)

    def park(self, on_lost: Callable[[HttpConnection], object] | None = None) -> None:
        """The current request will be answered later with :meth:`respond`.

        ``on_lost(conn)`` is called with this connection if the client goes away first.
        """
        self.busy = True
        self.on_lost = on_lost

    def respond(self, data: bytes, keep_alive: bool = True) -> None:
        """Send a whole response; then serve the next request or close."""
        self.busy = False
        self.on_lost = None
        transport = self.transport
        if transport is None or self.closing:
            return
        self.server.stats[BYTES_HTTP] += len(data)
        if self._access is not None:
            self._logged(int(data[9:12]), len(data))
        transport.write(data)
        if self._failure is not None:
            transport.write(self._failure)
            self._linger()
            return
        if not keep_alive or self.server.draining:  # a draining node keeps no connection
            self.closing = True
            transport.close()
        elif not self._dispatching and self.queue:
            # Answered from elsewhere (a delivery, the sweep, a task): the next request is
            # served in a step of its own, never inside the code that answered this one.
            self.server.loop.call_soon(self._next)
        elif not self._dispatching:
            self.deadline = self.server.keep_alive_deadline

    def answer(self, status: int, headers: http.Headers, body: bytes = b"",
               keep_alive: bool = True) -> None:
        """Build a response (``Connection: close`` when not keeping alive) and :meth:`respond`."""
        self.respond(http.response(status, headers, body, keep_alive=keep_alive), keep_alive)

    def answer_json(self, status: int, value: object, headers: http.Headers = (),
                    keep_alive: bool = True) -> None:
        self.answer(status, [http.JSON, *headers], jsonvalue.encode(value), keep_alive)

    def refuse(self, error: ProtocolError | BrokerError, cors: http.Headers = (),
               keep_alive: bool = True) -> None:
        """Answer the request being served with ``error`` (its status, a JSON body), counted
        in the metrics; the connection goes on (a refusal, not a broken stream)."""
        count_refusal(self.server.stats, error)
        self.respond(http.error_response(error, cors, keep_alive=keep_alive), keep_alive)

    def fail(self, error: ProtocolError) -> None:
        """Answer ``error`` and close: after a protocol error the stream is not trusted."""
        if self.closing or self.transport is None:
            return
        self.queue.clear()
        count_refusal(self.server.stats, error)
        answer = http.error_response(error, self.server.cors.headers(self._headers),
                                     keep_alive=False)
        if self.busy:
            # Responses go out in request order: this one follows the parked request's.
            self._failure = answer
            return
        self.busy = False
        self.transport.write(answer)
        self._linger()

    def _logged(self, status: int, size: int) -> None:
        """Write the access-log line of the request being answered (server/accesslog.py)."""
        assert self._access is not None
        request, began = self._access
        self._access = None
        client = self.server.client_address(self.transport, request.header("x-forwarded-for"))
        accesslog.log_request(request, client, status, size, self.server.loop.time() - began)

    def detach(self) -> asyncio.Transport:
        """Give up the socket to a stream (SSE, WebSocket), which sets itself as its protocol."""
        assert self.transport is not None
        if self._access is not None:
            self._logged(101 if self._access[0].upgrade else 200, 0)
        self.handed_over = True
        self._disarm()
        self.parser = None
        self.server.registry.discard_connection(self)
        transport, self.transport = self.transport, None
        return transport

    # deadlines ---------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self.deadline = self.server.loop.time() + seconds
        registry = self.server.registry
        if seconds < registry.recheck:  # (the sweep looks at it sooner than it would)
            registry.watch(self)

    def _disarm(self) -> None:
        self.deadline = 0.0

    def timed_out(self) -> None:
        """Called by the server's sweep once :attr:`deadline` has passed."""
        self.deadline = 0.0
        if self.refused and self.transport is not None:
            self.transport.close()
            return
        if self.busy or self.transport is None or self.closing:
            return
        if self._request_begun:
            self.fail(RequestTimeout(
                f"request not received within {self.server.settings.header_timeout} seconds"
            ))
        else:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        """Serving this connection failed (a bug): answer ``500`` if nothing is half-sent, close."""
        if self.transport is None or (self.closing and not self.refused):
            return
        self.queue.clear()
        self.on_lost = None
        self.busy = False
        self.transport.write(http.json_response(500, INTERNAL_ANSWER, keep_alive=False))
        self._linger()

    def close(self) -> None:
        """Close now (server shutdown); a parked request is answered by its owner first."""
        if self.transport is not None and (not self.closing or self.refused):
            self.closing = True
            self.transport.close()
