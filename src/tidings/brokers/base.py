"""The interface between the server and the store of channel logs."""

from __future__ import annotations

import abc

from tidings.core.cursor import Start
from tidings.core.fanout import Hub
from tidings.core.log import Read
from tidings.core.message import Message


class Broker(abc.ABC):
    """Keeps channel logs and tells the local :class:`Hub` about new messages.

    Contract, checked by ``tests/brokers/``:

    * :meth:`publish` returns only once the message is in the log; every
      subscriber registered on :attr:`hub` before it returned sees it, in
      log order.
    * :meth:`read` from any cursor returns what is retained after it, with a
      gap when the cursor is older than the retained window or of another epoch.
    * :meth:`read` followed by :meth:`Hub.subscribe` with no ``await`` in
      between misses nothing and repeats nothing.
    """

    hub: Hub

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes) -> Message:
        """Append ``data`` (compact JSON) to ``channel``; fan it out; return it."""

    @abc.abstractmethod
    def read(self, channel: str, start: Start, limit: int) -> Read:
        """Read up to ``limit`` messages of ``channel`` after ``start``."""

    @abc.abstractmethod
    def maintain(self) -> None:
        """Apply retention by age and forget idle empty logs; call about once a second."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the broker holds."""
