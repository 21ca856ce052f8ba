"""Across nodes: a deployment of several nodes is one server to a client that moves.

The nodes of a deployment share their channels through a broker (Redis), and
a load balancer without sticky sessions may send each request to any of
them. This check runs only when the context names other nodes
(:attr:`Context.nodes`, ``--node``): it publishes on every node in turn and
reads with readers that change node at every step, with httpx and
``websockets``, then with the tidings client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tidings.conformance._context import Context, NotApplicable, labelled
from tidings.conformance._readers import (
    POLL_INTERVAL,
    ClientReader,
    end_of,
    open_reader,
    parse_item,
    read_messages,
)
from tidings.conformance.checks_delivery import id_difference, require_ids
from tidings.testing import CheckFailed, epoch_of, poll, publish, require, seq_of

#: Live messages per node for the readers that move: each is published once
#: every reader has read the one before.
LIVE_PER_NODE = 4
#: Messages published while the tidings client is away, before each of its legs.
AWAY = 2


async def across_nodes(ctx: Context) -> None:
    """A client may land on any node at any request and still read every message once, in order.

    Publishes on every node in turn. A reader per technique changes node at
    every step — each poll and long poll on the next node, each SSE
    reconnection with ``Last-Event-ID`` and each WebSocket with ``?since=``
    on the next node — and one more reader changes technique too: each must
    read exactly the published ids, in order. Then an id that a publish on
    one node just returned is read on the next node (it must not be refused
    as ahead of the log) and gives the following message. Last, the tidings
    client moves from node to node and technique to technique with its
    ``Subscription.cursor``.
    """
    if not ctx.nodes:
        raise NotApplicable("give the URL of another node with --node to check a deployment "
                            "of several nodes")
    nodes = await _discover_nodes(ctx)
    async with contextlib.AsyncExitStack() as stack:
        https = {node.url: await stack.enter_async_context(node.http()) for node in nodes}
        hoppers = await _hoppers(nodes, https)
        await _hopping_readers(nodes, hoppers)
        # On a channel every node has just read: their copies of it (if any) are in use.
        await _cursor_just_published(nodes, hoppers[0].log)
        await _client_moves(nodes, await start_log(nodes, https, ctx.channel("nodes-client")))


async def _discover_nodes(ctx: Context) -> list[Context]:
    """A context per node, the server's first; all nodes must serve the same techniques."""
    first = await ctx.discover()
    nodes = [first]
    for url in first.nodes:
        node = await first.at(url).discover()
        require(node.techniques == first.techniques,
                f"{url} serves {', '.join(node.techniques)} but {first.url} serves "
                f"{', '.join(first.techniques)}: a client that lands on another node "
                "would be refused")
        nodes.append(node)
    return nodes


# Publishing ------------------------------------------------------------------------


