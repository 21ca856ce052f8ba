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
from typing import Protocol


class Held(Protocol):
    """A stream with bytes held for its socket (server/stream.py)."""

    def flush(self) -> None:
        """Hand what is held to the socket now."""

    def fail(self, error: Exception) -> None:
        """Flushing raised (a bug): close this stream only."""


class Flusher:
    """The streams holding bytes in this step of the loop, flushed together at its end.

    :meth:`hold` registers a stream the first time it holds bytes in a step;
    the first registration schedules :meth:`flush_all`.
    """

    __slots__ = ("_loop", "held")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Streams to flush at the end of this step, in the order they first held bytes.
        self.held: list[Held] = []

    def hold(self, stream: Held) -> None:
        """``stream`` holds bytes now (it did not before): flush it at the end of the step."""
        held = self.held
        if not held:
            self._loop.call_soon(self.flush_all)
        held.append(stream)

    def flush_all(self) -> None:
        """Write every stream's held bytes (a failure closes that stream only).

        A stream that writes again while flushing (a cut-off's close frame, a
        backlog pulled as the socket drains) is held for the next step, unless
        it flushes itself.
        """
        streams, self.held = self.held, []
        for stream in streams:
            try:
                stream.flush()
            except Exception as exc:
                stream.fail(exc)
