"""The live status page: ``/admin`` (the page) and ``/admin/status`` (what it shows).

``/admin`` is a static page (static/admin.html) that holds no data; it asks
for the API key and polls ``/admin/status`` with it, which answers when
access control is off or the key is right. :class:`StatusHistory` samples the
server's cumulative counters every :data:`SAMPLE_SECONDS` and keeps the last
:data:`SAMPLES`, from which the page draws publish and delivery rates over the
last minutes. Busiest channels are those with the most live readers.

Under ``tidings serve --workers N`` the page describes the node: the worker
that answers asks every other one for its part (:func:`worker_part`, over the
socket server/workermetrics.py keeps for the metrics) and adds them up
(:func:`merge_parts`, no I/O). A worker that does not answer within
``workermetrics.PEER_TIMEOUT`` is counted in ``workers.unreachable`` and
left out; the page never fails for the others.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from tidings.errors import Forbidden, MethodNotAllowed
from tidings.server.metrics import TECHNIQUES, delivered_totals

if TYPE_CHECKING:
    from tidings.server.app import Server
    from tidings.server.connection import HttpConnection
    from tidings.server.request import Request

logger = logging.getLogger("tidings.server")

STATUS_PATH = "/admin/status"
#: Seconds between two samples of the counters.
SAMPLE_SECONDS = 5.0
#: Samples kept: six minutes at one every five seconds.
SAMPLES = 72
#: Channels listed as the busiest.
BUSIEST = 10
#: Busiest channels each worker tells the others: the node's top :data:`BUSIEST` are
#: exact while no worker has more channels with readers than this.
SHARED_BUSIEST = 1000
#: Statuses from the least to the most worth an operator's look: the node shows the worst.
STATUS_ORDER = ("ok", "starting", "draining", "degraded")


class StatusHistory:
    """The last :data:`SAMPLES` samples of the counters the page charts."""

    def __init__(self, server: Server, interval: float = SAMPLE_SECONDS) -> None:
        self._server = server
        #: Seconds between samples (read before each sleep).
        self.interval = interval
        self.samples: deque[dict[str, Any]] = deque(maxlen=SAMPLES)

    def sample(self) -> None:
        server = self._server
        self.samples.append({"time": time.time(), "published": server.stats["published"],
                             "delivered": delivered_totals(server)})

    async def run(self) -> None:
        """Sample now, then every :attr:`interval` seconds, until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def rates(self) -> dict[str, Any]:
        """Per-second rates between consecutive samples: published, delivered by technique."""
        samples = list(self.samples)
        times, published = [], []
        delivered: dict[str, list[float]] = {technique: [] for technique in TECHNIQUES}
        for before, after in itertools.pairwise(samples):
            seconds = max(after["time"] - before["time"], 1e-6)
            times.append(round(after["time"], 3))
            published.append(round((after["published"] - before["published"]) / seconds, 2))
            for technique in TECHNIQUES:
                change = after["delivered"][technique] - before["delivered"][technique]
                delivered[technique].append(round(change / seconds, 2))
        return {"interval": self.interval, "times": times, "published": published,
                "delivered": delivered}


def status(server: Server, busiest: int = BUSIEST) -> dict[str, Any]:
    """What ``/admin/status`` answers for this process alone (its ``busiest`` channels)."""
    streams = server.registry.streams()
    counts = server.registry.statistics()
    connections = {"http": counts["http"], "sse": 0, "websocket": 0}
    for stream in streams:
        connections[stream.technique] += 1
    health = server.health()
    return {
        "time": int(time.time() * 1000),
        "status": health["status"],
        "connections": connections,
        "long_polls": counts["long_polls"],
        "rates": server.status_history.rates(),
        "busiest": [{"channel": channel, "readers": readers}
                    for channel, readers in server.broker.hub.busiest(busiest)],
        "broker": health["broker"],
        "bridges": health.get("bridges", []),
        "published": server.stats["published"],
        "delivered": delivered_totals(server),
    }


def worker_part(server: Server) -> dict[str, Any]:
    """What this worker tells the others: its status, with :data:`SHARED_BUSIEST` channels."""
    return status(server, SHARED_BUSIEST)


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=lambda s: STATUS_ORDER.index(s) if s in STATUS_ORDER
               else len(STATUS_ORDER))


def _sum_right_aligned(series: list[list[float]]) -> list[float]:
    """Sum series that end at about the same time (the latest samples line up)."""
    length = max((len(values) for values in series), default=0)
    total = [0.0] * length
    for values in series:
        for offset, value in enumerate(values, start=length - len(values)):
            total[offset] += value
    return [round(value, 2) for value in total]


