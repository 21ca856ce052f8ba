"""History backwards: a page of a channel's retained messages, newest first.

``Client.history`` asks ``GET /channels/{channel}?order=desc`` (or
``?before=ID`` for the next page back) and hands back a :class:`History`;
:func:`parse_history` is its I/O-free half, turning the server's answer into
:class:`~tidings.client.events.Message` and :class:`~tidings.client.events.Gap`
objects. docs/protocol.md ("History backwards") has the wire format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidings.client.events import Gap, Message
from tidings.errors import ConnectionFailed

__all__ = ["History", "parse_history"]


@dataclass(frozen=True, slots=True)
class History:
    """One page of ``channel``'s retained messages, ``messages`` newest first.

    ``next`` is where a subscription goes on after the page's newest message:
    ``client.subscribe(channel, since=page.next)`` after the last page of a
    chat misses nothing and repeats nothing. ``before`` is the id to ask the
    next page back with (``client.history(channel, before=page.before)``), or
    ``None`` when the page reached the oldest retained message. ``gaps`` say
    which messages of the range asked for (after ``since``) the server no
    longer has; a page asked without ``since`` never has one, and the oldest
    message's id tells whether older ones existed (its sequence number is
    above 1).
    """

    channel: str
    messages: tuple[Message, ...]
    next: str
    before: str | None
    gaps: tuple[Gap, ...] = ()

    @property
    def more(self) -> bool:
        """Whether older messages are retained below this page."""
        return self.before is not None


def parse_history(channel: str, answer: object) -> History:
    """The :class:`History` of a read-backwards answer; :class:`ConnectionFailed` if malformed."""
    try:
        if not isinstance(answer, Mapping):
            raise TypeError("not an object")
        messages = tuple(_message(channel, item) for item in answer["messages"])
        cursor, before = answer["next"], answer.get("before")
        if not isinstance(cursor, str) or not (before is None or isinstance(before, str)):
            raise TypeError("next and before are ids")
        gaps = tuple(_gap(item) for item in answer.get("gaps", ()))
    except (KeyError, TypeError) as exc:
        raise ConnectionFailed(f"the server's history answer is malformed ({exc}): "
                               f"{str(answer)[:100]}") from None
    return History(channel, messages, cursor, before, gaps)


def _message(channel: str, item: Mapping[str, Any]) -> Message:
    id, time = item["id"], item["time"]
    if item["channel"] != channel or not isinstance(id, str) or not isinstance(time, int):
        raise TypeError(f"not a message of {channel}")
    return Message(channel, id, item["data"], time)


def _gap(item: Mapping[str, Any]) -> Gap:
    missed = item.get("missed")
    return Gap(str(item["channel"]), str(item["from"]), str(item["to"]), str(item["reason"]),
               missed if isinstance(missed, int) else None)
