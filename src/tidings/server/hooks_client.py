"""The HTTP/1.1 client of the hooks: ``POST`` a request, get its status and body, over
kept-alive connections to the application.

A hook call is on the path of every poll (``connect``, ``subscribe``), so
it must cost little: one asyncio protocol per connection, ``httptools`` (the
native listener's parser) reading the answer, the request's bytes built by
the caller. A general client costs tens of times more CPU per call
(docs/benchmarks.md, "Hooks over HTTP").

:meth:`HookClient.post` raises :class:`HookCallFailed` when no answer came
(refused, reset, not HTTP, too long); the caller bounds its time
(``asyncio.timeout``): a call cancelled mid-way closes its connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import defaultdict
from dataclasses import dataclass

import httptools

#: Seconds an idle connection is kept: less than the usual keep-alive of application
#: servers (uvicorn 5 s, gunicorn 2 s), so that a call rarely meets one they closed.
IDLE_SECONDS = 1.5


class HookCallFailed(Exception):
    """No answer: the application could not be reached, or broke the connection or HTTP."""


@dataclass(frozen=True)
class Origin:
    """Where calls go: ``http`` or ``https``, a host and a port."""

    scheme: str
    host: str
    port: int


class _Stale(HookCallFailed):
    """A kept-alive connection was closed before any answer came: try a new one."""


class _Connection(asyncio.Protocol):
    """One connection: one request at a time; its answer in :attr:`answer`."""

    def __init__(self, max_answer_bytes: int) -> None:
        self.max_answer_bytes = max_answer_bytes
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.received = False
        #: The answer's headers are in, and say where its body ends (a length, chunks).
        self.headers_done = False
        self.delimited = False
        self.reusable = False
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is not a subclass

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.body, self.size, self.received, self.reusable = [], 0, False, False
        self.headers_done = self.delimited = False
        self.transport.write(request)
        return self.answer

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HookCallFailed(
                f"the answer is over {self.max_answer_bytes} bytes"
                if self.size > self.max_answer_bytes else f"the answer is not HTTP/1.1: {exc}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (name == b"transfer-encoding"
                                         and b"chunked" in value.lower()):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_answer_bytes:
            raise OverflowError  # stops the parser: data_received says why
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # 100 Continue and the like: the answer follows
        self.reusable = self.parser.should_keep_alive()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((status, b"".join(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is None or self.answer.done():
            return
        status = self.parser.get_status_code() if self.headers_done else 0
        if exc is None and status >= 200 and not self.delimited:
            # An answer without a length ends where the connection does (HTTP/1.0, Django's
            # runserver without CommonMiddleware).
            self.answer.set_result((status, b"".join(self.body)))
        else:
            kind = HookCallFailed if self.received else _Stale
            self.answer.set_exception(kind(f"the application closed the connection "
                                           f"({exc or 'end of stream'})"))

    def _fail(self, error: HookCallFailed) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class HookClient:
    """At most ``max_connections`` calls at once (more wait), connections kept between them.

    Call :meth:`aclose` at the end.
    """

    def __init__(self, max_connections: int, max_answer_bytes: int) -> None:
        self.max_answer_bytes = max_answer_bytes
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: defaultdict[Origin, list[_Connection]] = defaultdict(list)
        self._busy: set[_Connection] = set()
        self._ssl: ssl.SSLContext | None = None
        self.closed = False

    async def post(self, origin: Origin, request: bytes) -> tuple[int, bytes]:
        """Send ``request`` (whole: head and body) to ``origin``; its status and body."""
        async with self._slots:
            for _attempt in range(2):
                conn, reused = await self._connection(origin)
                self._busy.add(conn)
                done = False
                try:
                    answer = await conn.send(request)
                    done = True
                except _Stale:
                    if reused:
                        continue  # closed while idle, before it read anything: a new one
                    raise
                finally:
                    self._busy.discard(conn)
                    if done and conn.reusable and not conn.closed and not self.closed:
                        conn.idle_since = time.monotonic()
                        self._idle[origin].append(conn)
                    elif not conn.closed:
                        conn.close()  # cancelled, failed or not kept alive
                return answer
        raise HookCallFailed("the application closed two connections in a row")

    async def _connection(self, origin: Origin) -> tuple[_Connection, bool]:
        if self.closed:
            raise HookCallFailed("the server is closing")
        idle = self._idle[origin]
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn, True
            conn.close()
        context = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            _transport, conn = await asyncio.get_running_loop().create_connection(
                lambda: _Connection(self.max_answer_bytes), origin.host, origin.port,
                ssl=context)
        except (OSError, ssl.SSLError) as exc:
            raise HookCallFailed(f"cannot connect: {type(exc).__name__} {exc}") from None
        return conn, False

    async def aclose(self) -> None:
        """Close every connection (calls in flight fail)."""
        self.closed = True
        for connections in self._idle.values():
            for conn in connections:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
