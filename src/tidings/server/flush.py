"""Writes held until the end of the loop's step, then one write per stream.

At full load several messages reach a stream in one step of the event loop
(several publishes read in one poll of the sockets, a Redis read carrying
many). Written one by one, each costs a system call per subscriber; held
and joined, a stream pays one per step. A stream's :meth:`Stream.write`
keeps references to the shared pre-encoded bytes (encode once, write many);
the first stream that holds bytes in a step schedules one ``call_soon``
shared by every stream, never a timer, so a lone message leaves in the next
turn of the loop, before any new input is handled. The output limit still
counts what is held (server/stream.py, docs/topics/backpressure.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

logger = logging.getLogger("tidings.server")


class Held(Protocol):
    """A stream with bytes held for its socket (server/stream.py)."""

    #: What it holds: one bytes object or several, ``None`` once written.
    held_bytes: bytes | list[bytes] | None
    closed: bool

    @property
    def transport(self) -> asyncio.WriteTransport: ...

    def fail(self, error: Exception) -> None:
        """Flushing raised (a bug): close this stream only."""


class Flusher:
    """The streams holding bytes in this step of the loop, flushed together at its end.

    A stream that holds bytes and did not before appends itself to
    :attr:`holding`, calling :meth:`schedule` first if the list is empty (the
    first in the step).
    """

    __slots__ = ("_loop", "holding")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Streams to flush at the end of this step, in the order they first held bytes.
        self.holding: list[Held] = []

    def schedule(self) -> None:
        """Flush at the end of this step (call it when :attr:`holding` is empty)."""
        self._loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        """Write every stream's held bytes (a failure closes that stream only).

        A stream that holds bytes again while this runs (a cut-off's close
        frame) is held for the next step, unless it flushes itself.
        (``Stream.flush``, inlined: one call less per stream per step.)
        """
        streams, self.holding = self.holding, []
        for stream in streams:
            held = stream.held_bytes
            if held is None:
                continue  # flushed already (a backlog is written at once)
            stream.held_bytes = None
            if stream.closed:
                continue
            try:
                stream.transport.write(held if isinstance(held, bytes) else b"".join(held))
            except Exception as exc:
                try:
                    stream.fail(exc)
                except Exception:  # the others must still be written
                    logger.exception("a stream failed to flush, then to close: %r", stream)