class Log:
    """Publishes on one channel, on each node in turn; checks that the answers make one log.

    ``start`` is where the channel ended before; ``ids`` are the published
    ids in order, ``where`` the node that published each and ``acked`` when
    its answer came (``time.monotonic()``).
    """

    def __init__(self, nodes: Sequence[Context], https: dict[str, httpx.AsyncClient],
                 channel: str, start: str) -> None:
        self.nodes = nodes
        self.https = https
        self.channel = channel
        self.start = start
        self.ids: list[str] = []
        self.where: list[str] = []
        self.acked: list[float] = []
        self._turn = 0

    def next_node(self) -> Context:
        """The node to publish on next, in turn.

        In turn means every node once per round, each round starting one node
        further: readers that move one node per message then find the next
        message published on their own node in some rounds and on another node
        in the others.
        """
        count = len(self.nodes)
        node = self.nodes[(self._turn + self._turn // count) % count]
        self._turn += 1
        return node

    async def publish(self, node: Context | None = None) -> str:
        """Publish one message on ``node`` (by default :meth:`next_node`); return its id."""
        node = node or self.next_node()
        with labelled(f"publishing on {node.url}"):
            id_ = await publish(self.https[node.url], self.channel, {"n": len(self.ids)})
        last = self.ids[-1] if self.ids else self.start
        if epoch_of(id_) != epoch_of(last) or seq_of(id_) != seq_of(last) + 1:
            before = (f"{self.where[-1]} answered {last}" if self.ids
                      else f"the log ended at {last} on {self.nodes[0].url}")
            raise CheckFailed(f"publishing on {node.url} answered {id_} after {before}: the "
                              "nodes do not add to one log" + await _broker_hint(self.nodes))
        self.ids.append(id_)
        self.where.append(node.url)
        self.acked.append(time.monotonic())
        return id_


async def start_log(nodes: Sequence[Context], https: dict[str, httpx.AsyncClient],
                    channel: str) -> Log:
    """A :class:`Log` of ``channel`` that starts at its end, read on the first node."""
    with labelled(f"reading the end of {channel} on {nodes[0].url}"):
        return Log(nodes, https, channel, await end_of(nodes[0], channel))


async def _broker_hint(nodes: Sequence[Context]) -> str:
    """Which nodes' ``/healthz`` say they keep channels in memory, if any (for a failure)."""
    alone: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(nodes[0].timeout):
            for node in nodes:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    async with node.http() as http:
                        health = (await http.get("/healthz")).json()
                    broker = health.get("broker") if isinstance(health, dict) else None
                    if isinstance(broker, dict) and broker.get("kind") == "memory":
                        alone.append(node.url)
    if not alone:
        return " (do they share one broker?)"
    return (f" ({', '.join(alone)} keep{'s' if len(alone) == 1 else ''} channels in memory: "
            "nodes share channels only through one broker, such as Redis)")


# Readers that change node at every step -----------------------------------------------

#: Where a reader goes at each step: ``legs(step)`` is a technique and a node.
Legs = Callable[[int], tuple[str, Context]]


@dataclass
class Hopper:
    """A reader of ``log`` that goes to the technique and node ``legs(step)`` at each step.

    A step is one request for polls and long polls, and one connection that
    reads one message for SSE and WebSocket. Each reader has a channel of its
    own: a reader's requests cannot make a node catch up for another.
    """

    name: str
    legs: Legs
    log: Log
    received: list[dict[str, Any]] = field(default_factory=list)
    #: How each received message was read (technique, node, position).
    read_by: list[str] = field(default_factory=list)
    #: What the reader is doing now, for a failure.
    doing: str = "starting"


async def _hoppers(nodes: Sequence[Context], https: dict[str, httpx.AsyncClient]) -> list[Hopper]:
    """A reader per technique that changes node at each step, and one that changes both."""
    techniques = nodes[0].techniques

    def log(name: str) -> Awaitable[Log]:
        return start_log(nodes, https, nodes[0].channel(f"nodes-{name}"))

    hoppers = [Hopper(f"{technique} moving between nodes", _one_technique(technique, nodes),
                      await log(technique)) for technique in techniques]
    if len(techniques) > 1:
        hoppers.append(Hopper("a reader changing node and technique at every step",
                              _every_technique(techniques, nodes), await log("mixed")))
    return hoppers


def _one_technique(technique: str, nodes: Sequence[Context]) -> Legs:
    # Step 0 on the second node: the first cursor, read on the first node, moves at once.
    return lambda step: (technique, nodes[(step + 1) % len(nodes)])


def _every_technique(techniques: Sequence[str], nodes: Sequence[Context]) -> Legs:
    # The technique moves on one place per step, and one more after each round
    # of the nodes: each technique then meets more than one node, even when
    # the number of techniques is a multiple of the number of nodes.
    return lambda step: (techniques[(step + step // len(nodes)) % len(techniques)],
                         nodes[(step + 1) % len(nodes)])


def _how(technique: str, node: Context, cursor: str) -> str:
    position = {"sse": f"Last-Event-ID: {cursor}",
                "websocket": f"?since={cursor}"}.get(technique, f"since={cursor}")
    return f"{technique} on {node.url} ({position})"


async def _hopping_readers(nodes: Sequence[Context], hoppers: Sequence[Hopper]) -> None:
    """Readers that change node at every step read what is published on every node in turn.

    One message per node is published before the readers start (they read
    it as backlog, hop by hop); then each live message is published once
    every reader has read all the ones before, so it reaches readers parked
    on, or reconnecting to, other nodes.
    """
    backlog = len(nodes)
    total = backlog + LIVE_PER_NODE * len(nodes)

    async def publish_next() -> None:
        # The next message on every reader's channel, all on the same node.
        node = hoppers[0].log.next_node()
        async with asyncio.TaskGroup() as publishing:
            for hopper in hoppers:
                publishing.create_task(hopper.log.publish(node))

    progress = asyncio.Condition()
    try:
        for _ in range(backlog):
            await publish_next()
        async with asyncio.TaskGroup() as tasks:
            for hopper in hoppers:
                tasks.create_task(_hop(hopper, total, progress))
            for count in range(backlog, total):
                await _wait_for_readers(nodes[0], hoppers, count, progress)
                await publish_next()
            await _wait_for_readers(nodes[0], hoppers, total, progress)
    except BaseExceptionGroup as group:
        raise _first_failure(group) from None
    for hopper in hoppers:
        got, expected = [str(m["id"]) for m in hopper.received], hopper.log.ids
        if got != expected:
            first = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False))
                          if a != b), min(len(got), len(expected)))
            where = (f"; #{first + 1} was read with {hopper.read_by[first]}"
                     if first < len(got) else "")
            raise CheckFailed(f"{hopper.name}: {id_difference(got, expected)}{where}")


