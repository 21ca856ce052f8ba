"""Publishing: ``POST /channels/{channel}`` with a JSON body, and ``Server.publish``.

Both paths go through :func:`check_data` (channel name, JSON value, size)
and :func:`store` (the broker, the ``published`` counter): nothing reaches a
subscriber that an HTTP publish would have refused.

With an ``Idempotency-Key`` header (core/idempotency.py), a publish whose
key was used on the channel within its window stores nothing and answers the
first message: ``200`` with ``"replayed": true`` in the body and an
``Idempotent-Replayed: true`` header, or ``422 idempotency_conflict`` if the
body differs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tidings.brokers.base import Replayed
from tidings.core.idempotency import check_idempotency_key
from tidings.core.message import Message
from tidings.core.names import check_channel
from tidings.core.policy import Claims
from tidings.errors import (
    BadRequest,
    BrokerError,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedMediaType,
)
from tidings.server import hooks
from tidings.server.connection import HttpConnection
from tidings.server.metrics import PUBLISHED, count_refusal
from tidings.server.request import Request
from tidings.wire import jsonvalue
from tidings.wire.http import Headers

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.server")


def publish(server: Server, conn: HttpConnection, request: Request, channel: str,
            cors: Headers, rate_key: str | None = None, claims: Claims | None = None) -> None:
    """Validate the body, then answer ``201`` once the message is in the log.

    ``rate_key`` names the publisher's rate bucket (its token or the API key);
    without one, the client address's bucket is used. ``claims`` are the
    token's, for the application's hooks (``on_connect``, ``on_publish``).
    """
    check_json_type(request.header("content-type"))
    key = request.header("idempotency-key")
    if key is not None:
        key = check_idempotency_key(key)
    address = (server.client_address(conn.transport, request.header("x-forwarded-for"))
               if server.trusted_proxies else None)
    server.admission.check_publish_rate(conn.transport, rate_key, address)
    data = check_data(server, channel, request.body)
    asked = None
    if server.hooks.on_publishes:
        peer = conn.transport.get_extra_info("peername") if conn.transport else None
        asked = hooks.connect_request("publish", request, peer, claims, (channel,))
    conn.park()
    server.spawn(_publish(server, conn, channel, data, key, cors, request.keep_alive, asked))


async def decide(server: Server, user: str | None, channel: str, data: bytes) -> bytes:
    """``on_publish`` (server/hooks.py): the data to store, checked again if replaced."""
    replaced = await server.hooks.check_publish(user, channel, data)
    return data if replaced is None else check_data(server, channel, replaced.data)


def check_data(server: Server, channel: str, data: Any) -> bytes:
    """The compact JSON of ``data`` as it will be stored, or a :class:`ProtocolError`.

    ``data`` is JSON text as ``bytes`` (an HTTP body) or a JSON value (a
    ``dict``, ``list``, ``str``, number, ``bool`` or ``None``). The checks of
    every publish: a valid channel name (``invalid_channel``), JSON
    (``invalid_json``), at most ``max_message_size`` bytes (``payload_too_large``).
    """
    check_channel(channel)
    try:
        body = data if isinstance(data, bytes) else jsonvalue.encode(data)
    except TypeError as exc:  # a set, an object: not a JSON value
        raise BadRequest(f"value cannot be written as JSON: {str(exc)[:100]}",
                         code="invalid_json") from None
    limit = server.settings.max_message_size
    if len(body) > limit:
        raise PayloadTooLarge(f"body of {len(body)} bytes is over the limit of {limit} bytes")
    return jsonvalue.compact(body)


async def store(server: Server, channel: str, data: bytes, key: str | None,
                via: str | None = None) -> Message:
    """Append checked ``data`` (from :func:`check_data`) to ``channel`` and count it.

    ``via`` is how it came for the metrics (``http``, ``websocket``; ``None``: in
    this process). Returns the message, or the first one as a :class:`Replayed`
    if ``key`` was used on the channel within its window (not counted again).
    """
    began = server.loop.time()
    message = await server.broker.publish(channel, data, idempotency_key=key)
    if not isinstance(message, Replayed):
        server.stats["published"] += 1
        if via is not None:
            server.stats[PUBLISHED + via] += 1
        server.publish_latency.observe(server.loop.time() - began)
    return message


def check_json_type(content_type: str | None) -> None:
    """Refuse a body declared as anything but JSON (``415``).

    A page on another site can make a browser send ``text/plain``, form or
    multipart bodies with the user's cookies and no preflight; it cannot send
    ``application/json`` that way (docs/security.md). A body with no
    ``Content-Type`` (curl, scripts) is taken as JSON: a browser that sends
    one cross-site also sends ``Origin``, which the cookie check refuses.
    """
    if content_type is None:
        return
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "application/json" or (
            media_type.startswith("application/") and media_type.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"publish a JSON body with Content-Type: application/json, not {media_type[:60]!r}")


async def _publish(server: Server, conn: HttpConnection, channel: str, data: bytes,
                   key: str | None, cors: Headers, keep_alive: bool,
                   asked: hooks.ConnectRequest | None) -> None:
    try:
        if asked is not None:
            identity = await server.hooks.identify(asked)
            data = await decide(server, identity.user, channel, data)
        message = await store(server, channel, data, key, "http")
    except (ProtocolError, BrokerError) as exc:
        count_refusal(server.stats, exc)
        conn.answer_json(exc.status, exc.to_json(), cors, keep_alive)
        return
    except Exception:
        logger.exception("publishing to %s failed", channel)
        conn.abort()
        return
    body: dict[str, object] = {"channel": message.channel, "id": message.id,
                               "time": message.time}
    if isinstance(message, Replayed):
        body["replayed"] = True
        conn.answer_json(200, body, (*cors, REPLAYED_HEADER), keep_alive)
        return
    conn.answer_json(201, body, cors, keep_alive)


#: The header of a ``200`` that answers a publish whose idempotency key was used already.
REPLAYED_HEADER = ("Idempotent-Replayed", "true")