def _merge_rates(rates: list[dict[str, Any]]) -> dict[str, Any]:
    """Each worker samples on its own clock: the latest samples are added up together,
    with the times of the first (the answering worker); a younger worker adds nothing
    to the samples before it started."""
    first = rates[0]
    length = max(len(r["times"]) for r in rates)
    times = list(first["times"])
    if len(times) < length:  # the answering worker is the youngest: borrow older times
        longest = max(rates, key=lambda r: len(r["times"]))
        times = longest["times"][:length - len(times)] + times
    techniques = list(dict.fromkeys(t for r in rates for t in r["delivered"]))
    return {"interval": first["interval"], "times": times,
            "published": _sum_right_aligned([r["published"] for r in rates]),
            "delivered": {t: _sum_right_aligned([r["delivered"].get(t, []) for r in rates])
                          for t in techniques}}


def _merge_bridges(lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Bridge ``i`` as the worker that runs it sees it (the first worker's when none
    does), with what every worker published through it added up."""
    merged = []
    for number in range(max((len(bridges) for bridges in lists), default=0)):
        entries = [bridges[number] for bridges in lists if number < len(bridges)]
        running = [entry for entry in entries if entry.get("state") == "running"]
        entry = dict((running or entries)[0])
        if all(isinstance(e.get("published"), int | float) for e in entries):
            entry["published"] = sum(e["published"] for e in entries)
        merged.append(entry)
    return merged


def merge_parts(parts: list[dict[str, Any]], unreachable: int = 0) -> dict[str, Any]:
    """The node's status from its workers' parts (the answering worker's first).

    Counts and rates are summed; busiest channels summed per channel, then the top
    :data:`BUSIEST`; the status and the broker are the worst any worker sees (a
    broker one worker cannot reach is the node's problem); ``workers`` says how many
    parts there are and how many workers did not answer.
    """
    first = parts[0]
    readers: dict[str, int] = {}
    for part in parts:
        for entry in part["busiest"]:
            readers[entry["channel"]] = readers.get(entry["channel"], 0) + entry["readers"]
    busiest = sorted(readers.items(), key=lambda pair: (-pair[1], pair[0]))[:BUSIEST]
    brokers = [part["broker"] for part in parts]
    broker = next((b for b in brokers if b.get("status", "ok") != "ok"), brokers[0])

    def summed(key: str) -> dict[str, Any]:
        keys = dict.fromkeys(k for part in parts for k in part[key])
        return {k: sum(part[key].get(k, 0) for part in parts) for k in keys}

    return {
        "time": first["time"],
        "status": _worst([part["status"] for part in parts]),
        "connections": summed("connections"),
        "long_polls": sum(part["long_polls"] for part in parts),
        "rates": _merge_rates([part["rates"] for part in parts]),
        "busiest": [{"channel": channel, "readers": count} for channel, count in busiest],
        "broker": broker,
        "bridges": _merge_bridges([part["bridges"] for part in parts]),
        "published": sum(part["published"] for part in parts),
        "delivered": summed("delivered"),
        "workers": {"answered": len(parts), "unreachable": unreachable},
    }


async def node_status(server: Server) -> dict[str, Any]:
    """What ``/admin/status`` answers under ``--workers``: every worker's status, merged."""
    share = server.metrics_share
    assert share is not None
    answers = await share.ask_others("status")
    parts = [worker_part(server)] + [answer for answer in answers if _is_part(answer)]
    return merge_parts(parts, unreachable=len(answers) + 1 - len(parts))


#: The keys of a worker's part and their JSON types (another worker's answer is checked).
PART_KEYS = {"status": str, "connections": dict, "long_polls": int, "rates": dict,
             "busiest": list, "broker": dict, "bridges": list, "published": int,
             "delivered": dict}


def _is_part(answer: object) -> bool:
    return isinstance(answer, dict) and all(isinstance(answer.get(key), kind)
                                            for key, kind in PART_KEYS.items())


def answer(server: Server, conn: HttpConnection, request: Request) -> None:
    """``GET /admin/status``: the API key when access control is on."""
    if request.method != "GET":
        raise MethodNotAllowed(f"{request.method} is not allowed on {STATUS_PATH}",
                               allow=("GET",))
    auth = server.auth
    if auth.enabled and not auth.identify(request).api_key:
        raise Forbidden("the status needs the API key (Authorization: Bearer)",
                        code="api_key_required")
    if server.metrics_share is None:
        _answer_status(conn, request, status(server))
        return
    conn.park()  # the other workers' parts come first
    server.spawn(_answer_workers(server, conn, request))


async def _answer_workers(server: Server, conn: HttpConnection, request: Request) -> None:
    try:
        value = await node_status(server)
    except Exception:  # a bug (a malformed part): this request fails, nothing else
        logger.exception("gathering the workers' status failed")
        conn.abort()
        return
    if not conn.closing and conn.transport is not None:
        _answer_status(conn, request, value)


def _answer_status(conn: HttpConnection, request: Request, value: dict[str, Any]) -> None:
    conn.answer_json(200, value, (("Cache-Control", "no-store"),), request.keep_alive)