async def _hop(hopper: Hopper, total: int, progress: asyncio.Condition) -> None:
    """Read ``total`` messages of the hopper's log from its start, a step on each leg in turn."""
    cursor = hopper.log.start
    step = 0
    while len(hopper.received) < total:
        technique, node = hopper.legs(step)
        step += 1
        how = hopper.doing = _how(technique, node, cursor)
        with labelled(f"{hopper.name}, step {step}: {how}"):
            if technique in ("poll", "longpoll"):
                messages, cursor = await _poll_once(node, hopper.log, technique, cursor)
            else:
                messages = [await _read_one(node, hopper.log.channel, technique, cursor)]
                cursor = messages[-1]["id"]
        if messages:
            async with progress:
                hopper.received += messages
                hopper.read_by += [how] * len(messages)
                progress.notify_all()
        elif technique == "poll":
            await asyncio.sleep(POLL_INTERVAL)


async def _poll_once(node: Context, log: Log, technique: str,
                     since: str) -> tuple[list[dict[str, Any]], str]:
    """One poll or long poll on ``node``: its messages (never a gap) and its ``next``.

    A long poll that answers nothing although a message after ``since`` was
    published long enough before its answer (half its wait) fails: the node
    never heard of that message.
    """
    params: dict[str, Any] = {"since": since}
    wait = _longpoll_wait(node)
    if technique == "longpoll":
        params["wait"] = wait
    async with node.step(f"waiting for the answer to a {technique}"):
        answer = await poll(log.https[node.url], f"/channels/{log.channel}", **params)
    answered = time.monotonic()
    require(not answer.get("gaps"), f"expected only messages, got gaps {answer.get('gaps')!r}")
    messages = [parse_item("message", m).body for m in answer["messages"]]
    if technique == "longpoll" and not messages and since in (log.start, *log.ids):
        after = log.ids.index(since) + 1 if since in log.ids else 0
        missed = [i for i in range(after, len(log.ids)) if log.acked[i] < answered - wait / 2]
        require(not missed, "the long poll answered no message, though "
                + ", ".join(f"{log.ids[i]} had been published on {log.where[i]} "
                            f"{answered - log.acked[i]:.1f} s before" for i in missed[:3]))
    return messages, str(answer["next"])


def _longpoll_wait(node: Context) -> int:
    return max(1, int(node.timeout / 2))


async def _read_one(node: Context, channel: str, technique: str, since: str) -> dict[str, Any]:
    """Connect to ``node`` from ``since`` (SSE: ``Last-Event-ID``) and read one message."""
    # Twice the step: when a node does not deliver, the publisher's wait, which
    # says which readers are behind, fails first.
    async with node.step(f"waiting for a message over {technique}", within=2 * node.timeout), \
            open_reader(node, technique, [channel], since, last_event_id=True) as reader:
        item = await reader.next()
    require(item.kind == "message", f"expected only messages, got a gap {item.body!r}")
    return item.body


async def _wait_for_readers(ctx: Context, hoppers: Sequence[Hopper], count: int,
                            progress: asyncio.Condition) -> None:
    """Wait until every reader has read ``count`` messages; else say who is behind and where."""
    try:
        async with asyncio.timeout(ctx.timeout), progress:
            await progress.wait_for(lambda: all(len(h.received) >= count for h in hoppers))
    except TimeoutError:
        behind = []
        for hopper in hoppers:
            got, expected = [str(m["id"]) for m in hopper.received], hopper.log.ids[:count]
            if len(got) < count:
                wrong = got != expected[:len(got)]
                behind.append(f"{hopper.name} has read {len(got)}, now {hopper.doing}"
                              + (f" ({id_difference(got, expected)})" if wrong else ""))
        raise CheckFailed(f"nothing within {ctx.timeout:g} s while waiting for every reader to "
                          f"read message #{count} (published on {hoppers[0].log.where[count - 1]}"
                          f"): {'; '.join(behind)}") from None


