"""An incremental Server-Sent Events parser, without I/O.

Feed it the bytes of a ``text/event-stream`` as they arrive; it returns the
events (and comments) completed so far. It follows the parsing rules of the
HTML standard (https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end with CRLF, LF or CR (even split across chunks); a leading BOM is
skipped; one space after the colon is dropped; ``data:`` lines join with
``\\n``; an event with no data is not dispatched; an ``id`` containing NUL is
ignored; ``retry`` is taken only when it is all digits.

Unlike a browser, the parser also returns comments (:class:`Comment`: on a
tidings stream they are heartbeats, proof that an idle connection is alive)
and blocks that set an ``id:`` without data (:class:`Checkpoint`: tidings
opens every stream with one, naming the position reading starts from).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The longest line accepted: a tidings event is one line of JSON of at most
#: max_message_size (64 KiB by default) plus the envelope.
MAX_LINE = 16 * 1024 * 1024


class SseError(ValueError):
    """The stream cannot be an event stream (a line over the limit)."""


@dataclass(frozen=True, slots=True)
class Event:
    """A dispatched event: ``type`` (default ``"message"``), ``data``, and the last event id."""

    type: str
    data: str
    id: str


@dataclass(frozen=True, slots=True)
class Comment:
    """A line starting with ``:`` (a heartbeat on tidings streams)."""

    text: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A block with an ``id:`` and no data: a browser only sets ``lastEventId``."""

    id: str


Item = Event | Comment | Checkpoint


class SseParser:
    """Turns event-stream bytes into :class:`Event` and :class:`Comment` objects.

    After each :meth:`feed`, :attr:`last_event_id` is the id the stream would
    resume from (it is set by ``id:`` lines even without an event) and
    :attr:`retry` the last reconnection delay the server asked for, in ms.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.last_event_id = ""
        self.retry: int | None = None
        self._buffer = bytearray()
        self._skip_lf = False
        self._first_line = True
        self._type = ""
        self._data: list[str] = []
        self._data_size = 0
        self._id_seen = False

    def feed(self, chunk: bytes) -> list[Item]:
        """Parse ``chunk``; return what it completed. Raises :class:`SseError` past the limits."""
        out: list[Item] = []
        buffer = self._buffer
        buffer += chunk
        pos = 0
        size = len(buffer)
        while pos < size:
            if self._skip_lf:
                self._skip_lf = False
                if buffer[pos] == 0x0A:
                    pos += 1
                    continue
            cr = buffer.find(b"\r", pos)
            lf = buffer.find(b"\n", pos)
            if cr < 0 and lf < 0:
                break
            end = lf if cr < 0 else cr if lf < 0 else min(cr, lf)
            self._line(bytes(buffer[pos:end]), out)
            if buffer[end] == 0x0D:
                self._skip_lf = True
            pos = end + 1
        del buffer[:pos]
        if len(buffer) > self.max_line:
            raise SseError(f"an event-stream line is longer than {self.max_line} bytes")
        return out

    def _line(self, raw: bytes, out: list[Item]) -> None:
        line = raw.decode("utf-8", "replace")
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            out.append(Comment(line[1:].removeprefix(" ")))
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self.max_line:
                raise SseError(f"an event's data is longer than {self.max_line} characters")
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
                self._id_seen = True
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        # Any other field is ignored, as the standard says.

    def _dispatch(self, out: list[Item]) -> None:
        if self._data:
            out.append(Event(self._type or "message", "\n".join(self._data), self.last_event_id))
        elif self._id_seen:
            out.append(Checkpoint(self.last_event_id))
        self._id_seen = False
        self._type = ""
        self._data = []
        self._data_size = 0
