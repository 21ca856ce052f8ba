"""A request that repeats the previous one on its connection, but for its cursor.

A poller sends the same request again and again: the same path, query and
headers, and only ``since=`` moves on (a long poll) or not even that (a
regular poll that finds nothing new). :class:`RequestShape` is the bytes of
such a request with a hole where the ``since`` value is; :meth:`~RequestShape.match`
tells whether new bytes are the same request with another value there, and
which. The server then answers them as it answered the first, without
parsing, routing and checking the same bytes again (server/repeat.py).

A poller that sends back the ``ETag`` it was given (``If-None-Match: "NEXT"``
with ``since=NEXT``, as tidings' own clients do) changes two places at once.
Made ``tagged``, a shape has a second hole, the inside of that header's quotes,
which must hold the same value as the first.

Bytes only, no I/O. A shape is made only of a whole ``GET`` request with no
body, and matches only bytes that hold exactly one such request: the hole
takes the characters of a cursor (percent-encoded or not) and nothing that
could end a field, a line or the request, so no two requests pipelined in
one read, and no header the first request did not have, can match.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: What a ``since`` value may hold in the hole: the characters of a message id
#: (``EPOCH-SEQ``), of a multi-channel cursor (``a=ID,b=ID``: channel names too, see
#: core/names.py) and of their percent-encoding. Not ``&``, ``+``, ``#``, a space, CR or LF.
CURSOR_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~:,=%")
_CURSOR_BYTES = bytes(sorted(CURSOR_BYTES))
_END = b"\r\n\r\n"
_SINCE = b"since="


class RequestShape(NamedTuple):
    """The bytes of one request around its ``since`` value; see the module docstring.

    A value (a named tuple rather than a frozen dataclass: one is made for every read
    that may repeat, and equal ones are looked up to be kept once, which a tuple hashes
    and compares in C).
    """

    #: Everything up to the ``since`` value (the whole request when it has none).
    before: bytes
    #: Everything after it, from the ``&`` or the space that ends it.
    after: bytes
    #: Whether the request has ``since=`` at all (if not, only the same bytes match).
    has_since: bool
    #: The longest value the hole takes: the rest of the target and the server's
    #: ``max_url_length`` leave this much.
    longest: int
    #: A tagged shape's bytes between its two holes (then :attr:`after` follows the
    #: second); ``None``: one hole.
    between: bytes | None = None

    @classmethod
    def of(cls, data: bytes, max_url_length: int, tagged: bool = False,
           header_room: int | None = None) -> RequestShape | None:
        """The shape of ``data`` if it is exactly one ``GET`` request with no body whose
        target names ``since`` at most once with a value of :data:`CURSOR_BYTES`; else
        ``None`` (such a request is always parsed in full).

        ``tagged``: the request must also have exactly one ``If-None-Match`` line, whose
        value is that ``since`` value in double quotes; it becomes the second hole. The
        header fields grow with the value there: ``header_room`` is how much more they
        may hold under the server's ``max_header_size`` (``None``: no limit).
        """
        if not data.startswith(b"GET ") or data.find(_END) != len(data) - len(_END):
            return None
        line_end = data.index(b"\r\n")
        target_end = data.rfind(b" ", 0, line_end)
        if target_end <= 4 or data[target_end:line_end] != b" HTTP/1.1":
            return None
        target = data[4:target_end]
        at = _since_at(target)
        if at is None:
            return None
        if at < 0:
            return cls(data, b"", False, 0)
        start = 4 + at + len(_SINCE)
        end = data.find(b"&", start, target_end)
        end = target_end if end < 0 else end
        value = data[start:end]
        if not value or value.translate(None, _CURSOR_BYTES):
            return None
        longest = max_url_length - (len(target) - len(value))
        if len(value) > longest:
            return None
        if not tagged:
            return cls(data[:start], data[end:], True, longest)
        names = [found.start() for found in _TAG_NAME.finditer(data, line_end)]
        line = _TAG_LINE.match(data, names[0]) if len(names) == 1 else None
        if line is None or line.group(1) != value:
            return None
        tag = line.start(1)
        if header_room is not None:
            longest = min(longest, len(value) + header_room)
        return cls(data[:start], data[tag + len(value):], True, longest, data[end:tag])

    def match(self, data: bytes) -> bytes | None:
        """The ``since`` value of ``data`` if it is this request with another value (or,
        for a request without ``since``, the same bytes: then ``b""``); else ``None``."""
        before, after, has_since, longest, between = self
        if not has_since:
            return b"" if data == before else None
        start = len(before)
        size = len(data) - start - len(after)
        if between is not None:  # the value twice, with ``between`` between
            size -= len(between)
            if size & 1:
                return None
            size >>= 1
        if not 0 < size <= longest or not data.startswith(before) or (
                not data.endswith(after)):
            return None
        end = start + size
        value = data[start:end]
        if value.translate(None, _CURSOR_BYTES):
            return None
        if between is not None and not data.startswith(between + value, end):
            return None
        return value


def _since_at(target: bytes) -> int | None:
    """Where the ``since`` parameter of ``target`` starts (``-1``: it has none), or ``None``
    if the server's query parser (server/request.py) could read another ``since`` than the
    one seen here: a name percent-encoded or with ``+`` (``%73ince=``), ``since`` twice, or
    a bare ``since`` (the server reads the last one)."""
    query = target.find(b"?")
    if query < 0:
        return -1
    if _ODD_NAME.search(target, query) is not None:
        return None
    found = [at for at in _all(target, _SINCE, query) if at == query + 1 or target[at - 1] == _AMP]
    if not found:
        return -1
    return found[0] if len(found) == 1 else None


#: The start of an ``If-None-Match`` line (any case), and one whose value is ``"VALUE"``
#: (optional blanks around it).
_TAG_NAME = re.compile(rb"\r\nif-none-match:", re.IGNORECASE)
_TAG_LINE = re.compile(rb"\r\nif-none-match:[ \t]*\"([^\"\r\n]*)\"[ \t]*(?=\r\n)",
                       re.IGNORECASE)
#: A query parameter whose name the server's parser decodes (``%``, ``+``), or a bare ``since``.
_ODD_NAME = re.compile(rb"[?&](?:[^=&]*[%+]|since(?:&|$))")
_AMP = ord("&")


def _all(data: bytes, part: bytes, start: int) -> list[int]:
    """Where ``part`` starts in ``data`` after ``start``."""
    found, at = [], data.find(part, start)
    while at >= 0:
        found.append(at)
        at = data.find(part, at + 1)
    return found