def _first_failure(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first failure of a task group, preferring a :class:`CheckFailed` (which says most)."""
    leaves: list[BaseException] = []

    def flatten(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                flatten(inner)
        else:
            leaves.append(error)

    flatten(group)
    return next((e for e in leaves if isinstance(e, CheckFailed)), leaves[0])


# A cursor from another node's future ---------------------------------------------------


async def _cursor_just_published(nodes: Sequence[Context], log: Log) -> None:
    """An id that a publish on one node just returned is a valid cursor on the next node.

    The next node may not have that message yet (it travels through the
    broker): it must catch up rather than refuse the cursor as ahead of the
    log, and then give the message published after it.
    """
    for index, technique in enumerate(nodes[0].techniques):
        source, target = nodes[index % len(nodes)], nodes[(index + 1) % len(nodes)]
        just = await log.publish(source)
        with labelled(f"{_how(technique, target, just)}, right after {source.url} "
                      f"answered {just}"):
            if technique in ("poll", "longpoll"):
                messages = await _poll_after(target, log, technique, just, source)
            else:
                async with open_reader(target, technique, [log.channel], just,
                                       last_event_id=True) as reader:
                    await log.publish(source)
                    messages = await read_messages(target, reader, 1,
                                                   "waiting for the message published next")
            require_ids(messages, log.ids[-1:], "the message published next")


async def _poll_after(node: Context, log: Log, technique: str, since: str,
                      publisher: Context) -> list[dict[str, Any]]:
    """Poll ``since`` at once (a long poll parks), publish the next message, return what came."""
    http = log.https[node.url]
    path = f"/channels/{log.channel}"
    if technique == "longpoll":
        parked = asyncio.create_task(poll(http, path, since=since, wait=_longpoll_wait(node)))
        try:
            await log.publish(publisher)
            async with node.step("waiting for the long poll's answer"):
                answer = await parked
        finally:
            parked.cancel()
            await asyncio.gather(parked, return_exceptions=True)
    else:
        async with node.step("waiting for the poll's answer"):
            answer = await poll(http, path, since=since)
        require(not answer["messages"] and not answer.get("gaps") and answer["next"] == since,
                f"expected no message and next {since}, got {answer!r}")
        await log.publish(publisher)
        async with node.step("polling for the message published next"):
            while True:
                answer = await poll(http, path, since=since)
                if answer["messages"] or answer.get("gaps"):
                    break
                await asyncio.sleep(POLL_INTERVAL)
    require(not answer.get("gaps"), f"expected only messages, got {answer!r}")
    return [parse_item("message", m).body for m in answer["messages"]]


# The tidings client ---------------------------------------------------------------------


async def _client_moves(nodes: Sequence[Context], log: Log) -> None:
    """The tidings client moves to the next node and technique with its ``Subscription.cursor``.

    On each leg, messages published (on every node) while it was away come
    first, then one published on another node while it is connected.
    """
    techniques = nodes[0].techniques
    legs = max(len(techniques), len(nodes), 2)
    seen: list[dict[str, Any]] = []
    cursor = log.start
    for leg in range(legs):
        technique = techniques[leg % len(techniques)]
        node, other = nodes[(leg + 1) % len(nodes)], nodes[leg % len(nodes)]
        for _ in range(AWAY):
            await log.publish()
        with labelled(f"the tidings client over {technique} on {node.url} (since={cursor})"):
            async with open_reader(node, f"client-{technique}", [log.channel],
                                   cursor) as reader:
                seen += await read_messages(node, reader, len(log.ids) - len(seen),
                                            "reading what was published while it was away")
                await log.publish(other)
                seen += await read_messages(node, reader, 1,
                                            f"reading a message published on {other.url}")
                require_ids(seen, log.ids[:len(seen)], "every leg so far")
                if not isinstance(reader, ClientReader):
                    raise CheckFailed(f"not the tidings client: {reader!r}")
                saved = reader.subscription.cursor
                require(saved == seen[-1]["id"],
                        f"Subscription.cursor is {saved!r}, not the last id read "
                        f"{seen[-1]['id']}")
                cursor = str(saved)
    require_ids(seen, log.ids, "every leg together")
