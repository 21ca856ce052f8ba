"""Server-Sent Events: the event bytes each message, gap and heartbeat becomes.

See https://html.spec.whatwg.org/multipage/server-sent-events.html. Every
``data:`` is one line of compact JSON, so no event ever needs splitting.
"""

from __future__ import annotations

from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.wire import jsonvalue

#: An SSE comment: keeps proxies from closing an idle stream.
HEARTBEAT = b":\n\n"
#: The key of a message's event in :attr:`Message.encoded`.
_MESSAGE_EVENT = "sse"


def message_event(message: Message) -> bytes:
    """The event of a single-channel stream: ``id:`` is the message id. Encoded once."""
    event = message.encoded.get(_MESSAGE_EVENT)
    if event is None:
        event = message.encoded[_MESSAGE_EVENT] = b"id: %s\ndata: %s\n\n" % (
            message.id.encode(), message.json)
    return event


def message_event_with_cursor(message: Message, cursor: str) -> bytes:
    """The event of a multi-channel stream: ``id:`` carries the whole cursor."""
    return b"id: %s\ndata: %s\n\n" % (cursor.encode(), message.json)


def gap_event(gap: Gap, cursor: str) -> bytes:
    """``event: gap``; its id moves the client's cursor past the gap."""
    return b"event: gap\nid: %s\ndata: %s\n\n" % (cursor.encode(), jsonvalue.encode(gap.to_json()))


def opening(retry_ms: int, cursor: str, client: dict[str, object] | None = None) -> bytes:
    """First bytes of a stream: the reconnection delay, the starting cursor, and who the
    reader is.

    Its ``id:`` sets ``lastEventId``, so an EventSource that reconnects before
    any message arrived still resumes from where it started. With ``client``
    (``{"client": id, "user": sub}``) it is an ``event: client`` whose data
    tells the reader its client id; without, it has no ``data:`` and fires
    nothing in the browser.
    """
    if client is None:
        return b"retry: %d\nid: %s\n\n" % (retry_ms, cursor.encode())
    return b"retry: %d\nevent: client\nid: %s\ndata: %s\n\n" % (
        retry_ms, cursor.encode(), jsonvalue.encode(client))


def status_event(status: dict[str, object]) -> bytes:
    """``event: status``: news about the server (its broker), not a message; no ``id:``."""
    return b"event: status\ndata: %s\n\n" % jsonvalue.encode(status)


def subscribed_event(channel: str, begin: str, cursor: str) -> bytes:
    """``event: subscribed``: the server added ``channel``, read from ``begin``; the ``id:``
    is the stream's cursor with it, so a reconnection resumes it exactly."""
    return b"event: subscribed\nid: %s\ndata: %s\n\n" % (
        cursor.encode(), jsonvalue.encode({"channel": channel, "next": begin}))


def unsubscribed_event(channel: str, cursor: str) -> bytes:
    """``event: unsubscribed``: the server removed ``channel``; the ``id:`` no longer names it."""
    return b"event: unsubscribed\nid: %s\ndata: %s\n\n" % (
        cursor.encode(), jsonvalue.encode({"channel": channel}))


def closing(code: str, reason: str) -> bytes:
    """``event: close`` sent before the server ends a stream on purpose."""
    return b"event: close\ndata: %s\n\n" % jsonvalue.encode({"error": code, "message": reason})


class Events:
    """How a reader's output is written on an event stream (see ``session.reader.Encoder``).

    ``cursor`` is ``None`` on a single-channel stream, whose ``id:`` is the
    message id (encoded once per message); a multi-channel stream's ``id:``
    carries its whole cursor, built per stream.
    """

    __slots__ = ()

    single = staticmethod(message_event)
    key = _MESSAGE_EVENT

    def message(self, message: Message, cursor: str | None) -> bytes:
        if cursor is None:
            return message_event(message)
        return message_event_with_cursor(message, cursor)

    def gap(self, gap: Gap, cursor: str) -> bytes:
        return gap_event(gap, cursor)


EVENTS = Events()
