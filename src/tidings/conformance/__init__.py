"""A conformance suite any tidings server must pass, run against a URL.

::

    tidings conformance http://127.0.0.1:8000
    tidings conformance http://127.0.0.1:8001 --node http://127.0.0.1:8002
    python -c "import asyncio, tidings.conformance as c; asyncio.run(c.run(URL))"

Each check talks to the server with clients we did not write (httpx,
``websockets``, raw sockets) and, for the delivery guarantees, with the
tidings client too, so that neither can hide a server bug. Checks use
channels named ``conformance:<random>-...`` (the ``conformance`` namespace)
and never collide with each other, with other runs, or with real channels.
docs/conformance.md says what each check proves. Given the URLs of other
nodes of the same deployment (``nodes``, ``--node``), the last check,
``across_nodes``, reads and publishes on all of them as a client behind a
load balancer without sticky sessions would; without them it is skipped.

Modules: ``_context`` (what a check gets, how its failures are labelled),
``_readers`` (one reader per technique), and the checks grouped by theme:
``checks_delivery``, ``checks_gaps``, ``checks_streams``, ``checks_input``,
``checks_bytes``, ``checks_presence``, ``checks_nodes``. The clients we did not write,
driven by hand, are the public test kit :mod:`tidings.testing`; a check fails with its
:class:`~tidings.testing.CheckFailed`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from tidings.conformance import (
    checks_bytes,
    checks_delivery,
    checks_gaps,
    checks_input,
    checks_nodes,
    checks_presence,
    checks_streams,
)
from tidings.conformance._context import Check, Context, NotApplicable, describe
from tidings.errors import UsageError
from tidings.testing import CheckFailed

#: Every check by name, in the order :func:`run` runs them.
CHECKS: dict[str, Check] = {
    "publish_and_receive": checks_delivery.publish_and_receive,
    "exactly_once_in_order": checks_delivery.exactly_once_in_order,
    "resume_from_id": checks_delivery.resume_from_id,
    "switch_technique": checks_delivery.switch_technique,
    "gap_beyond_retention": checks_gaps.gap_beyond_retention,
    "gap_after_epoch_change": checks_gaps.gap_after_epoch_change,
    "multi_channel": checks_delivery.multi_channel,
    "heartbeats": checks_streams.heartbeats,
    "slow_consumer": checks_streams.slow_consumer,
    "bad_input": checks_input.bad_input,
    "etag_304": checks_input.etag_304,
    "cors": checks_input.cors,
    "history_backwards": checks_bytes.history_backwards,
    "websocket_compression": checks_bytes.websocket_compression,
    "deltas": checks_bytes.deltas_for_readers_that_ask,
    "presence": checks_presence.presence,
    # Last: it needs other nodes (``nodes``), and is skipped without them.
    "across_nodes": checks_nodes.across_nodes,
}

#: Seconds one check may take in all, on top of ``heartbeat_timeout``.
CHECK_BUDGET = 180.0


async def run(url: str, *, only: Sequence[str] | None = None, heartbeat_timeout: float = 30.0,
              out: TextIO = sys.stdout, nodes: Sequence[str] = ()) -> bool:
    """Run the checks (``only`` these, by name) against the server at ``url``.

    ``nodes`` are the URLs of other nodes of the same deployment, for
    ``across_nodes``: give each node's own URL, not a load balancer's. Prints
    ``PASS name (1.2 s)``, ``SKIP name: why`` or ``FAIL name: reason`` per
    check, then ``N passed, N failed``; returns True if no check failed.
    Raises :class:`UsageError` for a URL that is not ``http(s)://``, a node
    given twice, or an unknown check name.
    """
    context = Context.create(url, heartbeat_timeout=heartbeat_timeout, nodes=nodes)
    return await run_checks(context, only=only, out=out)


async def run_checks(context: Context, *, only: Sequence[str] | None = None,
                     out: TextIO = sys.stdout) -> bool:
    """:func:`run` with a ready :class:`Context` (tests shorten its ``timeout``).

    Unless the context names them, the techniques to check are those the
    server's ``/healthz`` lists (all four if it says nothing). A check that
    cannot run — it needs only techniques the server turned off, or other
    nodes the context does not name — prints ``SKIP name: reason`` and counts
    as neither passed nor failed.
    """
    names = list(only) if only else list(CHECKS)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise UsageError(f"no check named {', '.join(unknown)}; the checks are "
                         f"{', '.join(CHECKS)}")
    context = await context.discover()
    passed = failed = 0
    for name in names:
        started = time.monotonic()
        outcome, reason = await run_one(context, name)
        if outcome == "PASS":
            passed += 1
            print(f"PASS {name} ({time.monotonic() - started:.1f} s)", file=out, flush=True)
        else:
            failed += outcome == "FAIL"
            print(f"{outcome} {name}: {reason}", file=out, flush=True)
    print(f"{passed} passed, {failed} failed", file=out, flush=True)
    return failed == 0


async def run_one(context: Context, name: str) -> tuple[str, str]:
    """Run check ``name``: ``("PASS", "")``, ``("SKIP", why)`` or ``("FAIL", reason)``.

    The reason is one line; every check is bounded by :data:`CHECK_BUDGET`
    plus the heartbeat timeout.
    """
    budget = CHECK_BUDGET + context.heartbeat_timeout
    try:
        async with asyncio.timeout(budget):
            await CHECKS[name](context)
    except NotApplicable as exc:
        return "SKIP", str(exc)
    except TimeoutError:
        return "FAIL", f"did not finish within {budget:g} s"
    except Exception as exc:
        return "FAIL", " ".join(describe(exc).split())
    return "PASS", ""


__all__ = ["CHECKS", "Check", "CheckFailed", "Context", "NotApplicable", "run", "run_checks",
           "run_one"]
