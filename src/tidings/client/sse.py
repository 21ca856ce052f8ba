"""Server-Sent Events: one streaming response, an event per message.

Resumes with ``Last-Event-ID`` (the id of the last message, or the
multi-channel cursor). Comments are the server's heartbeats: if nothing at
all arrives for ``idle_timeout`` seconds the stream counts as dead.
"""

from __future__ import annotations

import json

import httpx

from tidings.client._cursors import BrokenStream
from tidings.client._session import Session
from tidings.client._sse import Checkpoint, Comment, SseParser
from tidings.client.events import BrokerStatus


async def read(session: Session) -> None:
    """Read one event stream until it ends (raises) or an upgrade is due (returns)."""
    client = session.client
    url, channels = session.read_target()
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    since = session.book.since()
    if since is not None:
        headers["Last-Event-ID"] = since
    timeout = httpx.Timeout(client.connect_timeout, read=client.idle_timeout)
    if since == "" and session.server_side:
        channels = channels.add("since", "")  # a browser sends no empty Last-Event-ID
    params = session.read_params(channels, poller=False)
    async with client._http.stream(
        "GET", url, params=params, headers=headers, timeout=timeout
    ) as response:
        if response.status_code != 200:
            await response.aread()
            session.check(response)
        session.learn_client(response)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise session.failure(f"not an event stream: {content_type or 'no content type'}")
        parser = SseParser()
        # Reading the user's channels, the stream's first block names the whole set.
        opening = session.server_side
        async for chunk in response.aiter_raw():
            items = parser.feed(chunk)
            if items:
                await session.established()
            for item in items:
                if isinstance(item, Comment):
                    continue
                if opening:
                    opening = False
                    await session.server_set(item.id)
                if isinstance(item, Checkpoint) or item.type == "client":
                    session.learn_cursor(item.id)
                elif item.type == "message":
                    await session.message(_json(item.data))
                elif item.type == "gap":
                    await session.gap(_json(item.data))
                elif item.type == "subscribed":
                    detail = _json(item.data)
                    await session.subscribed(detail.get("channel"), detail.get("next"))
                elif item.type == "unsubscribed":
                    await session.unsubscribed(_json(item.data).get("channel"))
                elif item.type == "presence":
                    await session.presence_listed(_json(item.data))
                elif item.type in ("join", "leave"):
                    await session.presence_changed(item.type, _json(item.data))
                elif item.type == "status":
                    detail = _json(item.data)
                    session.client._status(BrokerStatus(
                        detail.get("broker") == "ok", str(detail.get("message", "")), "sse"))
                elif item.type == "close":
                    detail = _json(item.data)
                    if detail.get("error") == "token_expired":
                        client._tokens.invalidate()
                    raise session.failure(
                        f"server closed the stream: {detail.get('error')}: {detail.get('message')}"
                    )
            if session.upgrade_due():
                return
    raise session.failure("the server ended the stream")


def _json(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        raise BrokenStream(f"event data is not JSON: {text[:100]!r}") from None
    if not isinstance(value, dict):
        raise BrokenStream(f"event data is not an object: {text[:100]!r}")
    return value
