"""Delivery: every message, unchanged, exactly once and in order, from any position.

Each check runs on every reader (:attr:`Context.readers`): the techniques the
server serves through httpx and ``websockets``, then through the tidings client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from tidings.conformance._context import Context, labelled
from tidings.conformance._readers import (
    Item,
    Reader,
    end_of,
    open_reader,
    read_from,
    read_items,
    read_messages,
)
from tidings.testing import (
    SAMPLE_VALUES,
    CheckFailed,
    epoch_of,
    publish,
    publish_many,
    require,
    require_equal,
    seq_of,
)


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values (``True`` is not ``1``, ``1.0`` is not ``1``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def require_ids(messages: list[dict[str, Any]], ids: list[str], what: str) -> None:
    """The messages must carry exactly ``ids``, in that order; else say how they differ."""
    got = [str(m["id"]) for m in messages]
    if got == ids:
        return
    raise CheckFailed(f"{what}: {id_difference(got, ids)}")


def id_difference(got: list[str], expected: list[str]) -> str:
    """A short account of how two id lists differ: first difference, repeats, missing."""
    first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                 min(len(got), len(expected)))
    parts = [f"got {len(got)} ids, expected {len(expected)}"]
    if first < max(len(got), len(expected)):
        parts.append(f"first difference at #{first + 1}: got "
                     f"{got[first] if first < len(got) else 'nothing'}, expected "
                     f"{expected[first] if first < len(expected) else 'nothing'}")
    repeated = sorted({i for i in got if got.count(i) > 1}, key=got.index)
    missing = [i for i in expected if i not in set(got)]
    extra = [i for i in got if i not in set(expected)]
    for name, ids in (("repeated", repeated), ("missing", missing), ("unexpected", extra)):
        if ids:
            parts.append(f"{name}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}")
    return "; ".join(parts)


async def publish_and_receive(ctx: Context) -> None:
    """Published values arrive unchanged on every technique: nesting, unicode, numbers."""
    async with ctx.http() as http:
        for name in ctx.readers:
            with labelled(name):
                channel = ctx.channel(f"values-{name}")
                async with open_reader(ctx, name, [channel], await end_of(ctx, channel)) as reader:
                    ids = await publish_many(http, channel, SAMPLE_VALUES)
                    messages = await read_messages(ctx, reader, len(ids))
                require_ids(messages, ids, "live messages")
                for message, value in zip(messages, SAMPLE_VALUES, strict=True):
                    require(same_json(message["data"], value),
                            f"message {message['id']} carries {message['data']!r}, "
                            f"but {value!r} was published")
                    require_equal(message["channel"], channel, f"channel of {message['id']}")


PUBLISHERS = 4
PER_PUBLISHER = 25


async def exactly_once_in_order(ctx: Context) -> None:
    """All readers at once while publishers publish concurrently: every id once, in order."""
    channel = ctx.channel("order")
    total = PUBLISHERS * PER_PUBLISHER
    async with ctx.http() as http:
        start = await end_of(ctx, channel)
        base = seq_of(start)

        async def publisher(k: int) -> list[str]:
            return [await publish(http, channel, {"publisher": k, "n": n})
                    for n in range(PER_PUBLISHER)]

        async def read(name: str, reader: Reader) -> list[dict[str, Any]]:
            with labelled(name):
                return await read_messages(ctx, reader, total)

        async with contextlib.AsyncExitStack() as stack:
            readers: dict[str, Reader] = {}
            for name in ctx.readers:
                with labelled(name):
                    readers[name] = await stack.enter_async_context(
                        open_reader(ctx, name, [channel], start))
            reading = [asyncio.create_task(read(name, reader))
                       for name, reader in readers.items()]
            try:
                publications = await asyncio.gather(*(publisher(k) for k in range(PUBLISHERS)))
                results = await asyncio.gather(*reading, return_exceptions=True)
            finally:
                for task in reading:
                    task.cancel()
                await asyncio.gather(*reading, return_exceptions=True)
    by_id = {id_: {"publisher": k, "n": n} for k, ids in enumerate(publications)
             for n, id_ in enumerate(ids)}
    require_equal(len(by_id), total, "distinct ids in the publish answers")
    expected = sorted(by_id, key=seq_of)
    require(all(epoch_of(id_) == epoch_of(start) for id_ in expected),
            f"publish answers changed epoch from {start}: {expected[:3]}...")
    require_equal([seq_of(id_) for id_ in expected], list(range(base + 1, base + total + 1)),
                  "sequence numbers of the published ids (no holes, no repeats)")
    for name, result in zip(readers, results, strict=True):
        if isinstance(result, BaseException):
            raise result
        with labelled(name):
            require_ids(result, expected, "received")
            for message in result:
                require(same_json(message["data"], by_id[message["id"]]),
                        f"{message['id']} carries {message['data']!r}, published "
                        f"{by_id[message['id']]!r}")


async def resume_from_id(ctx: Context) -> None:
    """``since=ID`` resumes right after it, ``since=0`` at the oldest, no ``since`` at the end."""
    async with ctx.http() as http:
        for name in ctx.readers:
            with labelled(name):
                channel = ctx.channel(f"resume-{name}")
                ids = await publish_many(http, channel, list(range(5)))
                with labelled(f"since={ids[1]}"):
                    async with open_reader(ctx, name, [channel], ids[1]) as reader:
                        messages = await read_messages(ctx, reader, 3)
                        require_ids(messages, ids[2:], "after the resume")
                        ids.append(await publish(http, channel, "next"))
                        require_ids(await read_messages(ctx, reader, 1), ids[5:], "then live")
                with labelled("since=0"):
                    async with open_reader(ctx, name, [channel], "0") as reader:
                        require_ids(await read_messages(ctx, reader, 6), ids, "from the oldest")
                with labelled("without since"):
                    async with open_reader(ctx, name, [channel], None) as reader:
                        ids.append(await publish(http, channel, "new"))
                        require_ids(await read_messages(ctx, reader, 1), ids[6:],
                                    "from the end of the log")


SWITCH_LEGS = ("websocket", "sse", "longpoll", "poll", "websocket")


async def switch_technique(ctx: Context) -> None:
    """Read part on one technique, resume on the next with its last id; every id once, in order.

    Legs: WebSocket → SSE (``Last-Event-ID``) → long poll → poll → WebSocket,
    with messages published while connected (one of them left unread) and
    while disconnected. Then the same legs through the tidings client.
    """
    served = [leg for leg in SWITCH_LEGS if ctx.serves(leg)]  # the legs this server serves
    async with ctx.http() as http:
        for legs in (tuple(served), tuple(f"client-{leg}" for leg in served)):
            channel = ctx.channel("switch-" + ("client" if legs[0].startswith("client-")
                                               else "raw"))
            published = await publish_many(http, channel, [{"n": n} for n in range(3)])
            seen: list[dict[str, Any]] = []
            cursor = "0"
            for number, name in enumerate(legs, 1):
                with labelled(f"leg {number} ({name}, from {cursor})"):
                    async with open_reader(ctx, name, [channel], cursor,
                                           last_event_id=number > 1) as reader:
                        backlog = len(published) - len(seen)
                        seen += await read_messages(ctx, reader, backlog, "reading the backlog")
                        published += await publish_many(
                            http, channel, [{"n": len(published) + n} for n in range(3)])
                        # Read two of the three: the third may be on its way, unread.
                        seen += await read_messages(ctx, reader, 2, "reading live messages")
                        require_ids(seen, published[:len(seen)], "so far")
                        require(reader.cursor == seen[-1]["id"],
                                f"the cursor is {reader.cursor}, not the last id read")
                        cursor = seen[-1]["id"]
                # Published while nobody is connected.
                published += await publish_many(
                    http, channel, [{"n": len(published) + n} for n in range(2)])
            rest = await read_from(ctx, channel, cursor, len(published) - len(seen))
            seen += [item.body for item in rest]
            with labelled(" → ".join(legs)):
                require_ids(seen, published, "all legs together")


async def multi_channel(ctx: Context) -> None:
    """``/subscribe?channel=a&channel=b`` on every technique; SSE resumes with its multi id."""
    async with ctx.http() as http:
        for name in ctx.readers:
            with labelled(name):
                a, b = ctx.channel(f"multi-a-{name}"), ctx.channel(f"multi-b-{name}")
                ids: dict[str, list[str]] = {a: [], b: []}
                for n in range(2):
                    for channel in (a, b):
                        ids[channel].append(await publish(http, channel, {"n": n}))
                async with open_reader(ctx, name, [a, b], "0") as reader:
                    items = await read_items(ctx, reader, 2, "reading both channels from 0",
                                             messages_only=True)
                    cursor_after_two = reader.cursor
                    items += await read_items(ctx, reader, 2, "reading both channels from 0",
                                              messages_only=True)
                    for channel in (a, b):
                        ids[channel].append(await publish(http, channel, "live"))
                    items += await read_items(ctx, reader, 2, "reading live messages",
                                              messages_only=True)
                    if name in ("poll", "longpoll"):
                        require_equal(_parse_cursor(reader.cursor or ""),
                                      {a: ids[a][-1], b: ids[b][-1]}, "the poll's next cursor")
                for channel in (a, b):
                    require_ids([i.body for i in items if i.body["channel"] == channel],
                                ids[channel], f"messages of {channel}, in order")
                if name == "sse":
                    await _sse_resume(ctx, [a, b], cursor_after_two or "", items[:2], items[2:])


def _parse_cursor(cursor: str) -> dict[str, str]:
    parts = (part.partition("=") for part in cursor.split(",") if part)
    return {channel: id_ for channel, _, id_ in parts}


async def _sse_resume(ctx: Context, channels: list[str], cursor: str, read: list[Item],
                      rest: list[Item]) -> None:
    """The SSE id names each channel's last id; ``Last-Event-ID`` with it gives exactly the rest."""
    last = {item.body["channel"]: item.id for item in read}
    named = _parse_cursor(cursor)
    require({channel: named.get(channel) for channel in last} == last,
            f"the SSE id {cursor!r} after {[i.id for i in read]} does not name each "
            "channel's last id")
    with labelled(f"SSE resume with Last-Event-ID {cursor}"):
        async with open_reader(ctx, "sse", channels, cursor, last_event_id=True) as reader:
            items = await read_items(ctx, reader, len(rest), "reading after the resume",
                                     messages_only=True)
        for channel in channels:
            require_ids([i.body for i in items if i.body["channel"] == channel],
                        [i.id for i in rest if i.body["channel"] == channel],
                        f"messages of {channel}")
