"""The bytes of presence: join and leave events and member lists, on each technique.

Each join or leave is encoded once per format (``Encoded``) and the same
bytes are written to every watcher of its channel, as messages are.
"""

from __future__ import annotations

from collections.abc import Mapping

from tidings.core.presence import Change, Logged
from tidings.wire import jsonvalue
from tidings.wire.websocket import text_frame


class Encoded:
    """One join or leave, as a WebSocket frame and as an SSE event (each built once)."""

    __slots__ = ("client", "frame", "sse")

    def __init__(self, change: Change | None, frame: bytes = b"", sse: bytes = b"") -> None:
        if change is None:  # a member list (:meth:`members`)
            self.client, self.frame, self.sse = "", frame, sse
            return
        self.client = change.member.client
        data = jsonvalue.encode(change.to_json())
        self.frame = text_frame(data)
        self.sse = b"event: %s\ndata: %s\n\n" % (change.kind.encode(), data)

    @classmethod
    def members(cls, answer: Mapping[str, object]) -> Encoded:
        """A member list told instead of a batch too large to tell one by one."""
        return cls(None, members_frame(answer), members_event(answer))


def members_frame(answer: Mapping[str, object]) -> bytes:
    """``{"type": "presence", "channel": ..., "members": [...]}``: who is here, at the start."""
    return text_frame(jsonvalue.encode({"type": "presence", **answer}))


def members_event(answer: Mapping[str, object]) -> bytes:
    """``event: presence``: who is here, at the start of a stream."""
    return b"event: presence\ndata: %s\n\n" % jsonvalue.encode(answer)


def logged_json(logged: Logged) -> dict[str, object]:
    """A join or leave in a poll answer, with the message it follows (``after``)."""
    return {**logged.change.to_json(),
            "after": None if logged.after is None else str(logged.after)}


def with_fields(body: bytes, fields: Mapping[str, object]) -> bytes:
    """A poll answer ``body`` (a JSON object) with ``fields`` added at its end."""
    if not fields:
        return body
    extra = jsonvalue.encode(dict(fields))
    return body[:-1] + b"," + extra[1:]
