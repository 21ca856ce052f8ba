"""Gaps: a cursor the log can no longer honour gets an explicit gap, then reading goes on.

Neither check knows the server's settings: the retention check publishes
until the first message falls out of the window (at most
:data:`MAX_MESSAGES`), and the epoch check makes up a well-formed id of an
epoch the channel does not have.
"""

from __future__ import annotations

import asyncio

import httpx

from tidings.conformance._context import NAMESPACE, Context, labelled
from tidings.conformance._readers import Item, open_reader, read_from, read_items
from tidings.testing import (
    CheckFailed,
    epoch_of,
    publish,
    publish_many,
    require_equal,
    seq_of,
)

#: The most messages the retention check publishes on one channel.
MAX_MESSAGES = 5000
#: Messages published at once (concurrently) between two looks at the window.
BATCH = 50
#: HTTP connections publishing them.
CONNECTIONS = 10


async def gap_beyond_retention(ctx: Context) -> None:
    """Once the first message is dropped by retention, its id gets an ``expired`` gap.

    The gap names the exact number of missed messages; the next message is
    the oldest one retained.
    """
    channel = ctx.channel("retention")
    async with ctx.http(limits=httpx.Limits(max_connections=CONNECTIONS)) as http:
        first = await publish(http, channel, 0)
        published = 1
        async with ctx.step(f"publishing up to {MAX_MESSAGES} messages",
                            within=max(60.0, 6 * ctx.timeout)):
            while True:
                (look,) = await read_from(ctx, channel, "0", 1)
                require_equal(look.kind, "message", "the first item from since=0 (never a gap)")
                oldest = look.id
                # A reader that saw the first message misses the second once it is gone.
                if seq_of(oldest) > seq_of(first) + 1:
                    break
                if published >= MAX_MESSAGES:
                    raise CheckFailed(
                        f"{MAX_MESSAGES} messages published and the second is still retained: "
                        f"give the {NAMESPACE!r} namespace a history_size under {MAX_MESSAGES} "
                        f"(see docs/conformance.md)")
                count = min(BATCH, MAX_MESSAGES - published)
                await asyncio.gather(*(publish(http, channel, published + n)
                                       for n in range(count)))
                published += count
    before_oldest = f"{epoch_of(oldest)}-{seq_of(oldest) - 1}"
    expected = Item("gap", {"channel": channel, "from": first, "to": before_oldest,
                            "reason": "expired", "missed": seq_of(before_oldest) - seq_of(first)})
    for name in ctx.readers:
        with labelled(name):
            async with open_reader(ctx, name, [channel], first, last_event_id=True) as reader:
                gap, after = await read_items(ctx, reader, 2, f"resuming from {first}")
            require_equal(gap, expected, "the first item")
            require_equal((after.kind, after.id), ("message", oldest), "the item after the gap")


async def gap_after_epoch_change(ctx: Context) -> None:
    """A well-formed id of another epoch gets an ``epoch`` gap, then the whole retained log."""
    channel = ctx.channel("epoch")
    async with ctx.http() as http:
        ids = await publish_many(http, channel, ["a", "b", "c"])
    epoch = epoch_of(ids[0])
    foreign = "zzzzzzzz-1" if epoch != "zzzzzzzz" else "yyyyyyyy-1"
    expected = Item("gap", {"channel": channel, "from": foreign, "to": f"{epoch}-0",
                            "reason": "epoch", "missed": None})
    for name in ctx.readers:
        with labelled(name):
            async with open_reader(ctx, name, [channel], foreign, last_event_id=True) as reader:
                gap, *messages = await read_items(ctx, reader, 4, f"resuming from {foreign}")
            require_equal(gap, expected, "the first item")
            require_equal([(m.kind, m.id) for m in messages], [("message", i) for i in ids],
                          "the items after the gap")
