"""One pub/sub connection to one Redis node: the channels this node follows there.

A link speaks just enough RESP for sharded pub/sub (``SSUBSCRIBE``,
``SUNSUBSCRIBE``, ``PING``, ``AUTH``) over an asyncio protocol, parsing with
hiredis. It does not reconnect by itself: when the connection breaks it
calls ``on_lost``, and :class:`~tidings.brokers.redis.pubsub.PubSub`
reconnects it and subscribes again, after which the broker syncs what the
link followed.

Replies to commands come back in the order the commands were sent, with
pushed messages in between; :attr:`_expected` pairs each reply with its
command.

In a Redis Cluster a link follows resharding one channel at a time, without
closing: ``SSUBSCRIBE`` of a name whose slot is elsewhere is answered with
the node that holds it (``MOVED``/``ASK``, :meth:`Link.subscribe` returns its
address), and when a slot leaves the node Redis pushes a ``sunsubscribe``
nobody asked for, which the link hands to ``on_moved``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_module
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import hiredis

from tidings.errors import BrokerError


def parse_redis_url(url: str) -> tuple[Address, int]:
    """``redis://[[user]:password@]host[:port][/db]`` (``rediss://``: TLS) → address, db."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("the scheme must be redis:// or rediss://")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database must be a number, not {path!r}")
    unquote = urllib.parse.unquote
    address = Address(
        parts.hostname or "localhost",
        parts.port or 6379,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        parts.scheme == "rediss",
    )
    return address, int(path or 0)


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def elsewhere(self, host: str, port: int) -> Address:
        """Another node of the same cluster, reached with the same credentials and TLS.

        An empty ``host`` (Redis's "the host you are talking to") is this one's.
        """
        return Address(host or self.host, port, self.username, self.password, self.tls)


def redirection(error: str) -> tuple[str, int] | None:
    """The node a ``MOVED``/``ASK`` error names (``MOVED 3999 127.0.0.1:6381``), if it is one.

    The host is empty when Redis leaves it out (``MOVED 3999 :6381``): it is
    then the host of the node that answered.
    """
    kind, _, rest = error.partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    _slot, _, where = rest.partition(" ")
    host, _, port = where.rpartition(":")
    if not port.isdigit():
        return None
    return host, int(port)


def command(*args: bytes | str | int) -> bytes:
    """One command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


#: What :meth:`Link.subscribe` resolves to: ``None`` once Redis confirmed the
#: subscription, or the address of the node that holds the name's slot.
Subscribed = Address | None


class Link(asyncio.Protocol):
    """A subscriber connection; ``on_message(name, payload)`` gets every pushed message.

    ``on_moved(link, name)`` is called when Redis drops the subscription of
    ``name`` because its slot moved to another node (the link stays up); the
    caller must subscribe to it where the slot is now, then sync what was
    published meanwhile. ``on_lost(link)`` is called when the connection breaks.
    """

    def __init__(self, address: Address, on_message: Callable[[str, bytes], None],
                 on_lost: Callable[[Link], None],
                 on_moved: Callable[[Link, str], None]) -> None:
        self.address = address
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_moved = on_moved
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._expected: collections.deque[tuple[str, asyncio.Future[Subscribed] | None]] = (
            collections.deque())
        #: Pub/sub names subscribed on the current connection (confirmed or on the way).
        self.names: set[str] = set()
        #: Loop time at which the node last said anything.
        self.last_heard = 0.0

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def connect(self, seconds: float) -> None:
        """Open the connection (and authenticate); raise ``OSError`` or ``BrokerError``."""
        loop = asyncio.get_running_loop()
        context = ssl_module.create_default_context() if self.address.tls else None
        async with asyncio.timeout(seconds):
            await loop.create_connection(lambda: self, self.address.host, self.address.port,
                                         ssl=context)
            if self.address.password is not None:
                auth = ([self.address.username] if self.address.username else [])
                await self._call(command("AUTH", *auth, self.address.password))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._reader = hiredis.Reader()
        self.names.clear()
        self.last_heard = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.names.clear()
        while self._expected:
            _kind, future = self._expected.popleft()
            if future is not None and not future.done():
                future.set_exception(BrokerError(f"the connection to Redis {self.address} broke"))
        self._on_lost(self)

    def data_received(self, data: bytes) -> None:
        self.last_heard = asyncio.get_running_loop().time()
        reader = self._reader
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if isinstance(reply, list) and reply and reply[0] == b"smessage":
                self._on_message(reply[1].decode(), reply[2])
            elif (isinstance(reply, list) and reply and reply[0] == b"sunsubscribe"
                  and reply[1].decode() in self.names
                  and not self._answers_unsubscribe(reply[1].decode())):
                # Unasked: the slot moved to another node (Redis Cluster). Only
                # this name is affected; the others go on on this connection.
                name = reply[1].decode()
                self.names.discard(name)
                self._on_moved(self, name)
            elif self._expected:
                kind, future = self._expected.popleft()
                if isinstance(reply, hiredis.ReplyError):
                    self._refused(kind, future, str(reply))
                elif future is not None and not future.done():
                    future.set_result(None)

    def _refused(self, kind: str, future: asyncio.Future[Subscribed] | None,
                 error: str) -> None:
        if kind.startswith("subscribe "):
            self.names.discard(kind.removeprefix("subscribe "))
        if future is None or future.done():
            return
        where = redirection(error) if kind.startswith("subscribe ") else None
        if where is not None:
            future.set_result(self.address.elsewhere(*where))
        else:
            future.set_exception(BrokerError(f"Redis {self.address} refused: {error}"))

    def subscribe(self, name: str) -> asyncio.Future[Subscribed]:
        """Follow ``name``; the future is done once Redis answered.

        It resolves to ``None`` once Redis confirmed the subscription, or to
        the address of another node if ``name``'s slot is there (Redis Cluster):
        the caller must subscribe on that node instead.
        """
        future: asyncio.Future[Subscribed] = asyncio.get_running_loop().create_future()
        if self._transport is None:
            future.set_exception(BrokerError(f"not connected to Redis {self.address}"))
            return future
        self.names.add(name)
        self._send(command("SSUBSCRIBE", name), f"subscribe {name}", future)
        return future

    def unsubscribe(self, name: str) -> None:
        if self._transport is not None and name in self.names:
            self.names.discard(name)
            self._send(command("SUNSUBSCRIBE", name), f"unsubscribe {name}", None)

    def _answers_unsubscribe(self, name: str) -> bool:
        """Whether a ``sunsubscribe`` of ``name`` is the reply to our own SUNSUBSCRIBE.

        The name may be followed again by then (unsubscribed, then subscribed
        anew before Redis answered): that reply is not a slot move.
        """
        return bool(self._expected) and self._expected[0][0] == f"unsubscribe {name}"

    def ping(self) -> None:
        """Ask for a sign of life (:attr:`last_heard` moves when it comes)."""
        if self._transport is not None:
            self._send(command("PING"), "ping", None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _send(self, data: bytes, kind: str, future: asyncio.Future[Subscribed] | None) -> None:
        assert self._transport is not None
        self._expected.append((kind, future))
        self._transport.write(data)

    async def _call(self, data: bytes) -> None:
        future: asyncio.Future[Subscribed] = asyncio.get_running_loop().create_future()
        self._send(data, "call", future)
        await future
