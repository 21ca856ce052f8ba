"""What a subscription yields, and the status events it reports.

A subscription yields two kinds of items, told apart with ``isinstance`` or
``match``:

* :class:`Message`: one published message, delivered once and in order;
* :class:`Gap`: messages of a channel that can no longer be delivered (they
  passed the server's retention, or the server lost the log they were in).
  Reading goes on after it; pass ``on_gap="raise"`` to get
  :class:`tidings.MissedMessages` instead.

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
    "Message",
    "StatusEvent",
    "TransportChanged",
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
