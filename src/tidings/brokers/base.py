"""The interface between the server and the store of channel logs."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from tidings.core.cursor import Position, Start
from tidings.core.fanout import Hub
from tidings.core.log import BackRead, Read
from tidings.core.message import Message
from tidings.core.presence import Presence, PresencePolicy


class Replayed(Message):
    """The message a publish answers when its idempotency key was used already.

    Nothing was stored or fanned out; this is the first publish's message.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class UserChannelChange:
    """A channel added to or removed from a user's server-side set (server/subscriptions.py).

    ``start`` is where reading the channel begins for that user (the end of its
    log when it was added), ``None`` when it was removed.
    """

    user: str
    channel: str
    start: Position | None


#: What :meth:`Broker.add_user_channel` did: ``added``; ``present`` (it was there already,
#: with its first start); ``full`` (the user has ``limit`` channels: nothing changed).
Added = Literal["added", "present", "full"]


class Broker(abc.ABC):
    """Keeps channel logs and tells the local :class:`Hub` about new messages.

    Contract, checked for every broker by ``tests/brokers/``:

    * :meth:`publish` returns only once the message is in the log (raising
      :class:`~tidings.errors.BrokerError` if it could not be stored). Every
      subscriber registered on :attr:`hub` sees each message once, in log
      order; with a shared store, messages published elsewhere arrive a
      moment later.
    * :meth:`read` from any cursor returns what is retained after it, with a
      gap when the cursor is older than the retained window or of another epoch.
    * Reads are synchronous so that a read followed by :meth:`Hub.subscribe`,
      with no ``await`` in between, misses nothing and repeats nothing. A
      broker whose logs live elsewhere keeps a local replica of the channels
      in use: :meth:`ready` says whether :meth:`read` can answer ``starts``
      now, and otherwise ``await prepare(starts)`` makes it so (or raises
      :class:`~tidings.errors.BrokerError`).
    * :meth:`read_back` answers the same retained messages newest first,
      under the same readiness rule (``ready`` for the ``before`` position).
    * A publish with an ``idempotency_key`` that was used on the channel
      within its window (``Retention.idempotency_window``) stores nothing: it
      returns the first message as a :class:`Replayed` if the body is the
      same, and raises :class:`~tidings.errors.IdempotencyConflict` if not.
      With a shared store this holds across nodes and restarts of nodes, and
      it is checked in the same atomic step as the append. A key whose
      message belongs to an earlier epoch than the log's is forgotten: the
      publish stores the message anew.
    * If the log of a channel loses messages under live subscribers (a shared
      store emptied or unreachable for too long), :meth:`Hub.skip` tells them.
    * Each user has a set of server-side channels, each with the position its
      reading starts at (:meth:`add_user_channel`, :meth:`remove_user_channel`,
      :meth:`user_channels`). With a shared store the set is shared by every
      node, and every node (this one too) that has read a set
      (:meth:`user_channels`) is told, from before that read, of each change
      that changed something through :attr:`on_user_channel`, in order;
      :attr:`on_user_channels_lost` is called when changes may have been missed
      (a link to the store was down): the server reads the sets it uses again.
    """

    hub: Hub
    #: Called with ``True``/``False`` and an explanation when the store becomes
    #: reachable or unreachable (the server tells its streams).
    on_status: Callable[[bool, str], None] | None = None
    #: Called on every node with each change of a user's server-side channels.
    on_user_channel: Callable[[UserChannelChange], None] | None = None
    #: Called when changes of users' channels may have been missed (no argument).
    on_user_channels_lost: Callable[[], None] | None = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to what the broker needs; called once by the server before it listens."""

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes, *,
                      idempotency_key: str | None = None) -> Message:
        """Append ``data`` (compact JSON) to ``channel``; fan it out; return it.

        With an ``idempotency_key`` (checked by the caller with
        :func:`~tidings.core.idempotency.check_idempotency_key`) already used
        within the window, return the first message as a :class:`Replayed`
        instead: the caller answers it as a replay (``200``, not ``201``).
        """

    def ready(self, starts: Mapping[str, Start]) -> bool:
        """Whether :meth:`read` can answer each channel's start without waiting."""
        return True

    async def prepare(self, starts: Mapping[str, Start]) -> None:  # noqa: B027 - optional
        """Make :meth:`ready` true for ``starts``; raise ``BrokerError`` if the store is away."""

    @abc.abstractmethod
    def read(self, channel: str, start: Start, limit: int) -> Read:
        """Read up to ``limit`` messages of ``channel`` after ``start``."""

    def same_read(self, channel: str, start: Start, limit: int, found: Read) -> bool:
        """Whether the broker is :meth:`ready` for ``channel`` from ``start`` and
        :meth:`read` would give ``found`` itself, a read it gave before that found nothing
        new (a log shares its read at the end until its next message): a poll that finds
        nothing again is answered as before, with no other question asked. A broker may
        say ``False`` whenever it cannot tell cheaply (the caller then asks :meth:`ready`
        and reads)."""
        return self.ready({channel: start}) and self.read(channel, start, limit) is found

    @abc.abstractmethod
    def read_back(self, channel: str, before: Start, since: Start, limit: int) -> BackRead:
        """Read up to ``limit`` messages of ``channel`` older than ``before``, newest first.

        See :meth:`tidings.core.log.ChannelLog.read_back` for ``before`` and
        ``since``; like :meth:`read`, it answers at once once :meth:`ready`.
        """

    @abc.abstractmethod
    def maintain(self) -> None:
        """Apply retention by age and forget idle logs; call about once a second."""

    @abc.abstractmethod
    async def user_channels(self, user: str) -> dict[str, Position]:
        """The server-side channels of ``user``, each with where its reading starts."""

    @abc.abstractmethod
    async def add_user_channel(self, user: str, channel: str, start: Position,
                               limit: int) -> Added:
        """Add ``channel`` to ``user``'s set, read from ``start``, unless the set holds
        ``limit`` channels; tell every node (:attr:`on_user_channel`) if it was added."""

    @abc.abstractmethod
    async def remove_user_channel(self, user: str, channel: str) -> bool:
        """Remove ``channel`` from ``user``'s set; say whether it was there (and then tell
        every node)."""

    def presence(self, policy: Callable[[str], PresencePolicy]) -> Presence:
        """The table of who reads which channel, made once by the server (``policy``:
        each channel's presence setting).

        The server tells it of this node's readers (``hold``, ``release``,
        ``touch``, ``expire``) and reads the members and their joins and
        leaves from it (``members``, ``count``, ``watch``, ``drain``). Here,
        one node's table is the whole truth. A broker shared by several nodes
        answers with a table that also keeps every node's members in the
        shared store, and :meth:`ready` is false until the members of the
        channels read are copied here (``prepare`` copies them).
        """
        return Presence()

    def health(self) -> dict[str, object]:
        """What ``/healthz`` shows under ``broker``."""
        return {"kind": type(self).__name__}

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the broker holds."""
