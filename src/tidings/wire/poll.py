"""Bodies of poll and long-poll answers: ``{"messages": [...], "next": CURSOR}``.

Each message's JSON object was encoded once when it was published; a body
only joins those bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidings.core.log import BackRead, Gap
from tidings.core.message import Message
from tidings.wire import jsonvalue
from tidings.wire.delta import page_jsons as delta_page


def body(messages: Sequence[Message], cursor: str, gaps: Sequence[Gap], more: bool,
         delta: bool = False) -> bytes:
    """With ``delta`` (``?delta=1``), messages that follow their channel's previous message
    in the page go as deltas (wire/delta.py).

    Encoded once, written many: the readers of a channel that are behind by the same
    messages (a thousand long polls answered after one publish) ask for the same page
    one after the other, so the last page of one channel is kept (see :func:`_page`).
    """
    if messages and not gaps and not delta and "=" not in cursor:
        return _page(messages, cursor, more)
    return _body(messages, cursor, gaps, more, delta)


#: The last page of one channel: (first message, last message, cursor, more, body).
_last_page: tuple[object, object, str, bool, bytes] = (None, None, "", False, b"")


def _page(messages: Sequence[Message], cursor: str, more: bool) -> bytes:
    """The body of a page of one channel without gaps. Its messages follow each other in
    one log, so its first and last message (and ``more``) say which page it is."""
    global _last_page
    first, last = messages[0], messages[-1]
    if len(messages) == 1 and cursor == first.id and not more:
        return tail_body(first)  # what a waiter at the end of the channel gets
    was_first, was_last, was_cursor, was_more, data = _last_page
    if first is was_first and last is was_last and more is was_more and cursor == was_cursor:
        return data
    data = _body(messages, cursor, (), more, False)
    # One tuple, replaced whole (as in wire/http.py).
    _last_page = (first, last, cursor, more, data)
    return data


def _body(messages: Sequence[Message], cursor: str, gaps: Sequence[Gap], more: bool,
          delta: bool) -> bytes:
    jsons = delta_page(messages) if delta else [m.json for m in messages]
    parts = [b'{"messages":[', b",".join(jsons), b'],"next":"',
             cursor.encode(), b'"']
    if gaps:
        parts.append(b',"gap":true,"gaps":')
        parts.append(jsonvalue.encode([gap.to_json() for gap in gaps]))
    if more:
        parts.append(b',"more":true')
    parts.append(b"}")
    return b"".join(parts)


def back_body(read: BackRead) -> bytes:
    """The body of a read backwards: a poll answer whose messages run newest first.

    ``next`` is the page's top (a forward read from it goes on after the
    page's newest message); with ``"more": true``, ``before`` is the id to ask
    the next page back with (the page's oldest message).
    """
    text = body(read.messages, str(read.top), (read.gap,) if read.gap else (), read.more)
    if read.more:
        text = text[:-1] + b',"before":"%s"}' % read.messages[-1].id.encode()
    return text


def etag(cursor: str) -> str:
    """The entity tag of an answer that ends at ``cursor`` with no gap."""
    return f'"{cursor}"'


#: The key of a message's long-poll body in :attr:`Message.encoded`.
_TAIL_BODY = "longpoll"


def tail_body(message: Message) -> bytes:
    """The body answering a long poll that waited at the end of one channel; encoded once."""
    data = message.encoded.get(_TAIL_BODY)
    if data is None:
        data = message.encoded[_TAIL_BODY] = _body((message,), message.id, (), False, False)
    return data


class Answers:
    """How a parked long poll's reader writes its answer body (see ``session.reader.Encoder``).

    ``cursor`` is ``None`` when the poll reads one channel: the body is then
    the same for every waiter at the end of the channel, encoded once.
    """

    __slots__ = ()

    single = staticmethod(tail_body)
    key = _TAIL_BODY

    def message(self, message: Message, cursor: str | None) -> bytes:
        if cursor is None:
            return tail_body(message)
        return body((message,), cursor, (), False)

    def gap(self, gap: Gap, cursor: str) -> bytes:
        return body((), cursor, (gap,), False)


ANSWERS = Answers()
