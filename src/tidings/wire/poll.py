"""Bodies of poll and long-poll answers: ``{"messages": [...], "next": CURSOR}``.

Each message's JSON object was encoded once when it was published; a body
only joins those bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.wire import jsonvalue


def body(messages: Sequence[Message], cursor: str, gaps: Sequence[Gap], more: bool) -> bytes:
    parts = [b'{"messages":[', b",".join(m.json for m in messages), b'],"next":"',
             cursor.encode(), b'"']
    if gaps:
        parts.append(b',"gap":true,"gaps":')
        parts.append(jsonvalue.encode([gap.to_json() for gap in gaps]))
    if more:
        parts.append(b',"more":true')
    parts.append(b"}")
    return b"".join(parts)


def etag(cursor: str) -> str:
    """The entity tag of an answer that ends at ``cursor`` with no gap."""
    return f'"{cursor}"'
