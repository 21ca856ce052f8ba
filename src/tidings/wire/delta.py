"""Deltas: a message sent as the change from the channel's previous message. No I/O.

A reader that asks (``?delta=1``, ``"delta": true`` in ``subscribe``) gets,
for a message whose previous message in the same channel it was sent on
this same connection (or earlier in the same poll answer), a *delta message*
instead of the whole one::

    {"channel": "stocks", "id": "k2j4h5g6-19", "base": "k2j4h5g6-18",
     "delta": {"tick": [19], "quotes": {"3": {"price": [187.31]}}}, "time": 1795809605301}

``base`` is the id the delta applies to: always the channel's previous
message (same epoch, sequence number one less), so the delta is the same for
every reader and is computed once per message, then cached in
:attr:`Message.encoded` like every other encoding (:func:`delta_json`). A
delta that would not be shorter than the whole message is not sent: the
whole message goes instead.

The patch format ("tidings patch", docs/protocol.md#deltas), chosen by
measurement on the demo feed (docs/benchmarks.md#deltas):

* a string, number, ``true``, ``false`` or ``null``: the new value is that;
* ``[v]`` (an array of one value): the new value is ``v`` (any value);
* ``{...}`` on an object: each key's patch applies to that key's value;
  ``[]`` removes the key; a new key takes its value as a patch of the first
  two kinds;
* ``{...}`` on an array: keys are decimal indices whose patches apply to those
  elements; ``"len": N`` first cuts or extends the array to ``N`` elements
  (new elements take their value likewise).

Unlike a JSON merge patch (RFC 7386), an element of an array is patched in
place, and ``null`` is a value like any other.

Readers get a whole message first after a gap, a resume, a technique switch or
on their first message: :class:`Deltas` (the encoder wrapper a reader that
asked writes with) forgets a channel's last message on every gap and whenever
the driver (re)subscribes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.errors import BadRequest
from tidings.wire import jsonvalue
from tidings.wire.deflate import compress, frame_key
from tidings.wire.websocket import OP_TEXT, raw_frame, text_frame

#: The key of a message's delta object in :attr:`Message.encoded` (``b""``: not worth it).
DELTA_KEY: Final = "delta"
#: The array key giving an array's new length in a patch.
LENGTH: Final = "len"

_MISSING: Final = object()


# the patch format ----------------------------------------------------------------------


def diff(old: Any, new: Any) -> Any:
    """The patch that turns the JSON value ``old`` into ``new``.

    Values compare as JSON does: ``1``, ``1.0`` and ``true`` differ.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        patch: dict[str, Any] = {}
        for key, value in new.items():
            before = old.get(key, _MISSING)
            if before is _MISSING:
                patch[key] = _replace(value)
            elif not same(before, value):
                patch[key] = diff(before, value)
        for key in old:
            if key not in new:
                patch[key] = []
        return patch
    if isinstance(old, list) and isinstance(new, list):
        patch = {}
        if len(old) != len(new):
            patch[LENGTH] = len(new)
        for index, value in enumerate(new):
            if index >= len(old):
                patch[str(index)] = _replace(value)
            elif not same(old[index], value):
                patch[str(index)] = diff(old[index], value)
        return patch
    return _replace(new)


def _replace(value: Any) -> Any:
    """The patch that replaces a value with ``value``: itself, unless it is a container."""
    return [value] if isinstance(value, dict | list) else value


