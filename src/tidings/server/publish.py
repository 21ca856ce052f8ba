"""Publishing over HTTP: ``POST /channels/{channel}`` with a JSON body."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.errors import TidingsError
from tidings.server.connection import HttpConnection
from tidings.server.request import Request
from tidings.wire import jsonvalue
from tidings.wire.http import Headers

if TYPE_CHECKING:
    from tidings.server.app import Server



def publish(server: Server, conn: HttpConnection, request: Request, channel: str,
            cors: Headers, rate_key: str | None = None) -> None:
    """Validate the body, then answer ``201`` once the message is in the log.

    ``rate_key`` names the publisher's rate bucket (its token or the API key);
    without one, the client address's bucket is used.
    """
    server.check_publish_rate(conn.transport, rate_key)
    data = jsonvalue.compact(request.body)
    conn.park()
    server.spawn(_publish(server, conn, channel, data, cors, request.keep_alive))


async def _publish(server: Server, conn: HttpConnection, channel: str, data: bytes,
                   cors: Headers, keep_alive: bool) -> None:
    try:
        message = await server.broker.publish(channel, data)
    except TidingsError as exc:
        status = getattr(exc, "status", 500)
        body = {"error": getattr(exc, "code", "error"), "message": str(exc)}
        conn.answer_json(status, body, cors, keep_alive)
        return
    server.stats["published"] += 1
    body = {"channel": message.channel, "id": message.id, "time": message.time}
    conn.answer_json(201, body, cors, keep_alive)
