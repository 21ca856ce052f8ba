"""What a subscription yields, and the status events it reports.

A subscription yields two kinds of items, told apart with ``isinstance`` or
``match``:

* :class:`Message`: one published message, delivered once and in order;
* :class:`Gap`: messages of a channel that can no longer be delivered (they
  passed the server's retention, or the server lost the log they were in).
  Reading goes on after it; pass ``on_gap="raise"`` to get
  :class:`tidings.MissedMessages` instead.

With ``presence=True`` it yields presence items too, in order with the messages:

* :class:`Presence`: who is on a channel (when reading starts, after each
  reconnect, and instead of a storm of changes); after a reconnect it comes
  after the :class:`Join` and :class:`Leave` items it differs by, so nothing
  changes silently;
* :class:`Join` and :class:`Leave`: a :class:`Member` came or went, once each
  (duplicates the server may send are dropped: they are set operations).

A subscription to the user's channels (:meth:`tidings.Client.subscribe_server_side`)
yields :class:`Subscribed` and :class:`Unsubscribed` too: the server started or
stopped reading a channel for the user.

Status events (:class:`Connected`, :class:`Disconnected`,
:class:`TransportChanged`, :class:`BrokerStatus`) are not yielded; they go to the ``on_status``
callback of :func:`tidings.connect`, for logs and progress displays.

All are frozen dataclasses: compare them with ``==``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "BrokerStatus",
    "Connected",
    "Disconnected",
    "Gap",
    "Join",
    "Leave",
    "Member",
    "Message",
    "Presence",
    "StatusEvent",
    "Subscribed",
    "TransportChanged",
    "Unsubscribed",
]


@dataclass(frozen=True, slots=True)
class Message:
    """One message: ``data`` is the published JSON value, decoded.

    ``id`` is the message's place in its channel's log (``EPOCH-SEQ``); pass it
    as ``since=`` to resume right after this message, with any technique.
    ``time`` is when the server accepted it, in Unix milliseconds.
    """

    channel: str
    id: str
    data: Any
    time: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of ``channel`` after ``from_`` and up to ``to`` were lost.

    ``reason`` is ``"expired"`` (dropped by the server's retention) or
    ``"epoch"`` (the log ``from_`` belongs to was lost, e.g. a server restart).
    ``missed`` is how many messages were lost, when the server knows, else
    ``None``. The next message of the channel is the one after ``to``.
    """

    channel: str
    from_: str
    to: str
    reason: str
    missed: int | None


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The server reads ``channel`` for the user from now on, after ``next`` (``None``
    when a poll learnt of it with its first messages): at the first connection for each
    of the user's channels, then for each one the application adds."""

    channel: str
    next: str | None


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """The server stopped reading ``channel`` for the user: nothing more of it comes."""

    channel: str


@dataclass(frozen=True, slots=True)
class Member:
    """A reader of ``channel``: its ``client`` id, the ``user`` (``sub``) and ``info`` of its
    token (``None`` when anonymous), how it joined (``technique``) and when (``since``,
    Unix milliseconds)."""

    channel: str
    client: str
    user: str | None
    info: Any
    technique: str
    since: int


@dataclass(frozen=True, slots=True)
class Join:
    """``member`` arrived on ``channel``."""

    channel: str
    member: Member


@dataclass(frozen=True, slots=True)
class Leave:
    """``member`` left ``channel``."""

    channel: str
    member: Member


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is on ``channel``: ``count`` members (client ids), ``users`` distinct non-null
    users among them; ``members`` oldest first, at most 1000 (``more``: there are more).

    From :meth:`tidings.Client.presence` with ``count_only=True``, ``members`` is empty
    (and ``more`` says whether anyone is there).
    """

    channel: str
    count: int
    users: int
    members: tuple[Member, ...]
    more: bool


@dataclass(frozen=True, slots=True)
class Connected:
    """A subscription is reading ``channels`` with ``transport``."""

    transport: str
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Disconnected:
    """A subscription lost its connection (``reason``); it retries in ``retry_in`` seconds."""

    transport: str
    channels: tuple[str, ...]
    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class TransportChanged:
    """``transport="auto"`` moved a subscription from ``previous`` to ``transport``."""

    previous: str
    transport: str
    channels: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class BrokerStatus:
    """The server's message store (Redis) became unreachable, or is back.

    ``available`` is ``False`` while it is away: the subscription stays
    connected and nothing is lost yet; what is published meanwhile (or a
    :class:`Gap`, if the store lost it) follows once it is back. Only streams
    (``websocket``, ``sse``) are told.
    """

    available: bool
    message: str
    transport: str


StatusEvent = Connected | Disconnected | TransportChanged | BrokerStatus