def same(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal as JSON: ``1 == 1.0 == True`` in Python, not here."""
    kind = type(a)
    if kind is not type(b):
        return False
    pairs: Iterable[tuple[Any, Any]]
    if kind is dict:
        if len(a) != len(b):
            return False
        pairs = ((value, b.get(key, _MISSING)) for key, value in a.items())
    elif kind is list:
        if len(a) != len(b):
            return False
        pairs = zip(a, b, strict=True)
    else:
        return bool(a == b)
    for x, y in pairs:  # scalars inline: most of a message is unchanged leaves
        inner = type(x)
        if inner is not type(y):
            return False
        if inner is dict or inner is list:
            if not same(x, y):
                return False
        elif x != y:
            return False
    return True


def apply(base: Any, patch: Any) -> Any:
    """``base`` with ``patch`` applied (a new value; ``base`` is not changed).

    Raises :class:`~tidings.errors.BadRequest` (``invalid_delta``) for a patch
    that does not fit ``base``: the caller must not use the result, and should
    read the message whole (resume from its cursor).
    """
    if isinstance(patch, list):
        if len(patch) != 1:
            raise BadRequest("a replacement is an array of one value", code="invalid_delta")
        return patch[0]
    if not isinstance(patch, dict):
        return patch
    if isinstance(base, dict):
        result = dict(base)
        for key, change in patch.items():
            if isinstance(change, list) and not change:
                if key not in result:
                    raise BadRequest(f"removes the missing key {key!r}", code="invalid_delta")
                del result[key]
            elif key in result:
                result[key] = apply(result[key], change)
            else:
                result[key] = _new(key, change)
        return result
    if isinstance(base, list):
        items = list(base)
        length = patch.get(LENGTH, len(items))
        if type(length) is not int or length < 0:
            raise BadRequest("'len' must be a whole number", code="invalid_delta")
        old_length = len(items)
        if length - old_length > len(patch):  # each new element needs a key of its own
            raise BadRequest("an array grew without values for its new elements",
                             code="invalid_delta")
        del items[length:]
        items.extend([_MISSING] * (length - len(items)))
        for key, change in patch.items():
            if key == LENGTH:
                continue
            if not (key.isascii() and key.isdigit()) or int(key) >= length:
                raise BadRequest(f"no element {key!r} in the array", code="invalid_delta")
            index = int(key)
            if index >= old_length:
                items[index] = _new(key, change)
            else:
                items[index] = apply(items[index], change)
        if any(item is _MISSING for item in items):
            raise BadRequest("an array grew without values for its new elements",
                             code="invalid_delta")
        return items
    raise BadRequest("an object patch applies to an object or an array", code="invalid_delta")


def _new(key: str, change: Any) -> Any:
    """The value of a new key or element: a replacement, not an edit."""
    if isinstance(change, dict) or (isinstance(change, list) and len(change) != 1):
        raise BadRequest(f"the new {key!r} needs a value or [value]", code="invalid_delta")
    return change[0] if isinstance(change, list) else change


# encoded once per message ----------------------------------------------------------------


def follows(message: Message, base: Message | None) -> bool:
    """Whether ``base`` is the channel's message just before ``message``."""
    return (base is not None and base.seq + 1 == message.seq
            and base.position.epoch == message.position.epoch and base.channel == message.channel)


def delta_json(message: Message, base: Message) -> bytes:
    """The delta message object of ``message`` against ``base`` (its channel's previous
    message, see :func:`follows`), or ``b""`` if it would not be shorter than the whole
    message. Computed once per message and cached."""
    data = message.encoded.get(DELTA_KEY)
    if data is None:
        try:
            # Both were validated when published: the plain decoder is enough (and faster).
            patch = jsonvalue.encode(diff(json.loads(base.data), json.loads(message.data)))
        except (RecursionError, BadRequest):
            # Nested about as deeply as a publish may be, deeper than the diff can follow
            # from inside a delivery: sent whole, rather than failing every reader's delivery.
            data = b""
        else:
            data = b'{"channel":"%s","id":"%s","base":"%s","delta":%s,"time":%d}' % (
                message.channel.encode(), message.id.encode(), base.id.encode(), patch,
                message.time)
            if len(data) >= len(message.json):
                data = b""
        message.encoded[DELTA_KEY] = data
    return data


def page_jsons(messages: Iterable[Message]) -> list[bytes]:
    """The message objects of a poll page with deltas: each message whose channel's previous
    message is just before it in the page goes as a delta, the others whole."""
    last: dict[str, Message] = {}
    out = []
    for message in messages:
        base = last.get(message.channel)
        last[message.channel] = message
        data = delta_json(message, base) if base is not None and follows(message, base) else b""
        out.append(data or message.json)
    return out


# per technique ---------------------------------------------------------------------------


class Form(Protocol):
    """How a technique writes a delta message object (``delta_json``)."""

    @property
    def key(self) -> str:
        """Where :meth:`single` caches its bytes in ``Message.encoded``."""
        ...

    def single(self, message: Message, delta: bytes) -> bytes:
        """The bytes of a delta whose id is the cursor; cached in ``message.encoded``."""
        ...

    def message(self, message: Message, delta: bytes, cursor: str) -> bytes:
        """The bytes of a delta on a multi-channel stream whose cursor is ``cursor``."""
        ...


class SseForm:
    """A delta as the ``data:`` of an ordinary message event."""

    __slots__ = ()
    key = "sse-delta"

    def single(self, message: Message, delta: bytes) -> bytes:
        event = message.encoded.get(self.key)
        if event is None:
            event = message.encoded[self.key] = b"id: %s\ndata: %s\n\n" % (
                message.id.encode(), delta)
        return event

    def message(self, message: Message, delta: bytes, cursor: str) -> bytes:
        return b"id: %s\ndata: %s\n\n" % (cursor.encode(), delta)


class FrameForm:
    """A delta as a ``{"type": "message", ...}`` text frame; compressed once per window
    when at least ``threshold`` bytes long and the connection negotiated compression."""

    __slots__ = ("key", "threshold", "window_bits")

    def __init__(self, window_bits: int = 0, threshold: int = 0) -> None:
        self.window_bits = window_bits
        self.threshold = threshold
        self.key = (frame_key(window_bits) + f"-{threshold}-delta") if window_bits else (
            "websocket-delta")

    def single(self, message: Message, delta: bytes) -> bytes:
        data = message.encoded.get(self.key)
        if data is None:
            payload = b'{"type":"message",' + delta[1:]
            data = text_frame(payload)
            if self.window_bits and len(payload) >= self.threshold:
                compressed = compress(payload, self.window_bits)
                if len(compressed) < len(payload):
                    data = raw_frame(OP_TEXT, compressed, rsv1=True)
            message.encoded[self.key] = data
        return data

    def message(self, message: Message, delta: bytes, cursor: str) -> bytes:
        return self.single(message, delta)


SSE: Final = SseForm()
_FRAME_FORMS: dict[tuple[int, int], FrameForm] = {}


def frame_form(window_bits: int, threshold: int) -> FrameForm:
    """The shared form of WebSocket deltas for a compression window (0: none) and threshold."""
    form = _FRAME_FORMS.get((window_bits, threshold))
    if form is None:
        form = _FRAME_FORMS[window_bits, threshold] = FrameForm(window_bits, threshold)
    return form


class Inner(Protocol):
    """The encoder a reader would use without deltas (``session.reader.Encoder``)."""

    @property
    def single(self) -> Callable[[Message], bytes]: ...

    def message(self, message: Message, cursor: str | None) -> bytes: ...

    def gap(self, gap: Gap, cursor: str) -> bytes: ...


class Deltas:
    """The encoder of a reader that asked for deltas: wraps its technique's encoder.

    One per reader (it remembers the last message it wrote on each channel,
    a reference, not a copy). Channels read with deltas are those passed to
    :meth:`want` (``None`` in ``channels``: all of them). A message follows as
    a delta only if the last message written on its channel is its previous
    one; a gap, :meth:`want` and :meth:`forget` (the driver calls them when it
    subscribes or unsubscribes a channel) make the next one whole.
    """

    __slots__ = ("_form", "_inner", "_last", "channels")

    #: Never a key of ``Message.encoded``: the reader always asks :meth:`single`.
    key = "\x00delta"

    def __init__(self, inner: Inner, form: Form, channels: Iterable[str] | None = None) -> None:
        self._inner = inner
        self._form = form
        self._last: dict[str, Message] = {}
        self.channels: set[str] | None = None if channels is None else set(channels)

    def want(self, channel: str, delta: bool = True) -> None:
        """(Re)subscribing ``channel``: its next message is whole; deltas after it if asked."""
        self._last.pop(channel, None)
        if self.channels is not None:
            if delta:
                self.channels.add(channel)
            else:
                self.channels.discard(channel)

    def forget(self, channel: str) -> None:
        """``channel`` is no longer read: its next message, if read again, is whole."""
        self._last.pop(channel, None)

    def _delta(self, message: Message) -> bytes:
        channel = message.channel
        if self.channels is not None and channel not in self.channels:
            return b""
        base = self._last.get(channel)
        self._last[channel] = message
        if base is None or not follows(message, base):
            return b""
        return delta_json(message, base)

    def single(self, message: Message) -> bytes:
        # The fan-out calls this once per reader: the usual case (the next message of a
        # one-channel reader, its frame already made by another reader) in a few lookups.
        last, channel = self._last, message.channel
        base = last.get(channel)
        if base is not None and self.channels is None:
            last[channel] = message
            at, after = base.position, message.position
            if at.seq + 1 == after.seq and at.epoch == after.epoch:
                encoded = message.encoded
                data = encoded.get(self._form.key)
                if data is not None:
                    return data
                delta = encoded.get(DELTA_KEY)
                if delta is None:
                    delta = delta_json(message, base)
                if delta:
                    return self._form.single(message, delta)
            return self._inner.single(message)
        delta = self._delta(message)
        if delta:
            return self._form.single(message, delta)
        return self._inner.single(message)

    def message(self, message: Message, cursor: str | None) -> bytes:
        delta = self._delta(message)
        if not delta:
            return self._inner.message(message, cursor)
        if cursor is None:
            return self._form.single(message, delta)
        return self._form.message(message, delta, cursor)

    def gap(self, gap: Gap, cursor: str) -> bytes:
        self._last.pop(gap.channel, None)
        return self._inner.gap(gap, cursor)


def wanted(text: str | None) -> bool:
    """``?delta=``: ``1`` asks for deltas, ``0`` or nothing does not; else ``400 invalid_delta``."""
    if text is None or text == "0":
        return False
    if text != "1":
        raise BadRequest(f"delta must be 1 or 0, not {text[:20]!r}", code="invalid_delta")
    return True
