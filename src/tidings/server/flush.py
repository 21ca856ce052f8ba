"""Writes held until the end of the loop's step when messages come in bursts.

At full load several messages reach a stream in one step of the event loop
(several publishes read in one poll of the sockets, a Redis read carrying
many). Written one by one, each costs a system call per subscriber; held
and joined, a stream pays one per step. At a low rate there is nothing to
join, and holding would only delay a lone message by the fan-out's pass
over every reader. So the flusher holds writes only while bursts come:

* in a quiet step, a stream's first write goes to its transport at once
  (what a lone message gets, as before); a second write in the same step
  is held, and the step is marked a burst;
* a step that follows a burst holds every write; it stays so while each
  step has a burst, and the first step without one makes the next quiet.

A held write keeps references to the shared pre-encoded bytes (encode once,
write many). One ``call_soon`` per step, shared by every stream, ends the
step and writes what each holds joined; never a timer. The output limit
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
    """The steps of the loop as the streams see them, and what they hold until a step ends.

    A stream asks :attr:`step` and :attr:`busy` to choose between writing at
    once and holding (``Stream.write``); one that holds appends itself to
    :attr:`holding`. Either way it calls :meth:`schedule`, which ends the step
    with :meth:`flush_all` at the end of this turn of the loop.
    """

    __slots__ = ("_loop", "burst", "busy", "holding", "scheduled", "step")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: Streams to flush at the end of this step, in the order they first held bytes.
        self.holding: list[Held] = []
        #: Which step this is: a stream that wrote at once remembers it.
        self.step = 0
        #: Hold every write of this step: the last step that wrote had a burst.
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
        """Write every stream's held bytes (a failure closes that stream only).

        A stream that holds bytes again while this runs (a cut-off's close
        frame) is held for the next step, unless it flushes itself.
        (``Stream.flush``, inlined: one call less per stream per step.)
        """
        self.scheduled = False
        self.step += 1
        self.busy, self.burst = self.burst, False
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
