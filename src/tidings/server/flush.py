"""Writes held until the end of the loop's step, then one write per stream.

At full load several messages reach a stream in one step of the event loop
(several publishes read in one poll of the sockets, a Redis read carrying
many). Written one by one, each costs a system call per subscriber; held
and joined, a stream pays one per step. A stream's ``write`` keeps
references to the shared pre-encoded bytes (encode once, write many); the
first stream that holds bytes in a step schedules one ``call_soon`` shared
by every stream, never a timer, and the step's held bytes are written when
it runs, before any new input is handled.

Holding a lone message would delay every reader by the fan-out's pass over
all of them (about 0.3 ms at 1,000 readers). So in a quiet step the held
bytes are written :data:`QUIET_BATCH` streams at a time as the fan-out goes;
a stream given a second write in the step marks it a burst, and from then on
every write is held to the end of the step, and so is every write of the
next step, until a step passes without a burst. The output limit counts
what is held (server/stream.py, docs/topics/backpressure.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

logger = logging.getLogger("tidings.server")

#: In a quiet step, held bytes are written as soon as this many streams hold some:
#: writes in batches cost less than one by one, and the first reader waits only for
#: this many, not for the whole fan-out.
QUIET_BATCH = 64


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
    """The steps of the loop as the streams see them, and what they hold until a step ends.

    A stream that holds bytes appends itself to :attr:`holding`, calls
    :meth:`schedule`, and in a quiet step :meth:`write_held` once
    :data:`QUIET_BATCH` streams hold bytes. It remembers :attr:`step`, so
    that a second write in the same step is seen, and sets :attr:`burst`
    (and :attr:`busy`) then (``Stream.write``).
    """

    __slots__ = ("_loop", "burst", "busy", "holding", "scheduled", "step")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Streams whose held bytes are to be written, in the order they first held them.
        self.holding: list[Held] = []
        #: Which step this is (a stream that wrote remembers it).
        self.step = 0
        #: Hold every write until the end of this step: it has had a burst, or the step
        #: before it had one.
        self.busy = False
        #: A stream has had a second write in this step.
        self.burst = False
        #: :meth:`flush_all` is to run at the end of this step.
        self.scheduled = False

    def schedule(self) -> None:
        """End the step (write what is held) at the end of this turn of the loop."""
        if not self.scheduled:
            self.scheduled = True
            self._loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        """End the step: write what every stream holds; the next step is busy if this one
        had a burst."""
        self.scheduled = False
        self.step += 1
        self.busy, self.burst = self.burst, False
        self.write_held()

    def write_held(self) -> None:
        """Write every holding stream's bytes, joined (a failure closes that stream only).

        A stream that holds bytes again while this runs (a cut-off's close
        frame) is held for later, unless it flushes itself. (``Stream.flush``,
        inlined: one call less per stream.)
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
