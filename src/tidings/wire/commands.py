"""The WebSocket command protocol: what a client may send, and the replies.

Client → server, one JSON object per text frame, each with a request id
``req`` (a string or an integer) that the reply echoes::

    {"type": "subscribe",   "req": 1, "channel": "prices", "since": "k2j4h5g6-17",
     "presence": true, "delta": true, "latest": true}
     (optional: who is here, then joins and leaves; deltas; the newest message only)
    {"type": "unsubscribe", "req": 2, "channel": "prices"}
    {"type": "publish",     "req": 3, "channel": "prices", "data": {"AAPL": 187.2},
     "idempotency_key": "9f1c2e"}   (the key is optional)
    {"type": "ping",        "req": 4}
    {"type": "auth",        "req": 5, "token": "<JWT>"}
    {"type": "presence",    "req": 6, "channel": "prices", "count": true}   (count optional)
    {"type": "rpc",         "req": 6, "method": "typing", "data": {"room": "lobby"}}

Server → client: ``ack`` or ``error`` for each command, and ``message``,
``gap``, ``subscribed`` frames. docs/protocol.md is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tidings.core.idempotency import check_idempotency_key
from tidings.core.log import Gap
from tidings.core.message import Message
from tidings.core.names import check_channel
from tidings.errors import BadRequest, CommandError, ProtocolError
from tidings.wire import jsonvalue
from tidings.wire.websocket import MESSAGE_FRAME_KEY, message_frame, text_frame

__all__ = ["CommandError"]  # re-exported: parse raises it

Req = str | int


@dataclass(frozen=True, slots=True)
class Subscribe:
    req: Req
    channel: str
    since: str | None
    #: Whether the client asked for who is here, then joins and leaves.
    presence: bool = False
    #: Whether the client asked for deltas (wire/delta.py) on this channel.
    delta: bool = False
    #: Whether the client asked for the newest message only, then live (``latest``).
    latest: bool = False


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    req: Req
    channel: str


@dataclass(frozen=True, slots=True)
class Publish:
    req: Req
    channel: str
    data: bytes  # compact JSON
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class PingCommand:
    req: Req


@dataclass(frozen=True, slots=True)
class AuthCommand:
    """A fresh token for the connection, replacing the one it has (before it expires)."""

    req: Req
    token: str


@dataclass(frozen=True, slots=True)
class PresenceCommand:
    """Who reads ``channel``; ``count_only``: the numbers without the member list."""

    req: Req
    channel: str
    count_only: bool = False


@dataclass(frozen=True, slots=True)
class Rpc:
    """A call to the application's ``on_rpc`` hook; the ``ack`` carries its ``result``."""

    req: Req
    method: str
    data: Any = None


#: The longest ``method`` name of an ``rpc`` command.
MAX_METHOD_LENGTH = 128

Command = (Subscribe | Unsubscribe | Publish | PingCommand | AuthCommand | PresenceCommand
           | Rpc)


def parse(text: str) -> Command:
    """Parse one command; raise :class:`CommandError` if it is not valid."""
    req: Req | None = None
    try:
        value = jsonvalue.decode(text, "command")
        if not isinstance(value, dict):
            raise BadRequest("a command is a JSON object", code="invalid_command")
        raw_req = value.get("req")
        if isinstance(raw_req, str | int) and not isinstance(raw_req, bool):
            req = raw_req
        else:
            raise BadRequest("command needs a request id 'req' (string or integer)",
                             code="invalid_command")
        kind = value.get("type")
        if kind == "ping":
            return PingCommand(req)
        if kind == "auth":
            token = value.get("token")
            if not isinstance(token, str) or not token:
                raise BadRequest("auth needs a 'token' string", code="invalid_command")
            return AuthCommand(req, token)
        if kind == "rpc":
            method = value.get("method")
            if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LENGTH:
                raise BadRequest(f"rpc needs a 'method' string of 1 to {MAX_METHOD_LENGTH} "
                                 "characters", code="invalid_command")
            return Rpc(req, method, value.get("data"))
        if kind not in ("subscribe", "unsubscribe", "publish", "presence"):
            raise BadRequest(f"unknown command type {kind!r}", code="unknown_command")
        channel = _channel(value)
        if kind == "presence":
            count = value.get("count", False)
            if not isinstance(count, bool):
                raise BadRequest("'count' must be true or false", code="invalid_command")
            return PresenceCommand(req, channel, count)
        if kind == "subscribe":
            since = value.get("since")
            if since is not None and not isinstance(since, str):
                raise BadRequest("'since' must be a string", code="invalid_command")
            flags = []
            for flag in ("presence", "delta", "latest"):
                flags.append(value.get(flag, False))
                if not isinstance(flags[-1], bool):
                    raise BadRequest(f"'{flag}' must be true or false", code="invalid_command")
            return Subscribe(req, channel, since, *flags)
        if kind == "unsubscribe":
            return Unsubscribe(req, channel)
        if "data" not in value:
            raise BadRequest("publish needs 'data'", code="invalid_command")
        key = value.get("idempotency_key")
        if key is not None:
            if not isinstance(key, str):
                raise BadRequest("'idempotency_key' must be a string",
                                 code="invalid_idempotency_key")
            key = check_idempotency_key(key)
        return Publish(req, channel, jsonvalue.encode(value["data"]), key)
    except ProtocolError as exc:
        raise CommandError(req, exc) from None


def _channel(value: dict[str, Any]) -> str:
    channel = value.get("channel")
    if not isinstance(channel, str):
        raise BadRequest("command needs a 'channel' string", code="invalid_command")
    return check_channel(channel)


def ack_frame(req: Req, **fields: Any) -> bytes:
    return text_frame(jsonvalue.encode({"type": "ack", "req": req, **fields}))


def error_frame(req: Req | None, error: ProtocolError) -> bytes:
    return text_frame(jsonvalue.encode({"type": "error", "req": req, **error.to_json()}))


def subscribed_frame(channel: str, cursor: str, client: str) -> bytes:
    """A subscription of the URL began at ``cursor``; ``client`` is the connection's id."""
    return text_frame(jsonvalue.encode({"type": "subscribed", "channel": channel, "next": cursor,
                                        "client": client}))


def unsubscribed_frame(channel: str) -> bytes:
    """The server ended the connection's subscription to ``channel`` (a user's channel)."""
    return text_frame(jsonvalue.encode({"type": "unsubscribed", "channel": channel}))


def status_frame(status: dict[str, object]) -> bytes:
    return text_frame(jsonvalue.encode({"type": "status", **status}))


def gap_frame(gap_json: dict[str, object]) -> bytes:
    return text_frame(jsonvalue.encode({"type": "gap", **gap_json}))


class Frames:
    """How a reader's output is written on a WebSocket (see ``session.reader.Encoder``).

    Every message frame carries its own id, so the cursor is not needed.
    """

    __slots__ = ()

    single = staticmethod(message_frame)
    key = MESSAGE_FRAME_KEY

    def message(self, message: Message, cursor: str | None) -> bytes:
        return message_frame(message)

    def gap(self, gap: Gap, cursor: str) -> bytes:
        return gap_frame(gap.to_json())


FRAMES = Frames()
