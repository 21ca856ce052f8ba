"""Publishing over HTTP: ``POST /channels/{channel}`` with a JSON body.

With an ``Idempotency-Key`` header (core/idempotency.py), a publish whose
key was used on the channel within its window stores nothing and answers the
first message: ``200`` with ``"replayed": true`` in the body and an
``Idempotent-Replayed: true`` header, or ``422 idempotency_conflict`` if the
body differs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tidings.brokers.base import Replayed
from tidings.core.idempotency import check_idempotency_key
from tidings.errors import BrokerError, ProtocolError, UnsupportedMediaType
from tidings.server.connection import HttpConnection
from tidings.server.metrics import PUBLISHED, count_refusal
from tidings.server.request import Request
from tidings.wire import jsonvalue
from tidings.wire.http import Headers

if TYPE_CHECKING:
    from tidings.server.app import Server

logger = logging.getLogger("tidings.server")


def publish(server: Server, conn: HttpConnection, request: Request, channel: str,
            cors: Headers, rate_key: str | None = None) -> None:
    """Validate the body, then answer ``201`` once the message is in the log.

    ``rate_key`` names the publisher's rate bucket (its token or the API key);
    without one, the client address's bucket is used.
    """
    check_json_type(request.header("content-type"))
    key = request.header("idempotency-key")
    if key is not None:
        key = check_idempotency_key(key)
    address = (server.client_address(conn.transport, request.header("x-forwarded-for"))
               if server.trusted_proxies else None)
    server.admission.check_publish_rate(conn.transport, rate_key, address)
    data = jsonvalue.compact(request.body)
    conn.park()
    server.spawn(_publish(server, conn, channel, data, key, cors, request.keep_alive))


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
                   key: str | None, cors: Headers, keep_alive: bool) -> None:
    began = server.loop.time()
    try:
        message = await server.broker.publish(channel, data, idempotency_key=key)
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
    server.stats["published"] += 1
    server.stats[PUBLISHED + "http"] += 1
    server.publish_latency.observe(server.loop.time() - began)
    conn.answer_json(201, body, cors, keep_alive)


#: The header of a ``200`` that answers a publish whose idempotency key was used already.
REPLAYED_HEADER = ("Idempotent-Replayed", "true")
